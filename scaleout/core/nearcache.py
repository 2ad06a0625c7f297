"""A near-cache: what this replica read from Redis, kept in its memory until Redis says it changed.

Redis's server-assisted client-side caching (`CLIENT TRACKING`, default mode) remembers which keys each
tracking connection read, and when one of them changes (written, deleted, expired, evicted) it pushes an
`invalidate` message to that connection. Here the tracking connection is the replica's lean read connection
itself (RESP3, `scaleout.core.pipelined`), so the invalidations arrive in the same ordered stream as the
replies: a reply read before a write is always followed, in the stream, by that write's invalidation.

The rules that keep a cached answer honest:
- An answer is served only while the stream is known to be alive: the latest reply received answered a
  command sent less than `staleness` ago (a heartbeat PING keeps that true when the replica is idle). A
  silent connection (a blackhole, a paused server) stops the cache within `staleness`, before any timeout.
- Every connection loss, reconnection, `READONLY` (a failover) or `invalidate` of everything empties it
  (`flush`), and a read that was in flight across a flush or across an invalidation of one of its keys is
  not cached: it may predate the change.
- It is bounded (least recently used out first); Redis bounds its side (`tracking-table-max-keys`) by
  invalidating the keys it stops tracking.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

MISS = object()


@dataclass(slots=True)
class NearCacheStats:
    hits: int = 0
    misses: int = 0
    invalidations: int = 0  # keys Redis said changed
    flushes: int = 0  # times the whole cache was dropped (connection lost, failover, flush-all)


class NearCache:
    """Entries are keyed by what the caller asked (a session's store key; a (jti, family) denylist
    question); each depends on the Redis keys its answer was read from."""

    def __init__(self, max_entries: int, staleness: float) -> None:
        self.max_entries = max_entries
        self.staleness = staleness
        self.stats = NearCacheStats()
        self._entries: OrderedDict[Hashable, tuple[object, tuple[bytes, ...]]] = OrderedDict()
        self._by_key: dict[bytes, set[Hashable]] = {}
        # Reads in flight per Redis key, and the keys invalidated while one was: their answers are not kept.
        self._reading: dict[bytes, int] = {}
        self._changed: set[bytes] = set()
        self._epoch = 0
        self._tracking = False  # the read connection has tracking switched on now
        self._confirmed = -1e9  # when the latest answered command was sent (perf_counter)

    # --- what the read connection tells it ---------------------------------------------------------

    def tracking_started(self) -> None:
        """A new connection has tracking on. What the last one held went with it (`flush`, when it was lost);
        a read begun since is sent on this one, after tracking was switched on, and may be kept."""
        self._tracking = True

    def confirm(self, sent_at: float) -> None:
        """A reply arrived to a command sent at `sent_at`: every invalidation Redis sent before it has
        arrived too (one ordered stream)."""
        if sent_at > self._confirmed:
            self._confirmed = sent_at

    def invalidate(self, keys: Iterable[bytes] | None) -> None:
        """Redis's `invalidate` push: these keys changed (None: all of them, e.g. FLUSHALL)."""
        if keys is None:
            self.flush()
            self._tracking = True  # the connection still tracks; only what it held is gone
            return
        for key in keys:
            self.stats.invalidations += 1
            if key in self._reading:
                self._changed.add(key)
            for entry in self._by_key.pop(key, ()):
                self._entries.pop(entry, None)

    def flush(self) -> None:
        """Forget everything, and any read in flight (the connection it came on is gone or suspect)."""
        self._tracking = False
        self._epoch += 1
        self._confirmed = -1e9
        if self._entries:
            self.stats.flushes += 1
        self._entries.clear()
        self._by_key.clear()
        self._changed.clear()

    # --- what the stores ask ----------------------------------------------------------------------

    @property
    def usable(self) -> bool:
        return self._tracking and time.perf_counter() - self._confirmed < self.staleness

    def get(self, entry: Hashable) -> object:
        """The cached answer, or MISS (also whenever the cache cannot be trusted now)."""
        found = self._entries.get(entry)
        if found is None or not self.usable:
            self.stats.misses += 1
            return MISS
        self._entries.move_to_end(entry)
        self.stats.hits += 1
        return found[0]

    def begin(self, keys: tuple[bytes, ...]) -> int:
        """Before a read of `keys` is sent: a token for `keep`."""
        for key in keys:
            self._reading[key] = self._reading.get(key, 0) + 1
        return self._epoch

    def keep(self, token: int, entry: Hashable, keys: tuple[bytes, ...], value: object) -> None:
        """After the read answered (or failed: call `done` instead): cache it unless something could have
        changed it meanwhile."""
        fresh = token == self._epoch and self._tracking and not any(k in self._changed for k in keys)
        self.done(keys)
        if not fresh:
            return
        if entry in self._entries:
            self._entries.move_to_end(entry)
        elif len(self._entries) >= self.max_entries:
            old, (_, old_keys) = self._entries.popitem(last=False)
            for key in old_keys:
                users = self._by_key.get(key)
                if users is not None:
                    users.discard(old)
                    if not users:
                        del self._by_key[key]
        self._entries[entry] = (value, keys)
        for key in keys:
            self._by_key.setdefault(key, set()).add(entry)

    def done(self, keys: tuple[bytes, ...]) -> None:
        for key in keys:
            left = self._reading.get(key, 0) - 1
            if left > 0:
                self._reading[key] = left
            else:
                self._reading.pop(key, None)
                self._changed.discard(key)

    def __len__(self) -> int:
        return len(self._entries)
