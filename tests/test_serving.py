"""The decision service as clients see it: a real ``bentoml serve`` process over HTTP, on the
models the training tests registered and the features the pipeline fixture materialised."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from serving import decisions
from tests.conftest import KEY, Load, Service

EVENT_TS = 1_750_000_000  # inside the simulated programme (2025-06-15): earlier or later times are a 422
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def service(settings, trained, tmp_path_factory):
    svc = Service(settings, tmp_path_factory.mktemp("svc") / "service.log").start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def members(settings, pipeline):
    """Online features of a few hundred members, to pick test subjects by consent, tier, channel."""
    from features.store import online_features
    from kernel.curated import load_curated

    ids = load_curated(settings, "members")["member_id"].head(400).tolist()
    return online_features(pipeline["store"], ids, int(pipeline["end"].timestamp())).dropna(subset=["tier"])


_USED: set[str] = set()  # tests change a member's state (contacts, redemptions): one member per test


def _member_with_offers(service, members, mask=None) -> pd.Series:
    """A consenting member (matching ``mask``) who gets at least one offer in the app, unused so far."""
    pool = members[members["consent_personalisation"].astype(bool) & (True if mask is None else mask)]
    for _, m in pool.iterrows():
        if m["member_id"] in _USED:
            continue
        if service.post("/next_best_offer", {"member_id": m["member_id"], "max_results": 5}).json()["offers"]:
            _USED.add(m["member_id"])
            return m
    raise AssertionError("no member with offers")


def _offers(settings) -> pd.DataFrame:
    from kernel.curated import load_curated

    return load_curated(settings, "offers").set_index("offer_id")


def test_health_is_open_everything_else_needs_a_key(service):
    for path in ("/healthz", "/livez", "/readyz"):
        assert httpx.get(service.url + path).status_code == 200
    for path in (
        "/next_best_offer",
        "/personalized_benefits",
        "/churn_risk",
        "/churn_risk_batch",
        "/recommendations",
        "/feedback",
        "/next_best_offer_batch",
    ):
        assert service.post(path, {"member_id": "M0000001"}, key=None).status_code == 401, path
        assert service.post(path, {"member_id": "M0000001"}, key="wrong").status_code == 401, path
    assert httpx.get(service.url + "/metrics").status_code == 401
    assert httpx.get(service.url + "/metrics", headers={"X-API-Key": KEY}).status_code == 200
    assert httpx.get(service.url + "/docs.json").status_code == 200  # OpenAPI


@pytest.mark.parametrize(
    "path,body",
    [
        ("/next_best_offer", {"member_id": ""}),
        ("/next_best_offer", {"member_id": "M1", "max_results": 0}),
        ("/next_best_offer", {"member_id": "M1", "channel": "carrier-pigeon"}),
        ("/next_best_offer", {"member_id": "M1; DROP TABLE"}),
        ("/churn_risk", {}),
        ("/recommendations", {"member_id": "M1", "k": 1000}),
        ("/feedback", {"events": [{"event_id": "x", "member_id": "M1", "event": "teleport", "ts": 1}]}),
        ("/feedback", {"events": []}),
    ],
)
def test_malformed_input_is_422_with_a_message(service, path, body):
    res = service.post(path, body)
    assert res.status_code == 422, res.text
    doc = res.json()
    assert doc["detail"]
    named = {str(e["loc"][0]) for e in doc["detail"] if e.get("loc")} or {"body"}
    assert any(doc["error"].startswith(f) or f"; {f}" in doc["error"] for f in named), doc["error"]


def test_nbo_is_personalised_ranked_eligible_and_logged(service, settings, members):
    offers = _offers(settings)
    for _, m in members[members["consent_personalisation"].astype(bool)].head(30).iterrows():
        res = service.post("/next_best_offer", {"member_id": m["member_id"], "max_results": 5})
        assert res.status_code == 200, res.text
        body = res.json()
        if body["offers"]:  # members for whom every offer has negative expected value get none
            break
    assert body["personalised"] and not body["degraded"] and not body["cold_start"]
    values = [o["expected_incremental_value"] for o in body["offers"]]
    assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    for o in body["offers"]:
        assert m["tier"] in offers.loc[o["offer_id"], "eligible_tiers"].split("|")
        assert o["reason_codes"]
    removed = {oid for step in body["trace"] if isinstance(step["removed"], list) for oid in step["removed"]}
    assert not removed & {o["offer_id"] for o in body["offers"]}
    assert 0 < body["propensity"] <= 1
    with sqlite3.connect(settings.serving_db) as db:
        row = db.execute("SELECT member_key FROM decisions WHERE decision_id = ?", (body["decision_id"],)).fetchone()
    assert row and row[0] != m["member_id"]  # stored pseudonymised


def test_no_personalisation_without_consent_and_no_contact_without_channel_consent(service, members):
    no_consent = members[~members["consent_personalisation"].astype(bool)].iloc[0]
    body = service.post("/next_best_offer", {"member_id": no_consent["member_id"]}).json()
    assert not body["personalised"] and any("personalisation" in n for n in body["notes"])
    assert all(o["expected_incremental_value"] is None for o in body["offers"])
    no_sms = members[~members["consent_sms"].astype(bool)].iloc[0]
    body = service.post("/next_best_offer", {"member_id": no_sms["member_id"], "channel": "sms"}).json()
    assert body["offers"] == [] and _rules(body)[0]["rule"] == "channel_consent"
    benefits = service.post("/personalized_benefits", {"member_id": no_consent["member_id"]}).json()
    assert not benefits["personalised"]


def _rules(body: dict) -> list[dict]:
    """The trace's rule steps: the first step names the model versions the answer used."""
    assert body["trace"][0]["rule"] == "models" and body["trace"][0]["versions"], body["trace"][:1]
    return body["trace"][1:]


