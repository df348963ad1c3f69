"""Serving state on SQLite and on PostgreSQL: idempotent feedback, redemption counters kept
with the events, upgrade of a database written before the counters, clear unavailability."""

from __future__ import annotations

import sqlite3
import threading
import uuid

import pytest
import sqlalchemy as sa

from serving.state import ServingState, StateUnavailable
from tests.conftest import reachable

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _states(tmp_path):
    yield "sqlite", ServingState(tmp_path / "state.db", "k"), None
    if reachable("127.0.0.1", 5432):
        prefix = f"t{uuid.uuid4().hex[:8]}_"
        yield "postgresql", ServingState(PG, "k", table_prefix=prefix), prefix


def _event(i, event="redemption", offer="O1", member="m1"):
    return {"event_id": f"e{i}", "member_id": member, "event": event, "offer_id": offer, "ts": 100 + i}


def _drop(prefix):
    engine = sa.create_engine(PG)
    with engine.begin() as conn:
        for t in ("decisions", "feedback", "offer_redemptions"):
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{prefix}{t}"')
    engine.dispose()


@pytest.mark.unit
def test_feedback_is_idempotent_and_counters_follow_new_events_only(tmp_path):
    for name, state, prefix in _states(tmp_path):
        try:
            res = state.add_feedback([_event(1), _event(1), _event(2, offer="O2"), _event(3, "impression")])
            assert (res.stored, res.duplicates) == (3, 1), name  # a repeat inside one batch is stored once
            assert [e["event_id"] for e in res.new_events] == ["e1", "e2", "e3"], name
            res = state.add_feedback([_event(1), _event(4)])
            assert (res.stored, res.duplicates, res.conflicting_ids) == (1, 1, []), name
            assert state.redemptions_by_offer() == {"O1": 2, "O2": 1}, name
            assert state.redeemed_offers("m1") == {"O1", "O2"} and state.count("feedback") == 4, name
            state.add_feedback([_event(10, "impression") | {"channel": "push"}, _event(11, "opt_out")])
            snap = state.member_snapshot("m1", since_ts=105)  # e3's impression (ts 103) is older
            assert snap == {
                "opted_out": True,
                "contacts": {"push": 1},
                "redeemed": {"O1", "O2"},
                "redemptions_by_offer": {"O1": 2, "O2": 1},
            }, name
            assert state.member_snapshot("m2", 0)["opted_out"] is False
        finally:
            if prefix:
                _drop(prefix)


@pytest.mark.unit
def test_a_known_event_id_with_other_content_is_a_conflict_and_changes_nothing(tmp_path):
    for name, state, prefix in _states(tmp_path):
        try:
            state.add_feedback([_event(1)])
            res = state.add_feedback([_event(1) | {"ts": 999}, _event(1), _event(5) | {"offer_id": "O9"}])
            assert (res.stored, res.duplicates, res.conflicting_ids) == (1, 1, ["e1"]), name
            # inside one batch too: the first content is kept, the other one refused
            res = state.add_feedback([_event(6), _event(6) | {"member_id": "m2"}])
            assert (res.stored, res.conflicting_ids) == (1, ["e6"]), name
            assert state.redemptions_by_offer() == {"O1": 2, "O9": 1}, name  # the conflict counted nothing
            f = state.feedback_table
            assert state._all(sa.select(f.c.ts).where(f.c.event_id == "e1")) == [(101,)], name
        finally:
            if prefix:
                _drop(prefix)


@pytest.mark.unit
def test_replicas_starting_together_share_one_schema(tmp_path):
    if not reachable("127.0.0.1", 5432):
        pytest.skip("PostgreSQL on 127.0.0.1:5432 is not reachable")
    prefix = f"t{uuid.uuid4().hex[:8]}_"
    errors: list[BaseException] = []

    def start():
        try:
            ServingState(PG, "k", table_prefix=prefix).add_feedback([_event(threading.get_ident())])
        except BaseException as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=start) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        assert ServingState(PG, "k", table_prefix=prefix).redemptions_by_offer() == {"O1": 4}
    finally:
        _drop(prefix)


@pytest.mark.unit
def test_database_from_before_the_counters_is_backfilled(tmp_path):
    path = tmp_path / "old.db"
    ServingState(path, "k").add_feedback([_event(1), _event(2), _event(3, offer="O2")])
    with sqlite3.connect(path) as db:  # as written by the previous release: no counters table
        db.execute("DROP TABLE offer_redemptions")
    assert ServingState(path, "k").redemptions_by_offer() == {"O1": 2, "O2": 1}
    # a restart with live counters does not recount (replicas would race): counters stand
    assert ServingState(path, "k").redemptions_by_offer() == {"O1": 2, "O2": 1}


@pytest.mark.unit
def test_unreachable_state_store_is_a_clear_error():
    with pytest.raises(StateUnavailable, match="serving state unavailable"):
        ServingState("postgresql+psycopg://postgres@127.0.0.1:9/none", "k")
