"""Durable serving state in SQLite: logged decisions, feedback events, contacts.

Every write is committed (WAL, ``synchronous=FULL``) before the API answers, so a crash or
restart loses nothing that was acknowledged. Member ids are stored as keyed hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_id TEXT PRIMARY KEY, member_key TEXT NOT NULL, ts INTEGER NOT NULL, endpoint TEXT NOT NULL,
    channel TEXT, chosen_offer TEXT, propensity REAL, personalised INTEGER, degraded INTEGER, payload TEXT
);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, event_id TEXT UNIQUE NOT NULL, member_key TEXT NOT NULL,
    event TEXT NOT NULL, offer_id TEXT, item_id TEXT, channel TEXT, decision_id TEXT, ts INTEGER NOT NULL,
    revenue REAL, received_at REAL NOT NULL, pushed INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS feedback_member ON feedback(member_key, event, ts);
CREATE INDEX IF NOT EXISTS feedback_offer ON feedback(offer_id, event);
"""


def pseudonymise(member_id: str, key: str) -> str:
    """Keyed hash: stable per member, not reversible without the key."""
    return hmac.new(key.encode(), str(member_id).encode(), hashlib.sha256).hexdigest()[:20]


class ServingState:
    def __init__(self, path: Path, key: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.key = key
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(SCHEMA)
        # decisions are an audit/OPE log: WAL with synchronous=NORMAL survives a process crash
        # (only an OS crash can lose the last ones); feedback keeps FULL: fsync before the answer
        self._log_db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._log_db.execute("PRAGMA synchronous=NORMAL")
        self._log_lock = threading.Lock()

    def member_key(self, member_id: str) -> str:
        return pseudonymise(member_id, self.key)

    def log_decision(
        self,
        decision_id: str,
        member_id: str,
        endpoint: str,
        channel: str | None,
        chosen: str | None,
        propensity: float | None,
        personalised: bool,
        degraded: bool,
        payload: dict,
    ) -> None:
        with self._log_lock:
            self._log_db.execute(
                "INSERT INTO decisions VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    decision_id,
                    self.member_key(member_id),
                    int(time.time()),
                    endpoint,
                    channel,
                    chosen,
                    propensity,
                    int(personalised),
                    int(degraded),
                    json.dumps(payload, default=str),
                ),
            )

    def add_feedback(self, events: list[dict]) -> tuple[int, int]:
        """Insert events (idempotent on event_id); returns (stored, duplicates)."""
        stored = 0
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for e in events:
                    cur = self._db.execute(
                        "INSERT OR IGNORE INTO feedback (event_id, member_key, event, offer_id, item_id, channel,"
                        " decision_id, ts, revenue, received_at) VALUES (?,?,?,?,?,?,?,?,?,?)",
                        (
                            e["event_id"],
                            self.member_key(e["member_id"]),
                            e["event"],
                            e.get("offer_id"),
                            e.get("item_id"),
                            e.get("channel"),
                            e.get("decision_id"),
                            int(e["ts"]),
                            e.get("revenue"),
                            time.time(),
                        ),
                    )
                    stored += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return stored, len(events) - stored

    def mark_pushed(self, event_ids: list[str]) -> None:
        with self._lock:
            self._db.executemany("UPDATE feedback SET pushed = 1 WHERE event_id = ?", [(e,) for e in event_ids])

    def contacts_since(self, member_id: str, since_ts: int) -> dict[str, int]:
        """Impressions per channel since ``since_ts`` (what the contact caps count)."""
        rows = self._db.execute(
            "SELECT channel, COUNT(*) FROM feedback WHERE member_key = ? AND event = 'impression' AND ts >= ?"
            " GROUP BY channel",
            (self.member_key(member_id), int(since_ts)),
        ).fetchall()
        return {ch: n for ch, n in rows}

    def opted_out(self, member_id: str) -> bool:
        row = self._db.execute(
            "SELECT 1 FROM feedback WHERE member_key = ? AND event = 'opt_out' LIMIT 1", (self.member_key(member_id),)
        ).fetchone()
        return row is not None

    def redeemed_offers(self, member_id: str) -> set[str]:
        rows = self._db.execute(
            "SELECT DISTINCT offer_id FROM feedback WHERE member_key = ? AND event = 'redemption'",
            (self.member_key(member_id),),
        ).fetchall()
        return {r[0] for r in rows if r[0]}

    def redemptions_by_offer(self) -> dict[str, int]:
        rows = self._db.execute(
            "SELECT offer_id, COUNT(*) FROM feedback WHERE event = 'redemption' AND offer_id IS NOT NULL"
            " GROUP BY offer_id"
        ).fetchall()
        return {o: n for o, n in rows}

    def count(self, table: str) -> int:
        if table not in ("feedback", "decisions"):
            raise ValueError(table)
        return self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]

    def event_ids(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT event_id FROM feedback").fetchall()}

    def ping(self) -> bool:
        return self._db.execute("SELECT 1").fetchone()[0] == 1