def test_contact_caps_hold_per_channel_and_week(service, settings, members):
    m = _member_with_offers(service, members, members["consent_push"].astype(bool))
    now = int(pd.Timestamp(pd.read_json(settings.dataset_dir / "meta.json", typ="series")["end"]).timestamp())
    cap = settings.contact_caps_per_week["push"]
    for i in range(cap):
        assert service.post("/next_best_offer", {"member_id": m["member_id"], "channel": "push"}).json()["offers"]
        ev = {
            "event_id": f"cap-{m['member_id']}-{i}",
            "member_id": m["member_id"],
            "event": "impression",
            "channel": "push",
            "ts": now - 3600 * (i + 1),
        }
        assert service.post("/feedback", {"events": [ev]}).status_code == 200
    body = service.post("/next_best_offer", {"member_id": m["member_id"], "channel": "push"}).json()
    assert body["offers"] == [] and _rules(body)[0] == {
        "rule": "contact_cap",
        "removed": "all",
        "sent_this_week": cap,
        "cap": cap,
        "versions": None,
    }
    assert service.post("/next_best_offer", {"member_id": m["member_id"], "channel": "app"}).json()["offers"]


def test_out_of_stock_and_already_redeemed_offers_are_never_offered(service, settings, members):
    offers = _offers(settings)
    m = _member_with_offers(service, members)
    first = service.post("/next_best_offer", {"member_id": m["member_id"], "max_results": 5}).json()["offers"]
    assert first
    redeemed = first[0]["offer_id"]
    service.post(
        "/feedback",
        {
            "events": [
                {
                    "event_id": f"red-{m['member_id']}",
                    "member_id": m["member_id"],
                    "event": "redemption",
                    "offer_id": redeemed,
                    "ts": EVENT_TS,
                }
            ]
        },
    )
    body = service.post("/next_best_offer", {"member_id": m["member_id"], "max_results": 5}).json()
    assert redeemed not in [o["offer_id"] for o in body["offers"]]
    assert {"rule": "already_redeemed", "removed": [redeemed]} in [
        {"rule": s["rule"], "removed": s["removed"]} for s in body["trace"]
    ]
    # exhaust the stock of the member's next best offer: nobody gets it afterwards
    if len(body["offers"]) > 0:
        target = body["offers"][0]["offer_id"]
        left = int(offers.loc[target, "stock"])
        events = [
            {
                "event_id": f"stock-{target}-{i}",
                "member_id": f"X{i}",
                "event": "redemption",
                "offer_id": target,
                "ts": EVENT_TS,
            }
            for i in range(left)
        ]
        assert service.post("/feedback", {"events": events}).json()["stored"] == left
        again = service.post("/next_best_offer", {"member_id": m["member_id"], "max_results": 5}).json()
        assert target not in [o["offer_id"] for o in again["offers"]]
        assert any(s["rule"] == "stock" and target in s["removed"] for s in again["trace"])


