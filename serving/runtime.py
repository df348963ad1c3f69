"""What the service holds between requests: champion models, the feature store, the catalogue
and the durable state, plus one method per endpoint returning its typed response."""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter as Tally
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import pandas as pd
from prometheus_client import Counter

from features.on_demand import days_since_last_purchase
from features.store import get_store, read_latest, service_views, serving_feature_refs, serving_rows
from features.views import NO_TTL_VIEWS
from kernel import __version__
from kernel.constants import CONTACT_CHANNELS, MEMBER_ID, ONLINE_FEATURE_SERVICE, REALTIME_VIEW, SERVED_JOBS
from kernel.curated import exposures_with_responses, load_curated, read_meta
from kernel.model_store import champion_versions, load_champions, load_estimator
from kernel.settings import Settings
from serving import decisions
from serving.champions import ServedModels, Watcher, swapped
from serving.schemas import (
    Benefit,
    BenefitsResponse,
    ChurnRiskResponse,
    Driver,
    FeedbackAck,
    NextBestOfferResponse,
    OfferDecision,
    RecommendationsResponse,
    RecommendedItem,
    TraceStep,
)
from serving.state import ServingState, StateUnavailable

log = logging.getLogger("loyalty.serving")
# on /metrics: decisions answered while the state store was down, so missing from the audit/OPE log
DECISION_LOG_FAILURES = Counter(
    name="loyalty_decision_log_failures", documentation="decisions answered but not logged (state store down)"
)
WEEK_S = 7 * 86400
REALTIME_FEATURES = [
    "member_realtime:rt_last_event_type",
    "member_realtime:rt_last_event_ts",
    "member_realtime:rt_last_purchase_ts",
]


