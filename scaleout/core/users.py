"""The users database: SQLite, owned by the auth service alone.

Every account has a stable random id (`uid`): sessions and tokens name it, not the username, so an
account created later under a deleted account's name inherits none of its sessions or tokens.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class User:
    uid: str
    username: str
    password_hash: str
    disabled: bool


class UsernameTaken(Exception):
    pass


def new_uid() -> str:
    return secrets.token_urlsafe(12)


class Users:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Password hashes are secrets at rest: the file (and SQLite's WAL and shm beside it) is owner-only.
        old_umask = os.umask(0o077)
        try:
            # One connection guarded by a lock: the auth service calls this from a thread pool.
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
            self._lock = threading.Lock()
            with self._lock:
                self._db.execute("PRAGMA journal_mode=WAL")
                self._db.execute(
                    "CREATE TABLE IF NOT EXISTS users ("
                    " username TEXT PRIMARY KEY,"
                    " password_hash TEXT NOT NULL,"
                    " disabled INTEGER NOT NULL DEFAULT 0,"
                    " created_at REAL NOT NULL DEFAULT (strftime('%s','now')),"
                    " uid TEXT)"
                )
                columns = {row[1] for row in self._db.execute("PRAGMA table_info(users)")}
                if "uid" not in columns:  # a database from before stable ids
                    self._db.execute("ALTER TABLE users ADD COLUMN uid TEXT")
                for (name,) in self._db.execute("SELECT username FROM users WHERE uid IS NULL").fetchall():
                    self._db.execute("UPDATE users SET uid = ? WHERE username = ?", (new_uid(), name))
                self._db.execute("CREATE UNIQUE INDEX IF NOT EXISTS users_uid ON users (uid)")
        finally:
            os.umask(old_umask)
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{path}{suffix}")
            if p.exists():
                p.chmod(0o600)

    def add(self, username: str, password_hash: str) -> User:
        uid = new_uid()
        try:
            with self._lock:
                self._db.execute(
                    "INSERT INTO users (username, password_hash, uid) VALUES (?, ?, ?)", (username, password_hash, uid)
                )
        except sqlite3.IntegrityError as exc:
            raise UsernameTaken(username) from exc
        return User(uid, username, password_hash, False)

    def _one(self, where: str, value: str) -> User | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT uid, username, password_hash, disabled FROM users WHERE {where} = ?", (value,)
            ).fetchone()
        return User(row[0], row[1], row[2], bool(row[3])) if row else None

    def get(self, username: str) -> User | None:
        return self._one("username", username)

    def by_uid(self, uid: str) -> User | None:
        return self._one("uid", uid)

    def delete(self, uid: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM users WHERE uid = ?", (uid,)).rowcount > 0

    def set_disabled(self, username: str, disabled: bool) -> None:
        with self._lock:
            self._db.execute("UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username))

    def close(self) -> None:
        self._db.close()