def test_unknown_member_gets_a_flagged_cold_start_answer(service):
    nbo = service.post("/next_best_offer", {"member_id": "NEW-MEMBER-1"})
    assert nbo.status_code == 200 and nbo.json()["cold_start"] and nbo.json()["offers"]
    churn = service.post("/churn_risk", {"member_id": "NEW-MEMBER-1"}).json()
    assert churn["cold_start"] and churn["risk_band"] == "unknown"
    rec = service.post("/recommendations", {"member_id": "NEW-MEMBER-1", "k": 5}).json()
    assert rec["cold_start"] and len(rec["items"]) == 5 and "popularity" in rec["source"]


def test_recommendations_exclude_owned_items_and_apply_category_filters(service, settings, members):
    from kernel.curated import load_curated

    txn = load_curated(settings, "transactions")
    m = members[members["consent_personalisation"].astype(bool)].iloc[3]["member_id"]
    owned = set(txn.loc[txn["member_id"] == m, "item_id"])
    body = service.post("/recommendations", {"member_id": m, "k": 10}).json()
    assert len(body["items"]) == 10 and not owned & {i["item_id"] for i in body["items"]}
    cats = sorted({i["category"] for i in body["items"]})
    only = service.post("/recommendations", {"member_id": m, "k": 5, "include_categories": cats[:1]}).json()
    assert {i["category"] for i in only["items"]} == {cats[0]}
    without = service.post("/recommendations", {"member_id": m, "k": 10, "exclude_categories": cats[:1]}).json()
    assert cats[0] not in {i["category"] for i in without["items"]}


def test_churn_risk_single_and_batch_agree(service, members):
    ids = members["member_id"].head(20).tolist()
    single = [service.post("/churn_risk", {"member_id": m}).json() for m in ids]
    batch = service.post("/churn_risk_batch", {"member_ids": ids}).json()
    assert [b["member_id"] for b in batch] == ids
    for s, b in zip(single, batch, strict=True):
        assert s["churn_probability"] == pytest.approx(b["churn_probability"])
        assert s["risk_band"] in {"low", "medium", "high", "critical"} and s["suggested_action"]
        assert s["health_quadrant"] in {"active", "low-active", "churn-risk", "silent"}
    assert any(d["contribution"] > 0 for s in single for d in s["top_drivers"])


def test_benefits_respect_eligibility_and_explain_themselves(service, settings, members):
    offers = _offers(settings)
    m = members[members["consent_personalisation"].astype(bool)].iloc[4]
    body = service.post("/personalized_benefits", {"member_id": m["member_id"], "max_results": 5}).json()
    assert body["personalised"] and body["benefits"]
    scores = [b["score"] for b in body["benefits"]]
    assert scores == sorted(scores, reverse=True)
    for b in body["benefits"]:
        assert m["tier"] in offers.loc[b["offer_id"], "eligible_tiers"].split("|")


def test_feedback_survives_a_restart_and_is_idempotent(settings, trained, tmp_path):
    svc = Service(settings, tmp_path / "restart.log").start()
    events = [
        {"event_id": f"restart-{i}", "member_id": f"M{i:07d}", "event": "click", "ts": 1_700_000_000 + i}
        for i in range(50)
    ]
    try:
        assert svc.post("/feedback", {"events": events}).json()["stored"] == 50
    finally:
        svc.kill()  # SIGKILL to the whole process tree: no graceful shutdown
    svc = Service(settings, tmp_path / "restart2.log").start()
    try:
        again = svc.post("/feedback", {"events": events[:10]}).json()
        assert again == {
            "stored": 0,
            "duplicates": 10,
            "conflicts": 0,
            "conflicting_event_ids": [],
            "pushed_to_feature_store": True,  # nothing new: nothing to push
        }
    finally:
        svc.stop()
    with sqlite3.connect(settings.serving_db) as db:
        n = db.execute("SELECT COUNT(*) FROM feedback WHERE event_id LIKE 'restart-%'").fetchone()[0]
    assert n == 50
    log = (tmp_path / "restart.log").read_text() + (tmp_path / "restart2.log").read_text()
    assert "M0000001" not in log  # member ids never reach the logs