class DecisionRuntime:
    """``rng`` draws the exploration; by default seeded from ``settings.seed`` so that a decision
    log can be reproduced."""

    def __init__(
        self,
        settings: Settings,
        load_models: bool = True,
        state: ServingState | None = None,
        rng: np.random.Generator | None = None,
    ):
        self.settings = settings
        self.state = state or ServingState(
            settings.serving_state_url, settings.pseudonym_key, table_prefix=settings.serving_state_prefix
        )
        self.store = get_store(settings, serving=True)
        self.feature_refs: list[str] | None = None  # resolved once, at the first read (warm-up)
        self.item_category = load_curated(settings, "items").set_index("item_id")["category_l1"]
        meta = read_meta(settings)
        self.end = pd.Timestamp(meta["end"])
        self.start = pd.Timestamp(meta["start"]) if meta.get("start") else self._first_join()
        self.pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="features")
        self.rng = rng if rng is not None else np.random.default_rng(settings.seed)
        # the champions, read once per request (a promotion replaces the whole bundle: see refresh_models)
        self.served = ServedModels()
        self.use_catalogue(load_curated(settings, "offers"))
        if load_models:
            self.load_models()
        self.item_category_of = self.item_category.to_dict()
        self._warm_up()

    # ------------------------------------------------------------------ setup
    @property
    def models(self) -> dict:
        return self.served.models

    def load_models(self) -> None:
        """Load every served ``champion``; a missing one degrades its endpoint, never crashes the service."""
        self.served = ServedModels.build(load_champions(self.settings, SERVED_JOBS), self.offers, self.item_category)

    def refresh_models(self) -> list[str]:
        """Swap in every champion whose registry alias moved since it was loaded (the new model
        is loaded beside the old, then the bundle is replaced in one assignment); the jobs swapped."""
        current = champion_versions(self.settings, SERVED_JOBS)

        def load(job: str, version: int):
            return load_estimator(self.settings.model_name(job), str(version))

        self.served, moved = swapped(self.served, current, load, self.offers, self.item_category)
        return moved

    def watch_models(self, interval: float) -> Watcher | None:
        """Poll the registry every ``interval`` seconds (0: never) on a daemon thread."""
        return Watcher(self.refresh_models, interval).start() if interval > 0 else None

    def use_catalogue(self, offers: pd.DataFrame) -> None:
        """Serve this offer catalogue: its arrays are prepared once here, so that the request
        path only compares and indexes."""
        self.offers = offers
        self.offer_rules = decisions.OfferRules.from_offers(offers)
        self.offer_ids = self.offer_rules.offer_ids
        self.offer_category = offers["category_l1"].to_numpy(dtype=object)
        self.base_stock = offers["stock"].to_numpy(dtype=float)
        self.offer_position = {o: i for i, o in enumerate(self.offer_ids)}
        self.benefits = decisions.BenefitCatalogue.from_offers(offers)
        self.default_ranking = self._default_ranking()  # the non-personalised order
        self.default_positions = [self.offer_position[o] for o in self.default_ranking["offer_id"]]
        self.default_rates = self.default_ranking["redemption_rate"].to_numpy(dtype=float)
        if self.served.models:  # the offer-pair encoder belongs to both the model and the catalogue
            self.served = ServedModels.build(self.served.as_champions(), offers, self.item_category)

    def _warm_up(self) -> None:
        """First reads load the Feast registry and connections: do it before taking traffic."""
        for _ in range(3):
            try:
                self._read(["__warm_up__"], self.now(None))
            except Exception as err:  # readiness reports it
                log.warning("feature store warm-up failed: %s", type(err).__name__)

    def _first_join(self) -> pd.Timestamp:
        """The programme's first data for datasets validated before ``meta.json`` recorded it."""
        return load_curated(self.settings, "members")["join_date"].min()

    def _default_ranking(self) -> pd.DataFrame:
        """Non-personalised order: offers by historical redemption rate, cheaper first on ties."""
        try:
            rate = exposures_with_responses(self.settings).groupby("offer_id")["redeemed"].mean()
        except FileNotFoundError:
            rate = pd.Series(dtype=float)
        out = self.offers.assign(redemption_rate=self.offers["offer_id"].map(rate).fillna(0.0))
        return out.sort_values(["redemption_rate", "cost"], ascending=[False, True], kind="stable")

    def now(self, ts: int | None) -> int:
        if ts is not None:
            return int(ts)
        return int(self.end.timestamp()) if self.settings.serving_clock == "dataset" else int(time.time())

    def ready(self) -> dict:
        """Each component and its status (what ``/readyz`` and ``/healthz`` answer); ``ready`` if all
        are ok. A model never trained (``default``: e.g. no campaigns, no offer model) is served by
        its documented default and does not hold readiness back; one that fails to load does."""
        served = self.served
        models = {
            job: {"status": "ok", "version": served.versions.get(job)}
            if job in served.models
            else {
                "status": "default" if job in served.untrained else "missing",
                "error": served.errors.get(job, "not loaded"),
            }
            for job in SERVED_JOBS
        }
        _, degraded = self.read_features(["__readiness_probe__"], self.now(None))
        components = {
            "models": models,
            "feature_store": {"status": "unavailable" if degraded else "ok", **self.feature_freshness()},
            "state_store": {"status": "ok" if self.state.ping() else "unavailable"},
        }
        ready = all(m["status"] in ("ok", "default") for m in models.values())
        ready = ready and components["feature_store"]["status"] == components["state_store"]["status"] == "ok"
        return {"ready": ready, "version": __version__, "components": components}

    def feature_freshness(self) -> dict:
        """The newest snapshot materialised into the online store, and its age on the serving
        clock (from Feast's cached registry: no store read)."""
        try:
            ends = [
                end
                for fv in self.store.list_feature_views(allow_cache=True)
                if fv.name not in NO_TTL_VIEWS
                for _, end in fv.materialization_intervals
            ]
        except Exception as err:  # the registry copy in use stays; readiness reports the store itself
            return {"freshness_error": type(err).__name__}
        if not ends:
            return {"materialized_to": None, "age_hours": None}
        newest = pd.Timestamp(max(ends))
        newest = newest.tz_convert(None) if newest.tzinfo else newest
        age = (pd.Timestamp(self.now(None), unit="s") - newest).total_seconds() / 3600
        return {"materialized_to": newest.isoformat(), "age_hours": round(age, 2)}

    # ------------------------------------------------------------------ features
    def _read(self, member_ids: list[str], ts: int) -> dict[str, dict]:
        rows = serving_rows(self.store, member_ids, ts, self._refs())
        return {m: row for m, row in zip(member_ids, rows, strict=True)}

    def read_features(self, member_ids: list[str], ts: int) -> tuple[dict[str, dict] | None, bool]:
        """Online features by member id, or (None, True) if the store fails or is slower than the timeout."""
        future = self.pool.submit(self._read, member_ids, ts)
        try:
            return future.result(timeout=self.settings.feature_timeout_ms / 1000.0), False
        except FutureTimeout:
            log.warning("online feature read timed out after %.0f ms", self.settings.feature_timeout_ms)
        except Exception as err:  # any store failure degrades, never 500
            message = str(err)  # which store or view failed; member ids stay out of logs
            for member_id in member_ids:
                message = message.replace(member_id, "<member>")
            log.warning("online feature read failed: %s: %.300s", type(err).__name__, message)
        return None, True

    def _row(self, feats: dict[str, dict] | None, member_id: str, opted_out: bool) -> dict | None:
        row = (feats or {}).get(member_id)
        if row is None or row.get("tier") is None:
            return None  # unknown to the feature store: cold start
        out = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in row.items()}
        if opted_out:  # honoured at once, before the consent snapshot catches up
            out.update({f"consent_{c}": False for c in ("personalisation", *CONTACT_CHANNELS)})
        if out.get("days_since_last_purchase") is not None:
            out["recency_days"] = out["days_since_last_purchase"]  # fresher than the snapshot's
        return out

    def member_state(self, member_id: str, ts: int) -> dict | None:
        """Opt-out, contacts this week and redeemed offers; None if the state store is down
        (callers then assume opted out and nothing left to offer: never the unsafe side)."""
        try:
            snap = self.state.member_snapshot(member_id, ts - WEEK_S)
        except StateUnavailable as err:
            log.warning("%s", err)
            return None
        return {
            "opted_out": snap["opted_out"],
            "contacts": snap["contacts"],
            "redeemed": snap["redeemed"],
            "stock": self._stock(snap["redemptions_by_offer"]),
        }

    def stock_left(self) -> pd.Series:
        return pd.Series(self._stock(self.state.redemptions_by_offer()), index=self.offer_ids)

    def _stock(self, redemptions_by_offer: dict[str, int]) -> np.ndarray:
        """Catalogue stock minus redemptions, in catalogue order."""
        left = self.base_stock.copy()
        for offer, used in redemptions_by_offer.items():
            i = self.offer_position.get(offer)
            if i is not None:
                left[i] -= used
        return left

    def _removed_by(self, member: dict | None, now: pd.Timestamp, mstate: dict) -> list:
        """Per catalogue offer, the eligibility rule that removes it for this member, or None."""
        tier = (member or {}).get("tier")
        return self.offer_rules.removed_by(tier, now, mstate["stock"], mstate["redeemed"])

    # ------------------------------------------------------------------ endpoints
    def next_best_offer(
        self,
        member_id: str,
        channel: str,
        ts: int | None,
        max_results: int,
        category: str | None = None,
        context: dict | None = None,
    ) -> NextBestOfferResponse:
        served = self.served  # one bundle of champions for the whole request
        ts = self.now(ts)
        now = pd.Timestamp(ts, unit="s")
        feats, degraded = self.read_features([member_id], ts)
        mstate = self.member_state(member_id, ts)
        member = self._row(feats, member_id, mstate is None or mstate["opted_out"])
        answer = NextBestOfferResponse(
            decision_id=str(uuid.uuid4()),
            member_id=member_id,
            channel=channel,
            degraded=degraded or mstate is None,
            cold_start=member is None and not degraded,
            personalised=False,
            offers=[],
            trace=[TraceStep(rule="models", removed=[], versions=served.used("uplift"))],
            model_version=served.versions.get("uplift"),
        )
        context = {k: v for k, v in (context or {}).items() if v is not None}
        if mstate is None:  # opt-out, caps and stock cannot be checked: offer nothing
            answer.trace.append(TraceStep(rule="state_unavailable", removed="all"))
            answer.notes = ["serving state unavailable (opt-out, contact caps, stock unknown): nothing offered"]
            return self._log(answer, context, as_of=ts)
        notes: list[str] = []
        if degraded:
            notes.append("feature store unavailable: non-personalised default")
        elif member is None:
            notes.append("unknown member: non-personalised default")
        # contact rules first: they hold whatever the model says
        if channel in CONTACT_CHANNELS:
            if member is None or member.get(f"consent_{channel}") is not True:
                # unknown consent (new member, store down) counts as no consent for outbound contact
                answer.trace.append(TraceStep(rule="channel_consent", removed="all"))
                answer.notes = notes + [f"no known consent for {channel}: nothing may be sent"]
                return self._log(answer, context, as_of=ts)
        # every capped channel, in-app included: its cap is a setting like the outbound ones
        cap = self.settings.contact_caps_per_week.get(channel)
        sent = mstate["contacts"].get(channel, 0)
        if cap is not None and sent >= cap:
            answer.trace.append(TraceStep(rule="contact_cap", removed="all", sent_this_week=sent, cap=cap))
            answer.notes = [f"contact cap reached: {sent}/{cap} {channel} contacts in 7 days"]
            return self._log(answer, context, as_of=ts)
        removed = self._removed_by(member, now, mstate)
        answer.trace += [TraceStep(**step) for step in decisions.trace_removed(self.offer_ids, removed)]
        eligible = np.array([r is None for r in removed])
        if category:
            off_page = eligible & (self.offer_category != category)
            answer.trace.append(TraceStep(rule="category_page", removed=sorted(self.offer_ids[off_page])))
            eligible &= ~off_page
        personalise = member is not None and bool(member.get("consent_personalisation")) and "uplift" in served.models
        if member is not None and not member.get("consent_personalisation"):
            notes.append("no consent for personalisation: non-personalised default")
        elif member is not None and "uplift" not in served.models:
            notes.append("no offer model (none trained, e.g. no campaigns yet): non-personalised default")
        candidates: list[dict] = []
        held_out: list[OfferDecision] = []
        if personalise:
            # every offer of the catalogue in one matrix, one predict per booster; then arrays only
            scored = decisions.score_member(
                served.models["uplift"], served.pair_encoder, member, self.settings.margin_rate
            )
            value = scored["expected_incremental_value"]
            negative = eligible & (value <= 0)
            if negative.any():
                answer.trace.append(
                    TraceStep(rule="non_positive_expected_value", removed=sorted(self.offer_ids[negative]))
                )
            positive = np.flatnonzero(eligible & (value > 0))
            ranked = positive[np.argsort(-value[positive], kind="stable")]
            order, propensity, explored = decisions.choose_order(
                len(ranked), max_results, self.settings.exploration_rate, self.rng
            )
            answer.personalised, answer.propensity, answer.explored = True, propensity, explored
            # the offers this policy could have shown (its support), with their scores, so that
            # re-ranking policies can be evaluated off-policy from the decision log
            candidates = [
                {
                    "offer_id": self.offer_ids[i],
                    "value": round(float(value[i]), 6),
                    "p_redeem": round(float(scored["p_redeem"][i]), 6),
                }
                for i in ranked
            ]
            answer.offers = [self._offer_decision(scored, int(ranked[j]), member) for j in order]
            held_out = self._control_group(answer)
        else:
            default = [
                (i, rate) for i, rate in zip(self.default_positions, self.default_rates, strict=True) if eligible[i]
            ]
            answer.offers = [
                OfferDecision(offer_id=self.offer_ids[i], score=round(float(rate), 4), reason_codes=["popular_offer"])
                for i, rate in default[:max_results]
            ]
            answer.propensity = 1.0 if answer.offers else None
        answer.notes = notes
        return self._log(answer, context, candidates, ts, held_out)

    def _control_group(self, answer: NextBestOfferResponse) -> list[OfferDecision]:
        """Hold a random ``control_share`` of personalised decisions out (nothing to send), so that
        what the service sends can be measured, and learned from, against members it did not
        reach. The logged propensity is that of the arm as well as of the offer; returns the
        offers held out (logged, not answered)."""
        share = self.settings.control_share
        if share <= 0 or not answer.offers:
            return []
        if self.rng.random() >= share:
            answer.propensity = answer.propensity * (1 - share)
            return []
        held_out, answer.offers = answer.offers, []
        answer.control, answer.propensity = True, answer.propensity * share
        answer.trace.append(TraceStep(rule="control_group", removed="all"))
        return held_out

    def _offer_decision(self, scored: dict, i: int, member: dict) -> OfferDecision:
        row = {name: values[i] for name, values in scored.items()}
        value = round(float(row["expected_incremental_value"]), 4)
        return OfferDecision(
            offer_id=row["offer_id"],
            score=value,
            expected_incremental_value=value,
            p_redeem=round(float(row["p_redeem"]), 4),
            uplift=None if np.isnan(row["uplift"]) else round(float(row["uplift"]), 4),
            order_value=round(float(row["order_value"]), 2),
            reason_codes=decisions.reason_codes(row, member),
        )

    def churn_risk(self, member_ids: list[str], ts: int | None) -> list[ChurnRiskResponse]:
        ts = self.now(ts)
        feats, degraded = self.read_features(member_ids, ts)
        served = self.served
        model = served.models.get("churn")
        try:
            opted_out = self.state.opted_out_many(member_ids)
        except StateUnavailable:  # consent only gates personalisation, not the risk score
            opted_out = set(member_ids)
        rows = [self._row(feats, m, m in opted_out) for m in member_ids]
        known = [i for i, r in enumerate(rows) if r is not None]
        out = [
            ChurnRiskResponse(
                member_id=m,
                degraded=degraded or model is None,
                cold_start=rows[i] is None and not degraded,
                churn_probability=None,
                risk_band="unknown",
                top_drivers=[],
                health_quadrant=None,
                suggested_action="none: no data for this member yet" if not degraded else "retry later",
                model_version=served.versions.get("churn"),
            )
            for i, m in enumerate(member_ids)
        ]
        if known and model is not None:
            explained = model.explain_records([rows[i] for i in known])
            for j, i in enumerate(known):
                e = explained[j]
                out[i].churn_probability = round(float(e["churn_probability"]), 4)
                out[i].risk_band = e["risk_band"]
                out[i].top_drivers = [Driver(**d) for d in e["top_drivers"]]
                out[i].suggested_action = e["suggested_action"]
                out[i].health_quadrant = rows[i].get("health_quadrant")
        return out

    def recommendations(
        self,
        member_id: str,
        k: int,
        ts: int | None,
        include_categories: list[str] | None,
        exclude_categories: list[str] | None,
        history: list[str] | None = None,
    ) -> RecommendationsResponse:
        ts = self.now(ts)
        feats, degraded = self.read_features([member_id], ts)
        try:
            opted_out, state_down = self.state.opted_out(member_id), False
        except StateUnavailable:  # opt-out unknown: popularity only
            opted_out, state_down = True, True
        member = self._row(feats, member_id, opted_out)
        served = self.served
        model = served.models.get("cf")
        answer = RecommendationsResponse(
            member_id=member_id,
            degraded=degraded or state_down or model is None,
            items=[],
            source=None,
            cold_start=False,
            model_version=served.versions.get("cf"),
        )
        if model is None:
            return answer
        cats = served.cf_item_category
        allowed = np.ones(len(cats), dtype=bool)
        if include_categories:
            allowed &= np.isin(cats, include_categories)
        if exclude_categories:
            allowed &= ~np.isin(cats, exclude_categories)
        segments = {member_id: member["tier"]} if member else {}
        personal = member is None or bool(member.get("consent_personalisation"))
        rec = model.recommend(
            [member_id] if personal else ["__anonymous__"],
            k=k,
            exclude_owned=True,
            segments=segments if personal else {"__anonymous__": None},
            histories={member_id: history} if history else None,
            allowed_items=allowed,
        ).iloc[0]
        categories = self.item_category.reindex(rec["item_ids"])
        answer.items = [
            RecommendedItem(item_id=i, score=s, category=None if pd.isna(c) else c)
            for i, s, c in zip(rec["item_ids"], rec["scores"], categories, strict=True)
        ]
        answer.source = rec["source"] if personal else "popularity (no personalisation consent)"
        answer.cold_start = member_id not in model.member_index_
        return answer

    def personalized_benefits(self, member_id: str, max_results: int, ts: int | None) -> BenefitsResponse:
        served = self.served
        models = TraceStep(rule="models", removed=[], versions=served.used("cf"))
        ts = self.now(ts)
        feats, degraded = self.read_features([member_id], ts)
        mstate = self.member_state(member_id, ts)
        answer = BenefitsResponse(
            member_id=member_id,
            degraded=degraded or mstate is None,
            cold_start=False,
            personalised=False,
            benefits=[],
            trace=[],
        )
        if mstate is None:  # stock and redemptions unknown: offer nothing
            answer.trace = [models, TraceStep(rule="state_unavailable", removed="all")]
            return answer
        member = self._row(feats, member_id, mstate["opted_out"])
        answer.cold_start = member is None and not degraded
        removed = self._removed_by(member, pd.Timestamp(ts, unit="s"), mstate)
        answer.trace = [models] + [TraceStep(**step) for step in decisions.trace_removed(self.offer_ids, removed)]
        columns = self.benefits.columns
        if member is None or not member.get("consent_personalisation"):
            default = [i for i in self.default_positions if removed[i] is None][:max_results]
            answer.benefits = [
                _benefit({c: v[i] for c, v in columns.items()}, 0.0, ["popular_benefit"]) for i in default
            ]
            return answer
        affinity: dict[str, float] = {}
        if "cf" in served.models:
            rec = served.models["cf"].recommend([member_id], k=20, exclude_owned=False).iloc[0]
            cats = [c for c in (self.item_category_of.get(i) for i in rec["item_ids"]) if c is not None]
            affinity = {c: n / len(cats) for c, n in Tally(cats).items()}  # shares of the known categories
        shown, unjustified = decisions.shortlist(self.benefits.rank(member, affinity, removed), max_results)
        if unjustified:
            answer.trace.append(TraceStep(rule="no_reason_to_show", removed=unjustified))
        answer.personalised = True
        answer.benefits = [_benefit(r, r["score"], r["reasons"]) for r in shown]
        return answer

    def allocate_campaign(self, member_ids: list[str], ts: int | None, budget: float) -> tuple[pd.DataFrame, dict]:
        """A campaign for ``member_ids``: :meth:`score_batch`, then the best pairs within ``budget``
        and the stock left (:func:`serving.decisions.allocate`). Returns the chosen pairs and the
        allocation summary with the members left out by reason (``skipped``)."""
        pairs, skipped = self.score_batch(member_ids, ts)
        stock = self.stock_left().clip(lower=0).astype(int).to_dict()
        chosen, summary = decisions.allocate(pairs, budget, stock)
        return chosen, summary | {"skipped": skipped}

    def score_batch(self, member_ids: list[str], ts: int | None, chunk: int = 50_000) -> tuple[pd.DataFrame, dict]:
        """Eligible (member, offer) pairs with expected value, for campaign lists and budget allocation.

        Same rules and values as :meth:`next_best_offer`: consent for personalisation, tier,
        validity, stock and already-redeemed offers; members left out are counted by reason.
        Features are read in bulk (:meth:`_batch_read`) and every pair of a chunk is scored by
        one predict per booster (:func:`serving.decisions.score_pairs`).
        """
        served = self.served  # one model for the whole list, even if a promotion lands meanwhile
        if "uplift" not in served.models:
            raise RuntimeError(f"no uplift/propensity champion: {served.errors.get('uplift')}")
        ts = self.now(ts)
        now = pd.Timestamp(ts, unit="s")
        stock = self._stock(self.state.redemptions_by_offer())
        skipped = {"unknown_member": 0, "no_personalisation_consent": 0, "feature_store_unavailable": 0}
        parts = []
        for lo in range(0, len(member_ids), chunk):
            ids = member_ids[lo : lo + chunk]
            feats = self._batch_read(ids, ts)
            if feats is None:
                skipped["feature_store_unavailable"] += len(ids)
                continue
            known = feats[feats["tier"].notna()]
            skipped["unknown_member"] += len(ids) - len(known)
            opted_out = known["member_id"].isin(self.state.opted_out_many(known["member_id"].tolist()))
            consent = known["consent_personalisation"].fillna(False).astype(bool) & ~opted_out
            skipped["no_personalisation_consent"] += int((~consent).sum())
            known = known[consent.to_numpy()].reset_index(drop=True)
            if known.empty:
                continue
            known["recency_days"] = known["days_since_last_purchase"].fillna(known["recency_days"])
            scored = decisions.score_pairs(
                served.models["uplift"], served.pair_encoder, known, self.settings.margin_rate
            )
            # eligibility by tier (what differs between members before their own redemptions)
            tiers, codes = np.unique(known["tier"].astype(str).to_numpy(), return_inverse=True)
            allowed = np.array([[r is None for r in self.offer_rules.removed_by(t, now, stock, set())] for t in tiers])
            parts.append(scored[allowed[codes].ravel()])
        pairs = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["member_id", "offer_id"])
        if len(pairs):  # already-redeemed offers: one bulk state query
            redeemed = self.state.redeemed_pairs(pairs["member_id"].unique().tolist())
            if redeemed:
                keep = [(m, o) not in redeemed for m, o in zip(pairs["member_id"], pairs["offer_id"], strict=True)]
                pairs = pairs[keep]
        return pairs.reset_index(drop=True), skipped

    def _batch_read(self, ids: list[str], ts: int) -> pd.DataFrame | None:
        """The service's features for many members, in bulk: the latest materialised snapshot
        (what the online store was loaded with) from the offline tables, and, for the members
        the service has received events about since, the pushed real-time view from the online
        store (only pushes change it there). Batch jobs wait for the stores instead of
        degrading; a failure skips the chunk (counted)."""
        try:
            as_of = min(pd.Timestamp(ts, unit="s"), self.end)
            frame = read_latest(
                self.settings.offline_dir, service_views(self.store, ONLINE_FEATURE_SERVICE), as_of, ids
            )
            pushed = self.state.members_with_events(ids)
            if pushed:
                rows = np.flatnonzero(frame[MEMBER_ID].isin(pushed).to_numpy())
                live = self.store.get_online_features(
                    features=[r for r in self._refs() if r.startswith(REALTIME_VIEW + ":")],
                    entity_rows=[{MEMBER_ID: m} for m in frame[MEMBER_ID].to_numpy()[rows]],
                ).to_dict()
                for col, values in live.items():
                    if col != MEMBER_ID:
                        column = frame[col].astype(object)
                        column.iloc[rows] = values
                        frame[col] = column
        except Exception as err:
            log.warning("batch feature read failed: %s", type(err).__name__)
            return None
        frame["request_ts"] = int(ts)
        frame["days_since_last_purchase"] = days_since_last_purchase(frame).to_numpy()
        return frame

    def _refs(self) -> list[str]:
        if self.feature_refs is None:
            self.feature_refs = serving_feature_refs(self.store)
        return self.feature_refs

    def feedback(self, events: list[dict]) -> FeedbackAck:
        """Store events durably; push the new ones (never repeats or conflicts) to the real-time features."""
        result = self.state.add_feedback(events)
        if result.conflicting_ids:
            log.warning("%d feedback events refused: event_id known with other content", len(result.conflicting_ids))
        return FeedbackAck(
            stored=result.stored,
            duplicates=result.duplicates,
            conflicts=len(result.conflicting_ids),
            conflicting_event_ids=result.conflicting_ids,
            pushed_to_feature_store=self._push(result.new_events),
        )

    # ------------------------------------------------------------------ helpers
    def _push(self, events: list[dict]) -> bool:
        """Real-time features of the members these events concern, to the Feast push source; best effort.

        They only move forward: the last event is the latest by event time (a late-arriving older
        event changes nothing), and the last purchase time is the latest ``purchase`` event's.
        """
        if not events:
            return True
        df = pd.DataFrame(events)
        latest = df.sort_values("ts", kind="stable").groupby("member_id").tail(1).set_index("member_id")
        purchases = df[df["event"] == "purchase"].groupby("member_id")["ts"].max()
        try:
            current = self.store.get_online_features(
                features=REALTIME_FEATURES, entity_rows=[{"member_id": m} for m in latest.index]
            ).to_df()
            current = current.set_index("member_id").reindex(latest.index)
            known_ts = pd.to_numeric(current["rt_last_event_ts"], errors="coerce").fillna(-1).astype("int64")
            newer = latest["ts"].astype("int64") > known_ts
            event_ts = latest["ts"].astype("int64").where(newer, known_ts)
            known_purchase = pd.to_numeric(current["rt_last_purchase_ts"], errors="coerce").fillna(0).astype("int64")
            purchase_ts = np.maximum(known_purchase, purchases.reindex(latest.index).fillna(0).astype("int64"))
            push = pd.DataFrame(
                {
                    "member_id": latest.index.astype(str),
                    "event_timestamp": pd.to_datetime(event_ts.to_numpy(), unit="s", utc=True),
                    "rt_last_event_type": latest["event"].where(newer, current["rt_last_event_type"]).astype(str),
                    "rt_last_event_ts": event_ts.to_numpy(),
                    "rt_last_purchase_ts": purchase_ts.to_numpy(),
                }
            )
            self.store.push("member_events_push", push)
        except Exception as err:  # the events are durable already; features catch up later
            log.warning("push to feature store failed: %s", type(err).__name__)
            return False
        try:
            self.state.mark_pushed([e["event_id"] for e in events])
        except StateUnavailable:  # only a bookkeeping flag: the events are stored and pushed
            log.warning("could not mark %d events as pushed", len(events))
        return True

    def ts_window(self) -> tuple[int, int]:
        """Plausible event and decision times: from the programme's first data to a day past the wall clock."""
        return int(self.start.timestamp()), int(time.time()) + 86400

    def _log(
        self,
        answer: NextBestOfferResponse,
        context: dict,
        candidates: list[dict] | None = None,
        as_of: int | None = None,
        held_out: list[OfferDecision] | None = None,
    ) -> NextBestOfferResponse:
        """Write the decision to the durable log (with its request context, the time it was made
        for, the candidates the policy chose from and, for the control group, the offers held
        out: none of which the answer carries) and return the answer."""
        shown = held_out or answer.offers
        first = shown[0].offer_id if shown else None
        try:
            self.state.log_decision(
                answer.decision_id,
                as_of,
                answer.member_id,
                "next_best_offer",
                answer.channel,
                first,
                answer.propensity,
                answer.personalised,
                answer.degraded,
                {
                    "offers": [o.offer_id for o in shown],
                    "control": answer.control,
                    "as_of": as_of,
                    "propensity": answer.propensity,
                    "trace": [t.model_dump(exclude_none=True) for t in answer.trace],
                    "context": context,
                    "candidates": candidates or [],
                },
            )
        except StateUnavailable as err:  # the answer stands; the audit log has a gap, which is counted
            DECISION_LOG_FAILURES.inc()
            log.warning("decision %s not logged: %s", answer.decision_id, err)
        log.info(
            "decision %s member=%s offers=%d degraded=%s",
            answer.decision_id,
            self.state.member_key(answer.member_id),
            len(answer.offers),
            answer.degraded,
        )
        return answer


def _benefit(r: dict, score: float, reasons: list[str]) -> Benefit:
    return Benefit(
        offer_id=r["offer_id"],
        kind=r["kind"],
        scene_dimension=r["scene_dimension"],
        value_dimension=r["value_dimension"],
        category=r["category_l1"] if isinstance(r["category_l1"], str) else None,  # None: every category
        cost=float(r["cost"]),
        score=round(float(score), 4),
        reasons=list(reasons),
    )
