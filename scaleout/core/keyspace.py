"""Every Redis key of the shared state, declared once, with the slot it lands in on a Redis Cluster.

A Redis Cluster runs a multi-key command or script only when all its keys hash to one slot (else
`CROSSSLOT`); the slot of a key is that of its hash tag, the part between the first `{` and `}`. So each key
carries the tag of what is changed together with it:

- everything of one user (their sessions, the index of their sessions, their refresh families and the
  marks of revoked ones) carries the user's tag: login, logout-all, a refresh token's spend and the per-user
  caps are single-slot scripts. The tag is an HMAC of the user id under the server's session key, cut to
  16 bits: every session of a user finds the same slot, and nobody without the key can tell whose it is;
- a session ID starts with that tag, so a replica finds the session's slot from the cookie alone, with no
  directory to ask;
- the two denylist keys an access token is checked against carry the tag of its login (`fam`): one
  `EXISTS` of both, on one shard;
- the login throttle's counters share one slot: a login's two counters are checked and counted in one
  atomic step; logins are rare beside reads (each costs an Argon2 hash), so one shard holds them all.

On a single Redis or behind Sentinels the tags cost a few bytes per key and change nothing else.
"""

from __future__ import annotations

import hmac
import re
from hashlib import sha256

TAG = re.compile(r"[0-9a-f]{4}")  # 16 bits: more tags than a cluster has slots, few enough to spread evenly


class Keyspace:
    """The keys of one cluster's shared state; `key` is the server's session key (every service has it)."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    def tag(self, uid: str) -> str:
        """The user's slot tag: the same for all their sessions and families, telling nothing about them."""
        return hmac.new(self._key, b"slot-tag\0" + uid.encode(), sha256).hexdigest()[:4]

    def user_sessions(self, uid: str) -> tuple[str, str]:
        """The per-user index: a sorted set handle -> last use, and a hash handle -> session key."""
        prefix = f"user:{{{self.tag(uid)}}}:{uid}"
        return f"{prefix}:sessions", f"{prefix}:handles"

    def user_families(self, uid: str) -> tuple[str, str]:
        """A user's refresh families: a sorted set fam -> last use, and a hash fam -> what the user may see."""
        prefix = f"user:{{{self.tag(uid)}}}:{uid}"
        return f"{prefix}:fams", f"{prefix}:faminfo"

    def refresh_token(self, uid: str, jti: str) -> str:
        """A refresh token's state (`live`, then `used`)."""
        return f"rt:{{{self.tag(uid)}}}:{jti}"

    def family_marks(self, uid: str) -> str:
        """The prefix of a user's revoked-family marks (`<prefix><fam>`); scripts append the family."""
        return f"rf:{{{self.tag(uid)}}}:"


def session_key(raw_sid: bytes) -> str:
    """A session's key: the tag its ID starts with, and the SHA-256 of the whole ID (the store never holds
    the ID itself). An ID of the wrong shape never gets here (`SessionCookie` refuses it first)."""
    return "sess:{" + raw_sid[:4].decode() + "}:" + sha256(raw_sid).hexdigest()


def denied_token(fam: str, jti: str) -> str:
    return f"deny:{{{fam}}}:{jti}"


def denied_family(fam: str) -> str:
    return f"denyfam:{{{fam}}}"


def throttle_keys(username: str, client_ip: str) -> list[str]:
    return [f"thr:{{login}}:acct:{username}", f"thr:{{login}}:ip:{client_ip}"]