def test_slow_feature_store_degrades_instead_of_failing(settings, trained, tmp_path):
    """A real stall: another process holds an exclusive lock on the SQLite online store, so reads
    wait on it. Answers are flagged degraded (never a 500) and the service recovers once it is freed."""
    svc = Service(settings, tmp_path / "slow.log", LOYALTY_FEATURE_TIMEOUT_MS="500").start()
    lock = sqlite3.connect(settings.online_store_path, isolation_level=None)
    try:
        lock.execute("BEGIN EXCLUSIVE")
        assert httpx.get(svc.url + "/readyz").status_code == 503  # not ready: the store does not answer in time
        nbo = svc.post("/next_best_offer", {"member_id": "M0000001"})
        assert nbo.status_code == 200 and nbo.json()["degraded"] and not nbo.json()["personalised"]
        assert nbo.json()["offers"]
        churn = svc.post("/churn_risk", {"member_id": "M0000001"})
        assert churn.status_code == 200 and churn.json()["degraded"]
        lock.execute("ROLLBACK")
        deadline = time.monotonic() + 30
        while httpx.get(svc.url + "/readyz").status_code != 200:  # blocked reads give up within SQLite's 5 s
            assert time.monotonic() < deadline, "the service did not recover after the store came back"
            time.sleep(0.5)
        nbo = svc.post("/next_best_offer", {"member_id": "M0000001"})
        assert nbo.status_code == 200 and not nbo.json()["degraded"]
    finally:
        lock.close()
        svc.stop()


@pytest.mark.unit
def test_oversized_bodies_are_413_and_every_batch_has_a_maximum(service, members):
    big = [{"event_id": f"big-{i}", "member_id": "M0000001", "event": "click", "ts": EVENT_TS} for i in range(4999)]
    over = service.post("/feedback", {"events": big, "padding": "x" * 2_000_000})
    assert over.status_code == 413 and "LOYALTY_MAX_BODY_BYTES" in over.json()["error"]
    ids = members["member_id"].head(1).tolist()
    for path, n, maximum in (("/churn_risk_batch", 501, 500), ("/next_best_offer_batch", 101, 100)):
        res = service.post(path, {"member_ids": ids * n})
        assert res.status_code == 422 and "member_ids" in res.json()["error"], (path, res.text)
        assert service.post(path, {"member_ids": ids * maximum}).status_code == 200
    assert service.post("/next_best_offer", {"member_id": ids[0]}).status_code == 200  # still serving


def test_overload_is_shed_with_503_and_retry_after_never_a_500_or_a_degraded_answer(
    settings, trained, tmp_path, members
):
    import asyncio

    env = {"LOYALTY_SERVING_THREADS": "1", "LOYALTY_SERVING_QUEUE_LIMIT": "2"}
    svc = Service(settings, tmp_path / "overload.log", **env).start()
    ids = members["member_id"].head(60).tolist()

    async def flood():
        async with httpx.AsyncClient(base_url=svc.url, headers={"X-API-Key": KEY}, timeout=60) as client:
            return await asyncio.gather(*(client.post("/next_best_offer", json={"member_id": m}) for m in ids))

    try:
        answers = asyncio.run(flood())
        after = svc.post("/next_best_offer", {"member_id": ids[0]})
    finally:
        svc.stop()
    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, statuses
    shed = [a for a in answers if a.status_code == 503]
    assert shed and all(a.headers["retry-after"] == "1" and "overloaded" in a.json()["error"] for a in shed)
    served = [a.json() for a in answers if a.status_code == 200]
    assert served and not any(a["degraded"] for a in served)  # admitted requests are answered in full
    assert after.status_code == 200 and not after.json()["degraded"]  # capacity comes back


