"""Durable serving state: logged decisions, feedback events, contacts, redemption counters.

SQLite (WAL) on the embedded default, PostgreSQL on the production profile, shared by every
service replica; both through SQLAlchemy Core, so the SQL is the same. Feedback is
committed (SQLite ``synchronous=FULL``; PostgreSQL's default synchronous commit) before the
API answers, so a crash or restart loses nothing that was acknowledged. Member ids are
stored as keyed hashes. A store that cannot be reached raises :class:`StateUnavailable`.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, ProgrammingError, SQLAlchemyError


class StateUnavailable(RuntimeError):
    """The serving-state database did not answer (down, unreachable, timed out)."""


# what makes two feedback events with the same id the same event
EVENT_CONTENT = ("member_key", "event", "offer_id", "item_id", "channel", "decision_id", "ts", "revenue")


@dataclass
class FeedbackResult:
    """Outcome of one feedback batch: the events stored now, repeats, and conflicting repeats."""

    stored_ids: set[str] = field(default_factory=set)
    new_events: list[dict] = field(default_factory=list)  # the stored events, as given
    duplicates: int = 0  # same id, same content: already stored, nothing to do
    conflicting_ids: list[str] = field(default_factory=list)  # same id, other content: refused

    @property
    def stored(self) -> int:
        return len(self.stored_ids)


@contextmanager
def _db_errors():
    """Any database error becomes :class:`StateUnavailable` (callers degrade on it)."""
    try:
        yield
    except SQLAlchemyError as err:
        raise StateUnavailable(f"serving state unavailable: {type(err).__name__}") from err


def pseudonymise(member_id: str, key: str) -> str:
    """Keyed hash: stable per member, not reversible without the key."""
    return hmac.new(key.encode(), str(member_id).encode(), hashlib.sha256).hexdigest()[:20]


def _tables(prefix: str) -> tuple[sa.MetaData, sa.Table, sa.Table, sa.Table]:
    md = sa.MetaData()
    decisions = sa.Table(
        f"{prefix}decisions",
        md,
        sa.Column("decision_id", sa.Text, primary_key=True),
        sa.Column("member_key", sa.Text, nullable=False),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("endpoint", sa.Text, nullable=False),
        sa.Column("channel", sa.Text),
        sa.Column("chosen_offer", sa.Text),
        sa.Column("propensity", sa.Float),
        sa.Column("personalised", sa.Integer),
        sa.Column("degraded", sa.Integer),
        sa.Column("payload", sa.Text),
    )
    feedback = sa.Table(
        f"{prefix}feedback",
        md,
        sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.Text, nullable=False, unique=True),
        sa.Column("member_key", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("offer_id", sa.Text),
        sa.Column("item_id", sa.Text),
        sa.Column("channel", sa.Text),
        sa.Column("decision_id", sa.Text),
        sa.Column("ts", sa.BigInteger, nullable=False),
        sa.Column("revenue", sa.Float),
        sa.Column("received_at", sa.Float, nullable=False),
        sa.Column("pushed", sa.Integer, nullable=False, server_default="0"),
        sa.Index(f"{prefix}feedback_member", "member_key", "event", "ts"),
        sa.Index(f"{prefix}feedback_offer", "offer_id", "event"),
    )
    # kept by add_feedback in the same transaction as the events, so that the stock check on
    # every request reads one small table instead of counting all redemptions
    redemptions = sa.Table(
        f"{prefix}offer_redemptions",
        md,
        sa.Column("offer_id", sa.Text, primary_key=True),
        sa.Column("redeemed", sa.BigInteger, nullable=False),
    )
    return md, decisions, feedback, redemptions


def _engine(url: str, synchronous: str = "FULL") -> sa.Engine:
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(conn, _):
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={synchronous}")

        return engine
    # a dead server must fail fast (degraded answers), and the pool must heal when it is back
    return sa.create_engine(
        url,
        pool_pre_ping=True,
        pool_size=8,
        max_overflow=8,
        pool_timeout=2,
        connect_args={"connect_timeout": 2, "options": "-c statement_timeout=2000"},
    )


class ServingState:
    """``url``: a SQLAlchemy URL (``sqlite:///...``, ``postgresql+psycopg://...``) or a SQLite path."""

    def __init__(self, url: str | Path, key: str, table_prefix: str = ""):
        if isinstance(url, Path):
            url.parent.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{url}"
        self.key, self.url = key, url
        # batch jobs ask about the same members several times; an HMAC each time adds up
        self._key_of = functools.lru_cache(maxsize=1 << 18)(functools.partial(pseudonymise, key=key))
        self._md, self.decisions, self.feedback_table, self.redemptions = _tables(table_prefix)
        self._db = _engine(url)
        self._dialect = postgresql if self._db.dialect.name == "postgresql" else sqlite
        # decisions are an audit/OPE log: on SQLite, synchronous=NORMAL survives a process crash
        # (only an OS crash can lose the last ones); feedback keeps FULL: fsync before the answer
        self._log_db = _engine(url, "NORMAL") if url.startswith("sqlite") else self._db
        self._snapshot = self._snapshot_statement()
        with _db_errors():
            try:
                self._md.create_all(self._db)
            except (IntegrityError, ProgrammingError):  # another replica created them at the same moment
                self._md.create_all(self._db)
            self._backfill_redemption_counters()

    # ------------------------------------------------------------------ helpers
    def member_key(self, member_id: str) -> str:
        return self._key_of(member_id)

    def _backfill_redemption_counters(self) -> None:
        """Counters for a database written before they existed (empty counters, some redemptions).

        Never a recount of a live table: replicas starting while others count would lose
        increments. Two replicas backfilling at once: the second's insert conflicts, and is moot."""
        f, r = self.feedback_table, self.redemptions
        with self._db.connect() as conn:
            has_counters = conn.execute(sa.select(r.c.offer_id).limit(1)).first() is not None
            has_redemptions = conn.execute(sa.select(f.c.seq).where(f.c.event == "redemption").limit(1)).first()
        if has_counters or has_redemptions is None:
            return
        counts = (
            sa.select(f.c.offer_id, sa.func.count())
            .where(f.c.event == "redemption", f.c.offer_id.is_not(None))
            .group_by(f.c.offer_id)
        )
        try:
            with self._db.begin() as conn:
                conn.execute(r.insert().from_select(["offer_id", "redeemed"], counts))
        except IntegrityError:
            pass

    # ------------------------------------------------------------------ writes
    def log_decision(
        self,
        decision_id: str,
        as_of: int | None,
        member_id: str,
        endpoint: str,
        channel: str | None,
        chosen: str | None,
        propensity: float | None,
        personalised: bool,
        degraded: bool,
        payload: dict,
    ) -> None:
        """``as_of``: the time the decision was made for (default: now); the wall-clock time of
        logging goes into the payload (``logged_at``)."""
        now = int(time.time())
        row = {
            "decision_id": decision_id,
            "member_key": self.member_key(member_id),
            "ts": now if as_of is None else int(as_of),
            "endpoint": endpoint,
            "channel": channel,
            "chosen_offer": chosen,
            "propensity": propensity,
            "personalised": int(personalised),
            "degraded": int(degraded),
            "payload": json.dumps(payload | {"logged_at": now}, default=str),
        }
        with _db_errors(), self._log_db.begin() as conn:
            if self._dialect is postgresql:  # an audit log: no need to wait for the WAL flush
                conn.execute(sa.text("SET LOCAL synchronous_commit = off"))
            conn.execute(self.decisions.insert(), row)

    def add_feedback(self, events: list[dict]) -> FeedbackResult:
        """Insert events (idempotent on event_id) in one transaction.

        An event id seen before (earlier, or earlier in this batch) with the same content is a
        duplicate; with other content a conflict: never stored over the first, reported by id.
        """
        now = time.time()
        rows = [
            {
                "event_id": e["event_id"],
                "member_key": self.member_key(e["member_id"]),
                "event": e["event"],
                "offer_id": e.get("offer_id"),
                "item_id": e.get("item_id"),
                "channel": e.get("channel"),
                "decision_id": e.get("decision_id"),
                "ts": int(e["ts"]),
                "revenue": e.get("revenue"),
                "received_at": now,
            }
            for e in events
        ]
        f = self.feedback_table
        insert = self._dialect.insert(f).on_conflict_do_nothing(index_elements=["event_id"]).returning(f.c.event_id)
        content = [f.c[c] for c in ("event_id", *EVENT_CONTENT)]
        with _db_errors(), self._db.begin() as conn:
            inserted: set[str] = set()
            first: dict[str, tuple] = {}  # event id -> the content the store keeps
            for lo in range(0, len(rows), 500):
                chunk = rows[lo : lo + 500]
                inserted |= set(conn.execute(insert, chunk).scalars())
                ids = list({r["event_id"] for r in chunk})
                first.update(
                    {row[0]: tuple(row[1:]) for row in conn.execute(sa.select(*content).where(f.c.event_id.in_(ids)))}
                )
            result = FeedbackResult()
            for i, r in enumerate(rows):
                eid = r["event_id"]
                if eid in inserted and eid not in result.stored_ids:
                    result.stored_ids.add(eid)
                    result.new_events.append(events[i])
                elif tuple(r[c] for c in EVENT_CONTENT) == first[eid]:
                    result.duplicates += 1
                else:
                    result.conflicting_ids.append(eid)
            redeemed = Counter(e.get("offer_id") for e in result.new_events if e["event"] == "redemption")
            redeemed.pop(None, None)
            if redeemed:
                up = self._dialect.insert(self.redemptions)
                up = up.on_conflict_do_update(
                    index_elements=["offer_id"], set_={"redeemed": self.redemptions.c.redeemed + up.excluded.redeemed}
                )
                conn.execute(up, [{"offer_id": o, "redeemed": n} for o, n in redeemed.items()])
        return result

    def mark_pushed(self, event_ids: list[str]) -> None:
        f = self.feedback_table
        with _db_errors(), self._db.begin() as conn:
            conn.execute(f.update().where(f.c.event_id.in_(event_ids)).values(pushed=1))

    # ------------------------------------------------------------------ reads
    def _all(self, stmt) -> list:
        with _db_errors(), self._db.connect() as conn:
            return conn.execute(stmt).all()

    def member_snapshot(self, member_id: str, since_ts: int) -> dict:
        """What one decision checks, in one round trip (the request's hot path): opt-out,
        impressions per channel since ``since_ts`` (the contact caps), offers redeemed, and
        redemptions per offer (stock)."""
        with _db_errors(), self._db.connect() as conn:
            rows = conn.execute(
                self._snapshot, {"member_key": self.member_key(member_id), "since": int(since_ts)}
            ).all()
        opted_out, contacts, redeemed, by_offer = False, Counter(), set(), {}
        for event, channel, offer, n in rows:
            if event == "opt_out":
                opted_out = True
            elif event == "impression":
                contacts[channel] += 1
            elif event == "redemption":
                if offer:
                    redeemed.add(offer)
            else:  # the stock counters
                by_offer[offer] = int(n)
        return {
            "opted_out": opted_out,
            "contacts": dict(contacts),
            "redeemed": redeemed,
            "redemptions_by_offer": by_offer,
        }

    def _snapshot_statement(self) -> sa.CompoundSelect:
        """Built once: the member's events and every offer's redemption counter, one statement."""
        f, r = self.feedback_table, self.redemptions
        events = sa.select(f.c.event, f.c.channel, f.c.offer_id, sa.literal(0, sa.Integer).label("n")).where(
            f.c.member_key == sa.bindparam("member_key"),
            sa.or_(
                f.c.event.in_(["opt_out", "redemption"]),
                sa.and_(f.c.event == "impression", f.c.ts >= sa.bindparam("since")),
            ),
        )
        counters = sa.select(
            sa.literal("counter", sa.String).label("event"),
            sa.null().label("channel"),
            r.c.offer_id,
            r.c.redeemed.label("n"),
        )
        return sa.union_all(events, counters)

    def opted_out(self, member_id: str) -> bool:
        f = self.feedback_table
        stmt = sa.select(f.c.seq).where(f.c.member_key == self.member_key(member_id), f.c.event == "opt_out").limit(1)
        return bool(self._all(stmt))

    def opted_out_many(self, member_ids: list[str]) -> set[str]:
        keys = {self.member_key(m): m for m in member_ids}
        f = self.feedback_table
        out: set[str] = set()
        chunk = list(keys)
        for lo in range(0, len(chunk), 1000):
            stmt = sa.select(f.c.member_key).where(f.c.member_key.in_(chunk[lo : lo + 1000]), f.c.event == "opt_out")
            out |= {keys[k] for (k,) in self._all(stmt)}
        return out

    def redeemed_offers(self, member_id: str) -> set[str]:
        f = self.feedback_table
        stmt = (
            sa.select(f.c.offer_id)
            .distinct()
            .where(f.c.member_key == self.member_key(member_id), f.c.event == "redemption")
        )
        return {r[0] for r in self._all(stmt) if r[0]}

    def members_with_events(self, member_ids: list[str]) -> set[str]:
        """Those of ``member_ids`` with any stored feedback event (the members whose real-time
        features the service has pushed)."""
        keys = {self.member_key(m): m for m in member_ids}
        f = self.feedback_table
        chunk, out = list(keys), set()
        for lo in range(0, len(chunk), 1000):
            stmt = sa.select(f.c.member_key).distinct().where(f.c.member_key.in_(chunk[lo : lo + 1000]))
            out |= {keys[k] for (k,) in self._all(stmt)}
        return out

    def redeemed_pairs(self, member_ids: list[str]) -> set[tuple[str, str]]:
        """(member, offer) of every redemption of these members: :meth:`redeemed_offers` in bulk."""
        keys = {self.member_key(m): m for m in member_ids}
        f = self.feedback_table
        chunk, out = list(keys), set()
        for lo in range(0, len(chunk), 1000):
            stmt = (
                sa.select(f.c.member_key, f.c.offer_id)
                .distinct()
                .where(f.c.member_key.in_(chunk[lo : lo + 1000]), f.c.event == "redemption")
            )
            out |= {(keys[k], o) for k, o in self._all(stmt) if o}
        return out

    def redemptions_by_offer(self) -> dict[str, int]:
        return {o: int(n) for o, n in self._all(sa.select(self.redemptions.c.offer_id, self.redemptions.c.redeemed))}

    def count(self, table: str) -> int:
        t = {"feedback": self.feedback_table, "decisions": self.decisions}[table]
        return self._all(sa.select(sa.func.count()).select_from(t))[0][0]

    def event_ids(self) -> set[str]:
        return {r[0] for r in self._all(sa.select(self.feedback_table.c.event_id))}

    def decision_log(self, endpoint: str = "next_best_offer") -> pd.DataFrame:
        """Personalised decisions that chose an offer, with propensity and payload (for OPE)."""
        d = self.decisions
        stmt = sa.select(d.c.decision_id, d.c.chosen_offer.label("action"), d.c.propensity, d.c.payload).where(
            d.c.endpoint == endpoint, d.c.personalised == 1, d.c.chosen_offer.is_not(None)
        )
        return pd.DataFrame(self._all(stmt), columns=["decision_id", "action", "propensity", "payload"])

    def sent_offers(self, since_ts: int, until_ts: int) -> pd.DataFrame:
        """Next-best-offer decisions made for times in [since_ts, until_ts) that chose an offer, with
        the arm each landed in: ``treatment`` where the marketing system reported an impression of
        it, ``control`` where the service held it out; decisions neither sent nor held out reached
        no one and are left out. Columns: decision_id, member_key, ts, channel, offer_id,
        propensity, treatment."""
        d, f = self.decisions, self.feedback_table
        sent = (
            sa.select(f.c.decision_id).where(f.c.event == "impression", f.c.decision_id.is_not(None)).distinct()
        ).subquery()
        stmt = (
            sa.select(
                d.c.decision_id,
                d.c.member_key,
                d.c.ts,
                d.c.channel,
                d.c.chosen_offer,
                d.c.propensity,
                d.c.payload,
                sent.c.decision_id.is_not(None).label("impression"),
            )
            .outerjoin(sent, sent.c.decision_id == d.c.decision_id)
            .where(
                d.c.endpoint == "next_best_offer",
                d.c.chosen_offer.is_not(None),
                d.c.ts >= since_ts,
                d.c.ts < until_ts,
            )
            .order_by(d.c.ts, d.c.decision_id)
        )
        cols = ["decision_id", "member_key", "ts", "channel", "offer_id", "propensity", "payload", "impression"]
        rows = pd.DataFrame(self._all(stmt), columns=cols)
        control = rows.pop("payload").map(lambda p: bool(json.loads(p).get("control")) if p else False)
        impression = rows.pop("impression").astype(bool)
        rows = rows[impression | control].copy()
        rows["treatment"] = ~control[rows.index]
        return rows.reset_index(drop=True)

    def events(self, event: str) -> pd.DataFrame:
        """Feedback events of one kind that name a decision: (decision_id, offer_id)."""
        f = self.feedback_table
        stmt = (
            sa.select(f.c.decision_id, f.c.offer_id).distinct().where(f.c.event == event, f.c.decision_id.is_not(None))
        )
        return pd.DataFrame(self._all(stmt), columns=["decision_id", "offer_id"])

    def ping(self) -> bool:
        try:
            return self._all(sa.select(sa.literal(1)))[0][0] == 1
        except StateUnavailable:
            return False
