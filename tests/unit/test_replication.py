"""The replicated store's rules, without a network: what ended stays ended whatever arrives late, a message
is applied once, stale or malformed ones are refused, a snapshot goes only to a fresh signed request."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest

from scaleout.core.replication import (
    REPLAY_WINDOW,
    Refused,
    ReplicatedSessions,
    sign,
    snapshot_request,
)
from scaleout.core.sessions import Session, memory_key, new_handle, new_session_id

KEY = b"k" * 48


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def store() -> ReplicatedSessions:
    return ReplicatedSessions(600, 3600, 10, KEY, [], httpx.AsyncClient(), 0.5, "api-1")


def session(uid: str = "u1", created: float | None = None) -> Session:
    return Session("ann", "csrf", time.time() if created is None else created, uid, new_handle())


def message(change: dict[str, Any], seq: int = 1, boot: str = "ab" * 8, ts: float | None = None) -> tuple[bytes, str]:
    body = orjson.dumps(
        {"from": "api-2", "boot": boot, "seq": seq, "ts": time.time() if ts is None else ts, "change": change}
    )
    return body, sign(KEY, body)


def put(sid: str, s: Session) -> dict[str, Any]:
    return {"op": "put", "key": memory_key(sid.encode()).hex(), "s": s.as_dict()}


@pytest.mark.anyio
async def test_an_ended_session_never_comes_back_whatever_arrives_late() -> None:
    r = store()
    sid, s = new_session_id(), session()
    await r.delete(sid)  # the logout arrived before the login it ends
    assert r.receive(*message(put(sid, s)))
    assert await r.get(sid) is None
    sid2, s2 = new_session_id(), session()
    await r.end("u1", s2.handle)  # ended by handle, before its put arrived
    assert r.receive(*message(put(sid2, s2), seq=2))
    assert await r.get(sid2) is None
    old, kept = session(created=time.time() - 5), session(created=time.time() - 5)
    await r.end_all("u1", keep=kept.handle)
    sid3, sid4 = new_session_id(), new_session_id()
    assert r.receive(*message(put(sid3, old), seq=3)) and r.receive(*message(put(sid4, kept), seq=4))
    assert await r.get(sid3) is None and await r.get(sid4) == kept
    sid5, later = new_session_id(), session(created=time.time() + 1)  # a login after the logout-all
    assert r.receive(*message(put(sid5, later), seq=5))
    assert await r.get(sid5) == later


@pytest.mark.anyio
async def test_a_message_is_applied_once_and_only_while_fresh() -> None:
    r = store()
    sid, s = new_session_id(), session()
    sent = message(put(sid, s))
    assert r.receive(*sent)
    await r.delete(sid)
    assert not r.receive(*sent)  # a replay is acknowledged and not applied again
    assert await r.get(sid) is None
    sid2 = new_session_id()
    with pytest.raises(Refused, match="replay window"):
        r.receive(*message(put(sid2, session()), seq=2, ts=time.time() - REPLAY_WINDOW - 1))
    with pytest.raises(Refused, match="replay window"):
        r.receive(*message(put(sid2, session()), seq=3, ts=time.time() + REPLAY_WINDOW + 1))
    with pytest.raises(Refused, match="this replica"):
        r.receive(*message(put(sid2, session()), seq=4, boot=r.boot))
    body, _ = message(put(sid2, session()), seq=5)
    with pytest.raises(Refused, match="signature"):
        r.receive(body, sign(b"x" * 48, body))
    assert await r.get(sid2) is None


@pytest.mark.parametrize(
    "change",
    [
        {"op": "put", "key": "00" * 31, "s": session().as_dict()},  # a key of the wrong length
        {"op": "put", "key": "zz" * 32, "s": session().as_dict()},
        {"op": "put", "key": "00" * 32, "s": {**session().as_dict(), "t": time.time() + 3600}},  # from the future
        {"op": "put", "key": "00" * 32, "s": {**session().as_dict(), "h": "../x"}},
        {"op": "put", "key": "00" * 32, "s": {**session().as_dict(), "i": ""}},
        {"op": "del", "key": 7},
        {"op": "end", "uid": "u1", "handle": "not a handle"},
        {"op": "end_all", "uid": "u1", "keep": None, "at": time.time() + 3600},
        {"op": "end_all", "uid": "u1", "keep": "x"},
        {"op": "drop_everything"},
    ],
)
def test_malformed_changes_are_refused(change: dict[str, Any]) -> None:
    r = store()
    with pytest.raises(Refused):
        r.receive(*message(change))
    assert len(r) == 0


def test_a_snapshot_goes_only_to_a_fresh_signed_request_once() -> None:
    r = store()
    nonce, ts = "n" * 32, repr(time.time())
    with pytest.raises(Refused):
        r.snapshot(nonce, ts, sign(KEY, b"snapshot"))  # the old constant request
    with pytest.raises(Refused):
        r.snapshot(nonce, repr(time.time() - REPLAY_WINDOW - 1), snapshot_request(KEY, nonce, repr(time.time() - 99)))
    assert orjson.loads(r.snapshot(nonce, ts, snapshot_request(KEY, nonce, ts)))["sessions"] == []
    with pytest.raises(Refused, match="seen before"):
        r.snapshot(nonce, ts, snapshot_request(KEY, nonce, ts))  # a captured request, replayed


@pytest.mark.anyio
async def test_tombstones_travel_in_the_snapshot() -> None:
    r = store()
    sid = new_session_id()
    await r.delete(sid)
    await r.end("u2", "h" * 16)
    await r.end_all("u3")
    nonce, ts = "m" * 32, repr(time.time())
    snap = orjson.loads(r.snapshot(nonce, ts, snapshot_request(KEY, nonce, ts)))
    assert memory_key(sid.encode()).hex() in snap["dead_keys"]
    assert ["u2", "h" * 16] in snap["dead_handles"]
    assert [e[0] for e in snap["ended"]] == ["u3"]