def test_budget_allocation_respects_budget_stock_and_one_offer_per_member():
    rng = np.random.default_rng(0)
    scored = pd.DataFrame(
        {
            "member_id": np.repeat([f"m{i}" for i in range(200)], 3),
            "offer_id": np.tile(["a", "b", "c"], 200),
            "expected_incremental_value": rng.normal(1, 1, 600),
            "expected_cost": rng.uniform(0.1, 2, 600),
        }
    )
    chosen, summary = decisions.allocate(scored, budget=40.0, stock={"a": 10, "b": 1000, "c": 5})
    assert chosen["member_id"].is_unique and (chosen["expected_incremental_value"] > 0).all()
    assert chosen["expected_cost"].sum() <= 40.0 + 1e-9 and summary["expected_cost"] <= 40.0 + 1e-9
    counts = chosen["offer_id"].value_counts()
    assert counts.get("a", 0) <= 10 and counts.get("c", 0) <= 5
    assert summary["expected_incremental_value"] == pytest.approx(chosen["expected_incremental_value"].sum())
    # greedy by value per cost beats spending the same budget at random
    rand = scored[scored["expected_incremental_value"] > 0].sample(frac=1, random_state=1)
    rand = rand.drop_duplicates("member_id")
    rand = rand[rand["expected_cost"].cumsum() <= 40.0]
    assert summary["expected_incremental_value"] > rand["expected_incremental_value"].sum()


def test_score_batch_cli_allocates_under_budget(settings, trained, tmp_path):
    ids = pd.DataFrame({"member_id": [f"M{i:07d}" for i in range(300)] + ["UNKNOWN-1"]})
    ids.to_parquet(tmp_path / "campaign.parquet")
    out = tmp_path / "alloc.parquet"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "score-batch",
            str(tmp_path / "campaign.parquet"),
            "--budget",
            "5",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOYALTY_DATA_DIR": str(settings.data_dir)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    chosen = pd.read_parquet(out)
    assert len(chosen) > 0 and chosen["member_id"].is_unique and chosen["expected_cost"].sum() <= 5 + 1e-9
    assert "'unknown_member': 1" in proc.stdout
    bad = tmp_path / "bad.csv"
    bad.write_text("member_id\nM1\nbad id with spaces\n")
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "score-batch", str(bad), "--budget", "5"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "LOYALTY_DATA_DIR": str(settings.data_dir)},
    )
    assert proc.returncode == 2 and "invalid member_id at row 1" in proc.stdout


def test_feedback_reaches_the_real_time_features(service, settings, pipeline, members):
    from features.store import serving_rows

    m = members["member_id"].iloc[-1]
    ts = int(pipeline["end"].timestamp()) - 60
    ack = service.post(
        "/feedback",
        {"events": [{"event_id": f"rt-{m}", "member_id": m, "event": "purchase", "ts": ts, "revenue": 12.5}]},
    ).json()
    assert ack == {
        "stored": 1,
        "duplicates": 0,
        "conflicts": 0,
        "conflicting_event_ids": [],
        "pushed_to_feature_store": True,
    }
    row = serving_rows(pipeline["store"], [m], ts + 86400)[0]
    assert row["rt_last_event_type"] == "purchase" and int(row["rt_last_purchase_ts"]) == ts
    assert row["days_since_last_purchase"] == pytest.approx(1.0)


def test_feedback_conflicts_and_late_events_never_move_real_time_features(service, pipeline, members):
    from features.store import serving_rows

    m = members["member_id"].iloc[-2]
    t = int(pipeline["end"].timestamp()) - 3600

    def send(*events):
        body = {"events": [{"member_id": m, **e} for e in events]}
        return service.post("/feedback", body).json()

    def realtime():
        row = serving_rows(pipeline["store"], [m], t + 86400)[0]
        return row["rt_last_event_type"], int(row["rt_last_event_ts"]), int(row["rt_last_purchase_ts"])

    assert send({"event_id": f"p-{m}", "event": "purchase", "ts": t})["stored"] == 1
    assert realtime() == ("purchase", t, t)
    # the same event id with other content: refused, reported, nothing pushed
    ack = send({"event_id": f"p-{m}", "event": "purchase", "ts": t + 900})
    assert ack["stored"] == 0 and ack["conflicts"] == 1 and ack["conflicting_event_ids"] == [f"p-{m}"]
    assert send({"event_id": f"p-{m}", "event": "purchase", "ts": t})["duplicates"] == 1
    assert realtime() == ("purchase", t, t)
    # a click that happened earlier but arrives later changes nothing
    assert send({"event_id": f"c0-{m}", "event": "click", "ts": t - 7200})["stored"] == 1
    assert realtime() == ("purchase", t, t)
    # a later click is the last event, but only a purchase sets the purchase time
    send(
        {"event_id": f"c1-{m}", "event": "click", "ts": t + 60},
        {"event_id": f"r-{m}", "event": "redemption", "ts": t + 30},
    )
    assert realtime() == ("click", t + 60, t)


