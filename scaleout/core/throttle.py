"""Login throttling shared by every replica through Redis: per account and per client address, counted
before the password is checked, in one atomic step."""

from __future__ import annotations

from dataclasses import dataclass

from scaleout.core.keyspace import throttle_keys
from scaleout.core.store import Store


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after: int = 0


# One atomic step: over a limit, the wait; else the attempt is counted before the password is checked, so
# attempts that arrive at the same moment cannot all slip under the limit.
_THROTTLE_TAKE = """
local wait = 0
for i, key in ipairs(KEYS) do
  local count = tonumber(redis.call('GET', key) or '0')
  if count >= tonumber(ARGV[i]) then
    local ttl = redis.call('TTL', key)
    if ttl < 1 then ttl = tonumber(ARGV[#ARGV]) end
    if ttl > wait then wait = ttl end
  end
end
if wait > 0 then return wait end
for _, key in ipairs(KEYS) do
  redis.call('INCR', key)
  if redis.call('TTL', key) < 0 then redis.call('EXPIRE', key, ARGV[#ARGV]) end
end
return 0
"""

_THROTTLE_REFUND = """
for _, key in ipairs(KEYS) do
  if tonumber(redis.call('GET', key) or '0') > 0 then redis.call('DECR', key) end
end
return 1
"""


class Throttle:
    """Login attempts counted per account and per client address, shared by every process through Redis.

    `take` counts an attempt before it is verified; `refund` gives it back when the password was right.
    """

    def __init__(self, store: Store, window: int, account_max: int, ip_max: int) -> None:
        self.store = store
        self.window = window
        self.account_max = account_max
        self.ip_max = ip_max
        self._take = store.script(_THROTTLE_TAKE)
        self._refund = store.script(_THROTTLE_REFUND)

    async def take(self, username: str, client_ip: str) -> Verdict:
        keys = throttle_keys(username, client_ip)
        args = [self.account_max, self.ip_max, self.window]
        (wait,) = await self.store.run(keys[0], lambda pipe: self._take(keys=keys, args=args, client=pipe))
        return Verdict(allowed=int(wait) == 0, retry_after=int(wait))

    async def refund(self, username: str, client_ip: str) -> None:
        keys = throttle_keys(username, client_ip)
        await self.store.run(keys[0], lambda pipe: self._refund(keys=keys, client=pipe))
