"""The users database: SQLite, owned by the auth service alone."""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class User:
    username: str
    password_hash: str
    disabled: bool


class UsernameTaken(Exception):
    pass


class Users:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
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
                " created_at REAL NOT NULL DEFAULT (strftime('%s','now')))"
            )

    def add(self, username: str, password_hash: str) -> None:
        try:
            with self._lock:
                self._db.execute("INSERT INTO users (username, password_hash) VALUES (?, ?)", (username, password_hash))
        except sqlite3.IntegrityError as exc:
            raise UsernameTaken(username) from exc

    def get(self, username: str) -> User | None:
        with self._lock:
            row = self._db.execute(
                "SELECT username, password_hash, disabled FROM users WHERE username = ?", (username,)
            ).fetchone()
        return User(row[0], row[1], bool(row[2])) if row else None

    def set_disabled(self, username: str, disabled: bool) -> None:
        with self._lock:
            self._db.execute("UPDATE users SET disabled = ? WHERE username = ?", (int(disabled), username))

    def close(self) -> None:
        self._db.close()