def test_timestamps_outside_the_programme_are_422_naming_the_field(service, members):
    m = members["member_id"].iloc[0]
    future = int(time.time()) + 3 * 86400
    for path, body, field in [
        ("/next_best_offer", {"member_id": m, "ts": 0}, "ts"),
        ("/next_best_offer", {"member_id": m, "ts": future}, "ts"),
        ("/churn_risk", {"member_id": m, "ts": 5}, "ts"),
        ("/recommendations", {"member_id": m, "ts": future}, "ts"),
        ("/personalized_benefits", {"member_id": m, "ts": 1}, "ts"),
        (
            "/feedback",
            {
                "events": [
                    {"event_id": "ok", "member_id": m, "event": "click", "ts": future - 3 * 86400},
                    {"event_id": "zero", "member_id": m, "event": "click", "ts": 0},
                ]
            },
            "events[1].ts",
        ),
    ]:
        res = service.post(path, body)
        assert res.status_code == 422, (path, res.text)
        assert res.json()["error"].startswith(f"{field}: "), res.text
    assert service.post("/next_best_offer", {"member_id": m, "ts": int(time.time())}).status_code == 200


@pytest.mark.parametrize(
    "path,body",
    [
        ("/feedback", {"events": [{"event_id": "a\u0000b", "member_id": "M1", "event": "click", "ts": 1700000000}]}),
        ("/feedback", {"events": [{"event_id": "e\U0001f600", "member_id": "M1", "event": "click", "ts": 1700000000}]}),
        (
            "/feedback",
            {"events": [{"event_id": "e", "member_id": "M1", "event": "click", "ts": 1700000000, "offer_id": "O\tX"}]},
        ),
        ("/next_best_offer", {"member_id": "M1", "store_id": "S 1"}),
        ("/next_best_offer", {"member_id": "M1", "category": "toys\u0000"}),
        ("/next_best_offer", {"member_id": "M1", "region": "x" * 65}),
        ("/recommendations", {"member_id": "M1", "include_categories": ["\U0001f600"]}),
    ],
)
def test_free_text_ids_are_printable_and_bounded(service, path, body):
    res = service.post(path, body)
    assert res.status_code == 422, res.text


def test_logs_carry_no_raw_member_ids(service, members):
    secret = "PRIVATE-MEMBER-7734"
    service.post("/next_best_offer", {"member_id": secret, "max_results": "three"})
    service.post("/next_best_offer", {"member_id": secret + "!"})  # the id itself is invalid
    service.post("/feedback", {"events": [{"event_id": "x", "member_id": secret, "event": "teleport", "ts": 1}]})
    service.post("/next_best_offer", {"member_id": secret, "ts": 0})
    assert service.post("/next_best_offer", {"member_id": secret}).status_code == 200  # a decision is logged
    time.sleep(1)  # log lines are flushed by the worker
    log = service.tail(10_000_000)
    assert secret not in log and members["member_id"].iloc[0] not in log
    assert "invalid request to /next_best_offer: max_results" in log and "Traceback" not in log


def test_health_endpoints_name_every_component_and_its_status(service, pipeline):
    for path in ("/readyz", "/healthz"):
        res = httpx.get(service.url + path)
        assert res.status_code == 200 and res.headers["content-type"] == "application/json"
        doc = res.json()
        assert doc["ready"] is True and doc["version"]
        assert set(doc["components"]) == {"models", "feature_store", "state_store"}
        assert {job: m["status"] for job, m in doc["components"]["models"].items()} == {
            "cf": "ok",
            "churn": "ok",
            "uplift": "ok",
        }
        assert all(m["version"] for m in doc["components"]["models"].values())
        assert doc["components"]["state_store"] == {"status": "ok"}
        # materialised up to the dataset's end, which is "now" on the dataset clock
        assert doc["components"]["feature_store"] == {
            "status": "ok",
            "materialized_to": pd.Timestamp(pipeline["end"]).isoformat(),
            "age_hours": 0.0,
        }


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicated keys {sorted(k for k in keys if keys.count(k) > 1)}"
    return dict(pairs)


def test_swagger_ui_renders_every_operation(service):
    from tests.conftest import CHROMIUM, page_dom

    # the document parses with duplicated keys rejected (Python's json would keep the last one)
    doc = json.loads(httpx.get(service.url + "/docs.json").text, object_pairs_hook=_no_duplicate_keys)
    assert doc["info"]["version"] == __import__("kernel").__version__
    operations = {(m, path) for path, ops in doc["paths"].items() for m in ops if m in ("get", "post")}
    assert ("post", "/next_best_offer") in operations and len(operations) > 8
    if CHROMIUM is None:
        pytest.skip("chromium not installed (Debian package `chromium`; `make test` installs it where it can)")
    dom = page_dom(service.url + "/")
    assert "Unable to render" not in dom and "Parser error" not in dom
    # Swagger UI renders one block per operation: its method class and its path as data-path
    shown = set(re.findall(r'opblock-(get|post)\b.*?data-path="([^"]+)"', dom, flags=re.S))
    assert operations <= shown, sorted(operations - shown)


def test_a_promotion_is_served_without_restart_under_load(settings, trained, members, tmp_path_factory):
    """A new uplift champion lands while four clients keep asking: no error, no degraded
    answer, the service switches to it by itself, and every answer names the version it used."""
    from mlflow.tracking import MlflowClient

    from kernel.constants import CHAMPION
    from kernel.model_store import use_tracking_store

    svc = Service(settings, tmp_path_factory.mktemp("swap") / "service.log", LOYALTY_MODEL_REFRESH_SECONDS="0.5")
    svc.start()
    use_tracking_store(settings)
    client, name = MlflowClient(), settings.model_name("uplift")
    old = int(client.get_model_version_by_alias(name, CHAMPION).version)
    ids = members.loc[members["consent_personalisation"].astype(bool), "member_id"].head(40).tolist()
    try:
        try:
            with Load(svc, ids) as load:
                time.sleep(2)
                new = int(client.copy_model_version(f"models:/{name}/{old}", name).version)
                client.set_registered_model_alias(name, CHAMPION, str(new))
                seen_new = load.wait_for(new, timeout=30)
                time.sleep(1.5)
        finally:
            client.set_registered_model_alias(name, CHAMPION, str(old))  # later tests expect the trained champion
        answers = load.answers
        assert len(answers) > 50 and all(status == 200 for status, *_ in answers), answers[:5]
        assert not any(degraded for _, degraded, _, _ in answers)
        assert {a[2] for a in answers} == {old, new}
        assert all(a[2] == new for a in answers[seen_new + 8 :])  # in-flight ones may still finish on the old
        assert all(a[3] == {"uplift": a[2]} for a in answers)
        doc = httpx.get(svc.url + "/readyz").json()
        assert doc["components"]["models"]["uplift"]["version"] in (old, new)
        fresh = doc["components"]["feature_store"]
        assert fresh["materialized_to"] and fresh["age_hours"] is not None and fresh["age_hours"] >= 0
        assert "swapped in without restart" in svc.tail(10_000_000)
    finally:
        svc.stop()


@pytest.mark.unit
def test_a_failed_feature_read_is_logged_with_its_cause_and_without_member_ids(caplog):
    """The log names what failed (e.g. a view Feast refuses to serve) so operators can act,
    with the requested member ids replaced: logs carry no raw ids."""
    from concurrent.futures import ThreadPoolExecutor
    from types import SimpleNamespace

    from serving.runtime import DecisionRuntime

    def broken_read(member_ids, ts):
        raise ValueError(f"Feature view 'member_rfm' is in state 'MATERIALIZING' (entity {member_ids[0]})")

    with ThreadPoolExecutor(1) as pool:
        stub = SimpleNamespace(pool=pool, _read=broken_read, settings=SimpleNamespace(feature_timeout_ms=2000.0))
        with caplog.at_level("WARNING", logger="loyalty.serving"):
            assert DecisionRuntime.read_features(stub, ["M0004242"], 0) == (None, True)
    assert "ValueError: Feature view 'member_rfm' is in state 'MATERIALIZING' (entity <member>)" in caplog.text
    assert "M0004242" not in caplog.text
