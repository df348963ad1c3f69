"""Buy-till-you-die models: BG/NBD (Fader, Hardie & Lee, 2005) and Gamma-Gamma spend (Fader & Hardie, 2013).

A small fitted implementation instead of a library: the maintained one (pymc-marketing)
brings PyMC/PyTensor and the classic ``lifetimes`` is archived. The formulas are checked
against the published CDNOW reference values in ``tests/test_estimators.py``.

Inputs per member, in one time unit (days here): ``x`` repeat purchases (purchase days after
the first), ``t_x`` time from the first to the last purchase, ``T`` time from the first
purchase to the cutoff; for spend, the mean value ``m`` of the repeat purchases.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import betaln, gammaln, hyp2f1

MIN_REPEATERS = 20  # fewer members with repeat purchases identify no spend distribution


def rfm_summary(transactions: pd.DataFrame, cutoff: pd.Timestamp) -> pd.DataFrame:
    """(member_id -> x, t_x, T, m, spend: all purchases' value) from ``transactions`` (member_id,
    ts, amount) before ``cutoff``, with purchases counted per day as the models assume (several
    baskets a day are one purchase)."""
    ts = pd.to_datetime(transactions["ts"])
    ts = ts.dt.tz_convert(None) if ts.dt.tz is not None else ts  # compared in UTC, without zone
    cutoff = pd.Timestamp(cutoff)
    cutoff = cutoff.tz_convert(None) if cutoff.tzinfo is not None else cutoff
    tx = transactions.assign(ts=ts)[ts < cutoff]
    days = (
        tx.assign(day=tx["ts"].dt.floor("D")).groupby(["member_id", "day"], observed=True)["amount"].sum().reset_index()
    )
    first = days.groupby("member_id")["day"].transform("min")
    days["repeat"] = days["day"] > first
    g = days.groupby("member_id")
    out = pd.DataFrame(
        {
            "x": g["repeat"].sum().astype(float),
            "t_x": (g["day"].max() - g["day"].min()).dt.days.astype(float),
            "T": (cutoff.floor("D") - g["day"].min()).dt.days.astype(float),
        }
    )
    repeat_spend = days[days["repeat"]].groupby("member_id")["amount"].mean()
    out["m"] = repeat_spend.reindex(out.index).fillna(0.0)
    out["spend"] = g["amount"].sum()
    return out


class BetaGeo:
    """BG/NBD: purchases at a Poisson rate with gamma(r, alpha) heterogeneity; after each purchase
    the member drops out with a probability distributed beta(a, b)."""

    def fit(self, x, t_x, T, weights=None) -> BetaGeo:
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=float)
        scale = max(float(T.max()), 1.0) / 10  # time rescaled for the optimiser; alpha scales back

        def nll(log_params):
            return -(w * self._log_likelihood(np.exp(log_params), x, t_x / scale, T / scale)).sum() / w.sum()

        res = minimize(nll, np.zeros(4), method="L-BFGS-B", bounds=[(-10, 10)] * 4)
        r, alpha, a, b = np.exp(res.x)
        self.params_ = {"r": r, "alpha": alpha * scale, "a": a, "b": b}
        self.converged_ = bool(res.success)
        return self

    @staticmethod
    def _log_likelihood(params, x, t_x, T) -> np.ndarray:
        r, alpha, a, b = params
        head = gammaln(r + x) - gammaln(r) + r * np.log(alpha) - betaln(a, b)
        stay = betaln(a, b + x) - (r + x) * np.log(alpha + T)
        repeat = x > 0
        left = np.where(repeat, betaln(a + 1, np.where(repeat, b + x - 1, b)) - (r + x) * np.log(alpha + t_x), -np.inf)
        return head + np.logaddexp(stay, left)

    def _drop_odds(self, x, t_x, T) -> np.ndarray:
        p = self.params_
        x, t_x, T = (np.asarray(v, dtype=float) for v in (x, t_x, T))
        repeat = x > 0
        log_odds = (
            np.log(p["a"])
            - np.log(np.where(repeat, p["b"] + x - 1, 1.0))
            + (p["r"] + x) * (np.log(p["alpha"] + T) - np.log(p["alpha"] + t_x))
        )
        return np.where(repeat, np.exp(np.minimum(log_odds, 700)), 0.0)

    def p_alive(self, x, t_x, T) -> np.ndarray:
        """P(still active at ``T`` | history)."""
        return 1.0 / (1.0 + self._drop_odds(x, t_x, T))

    def expected_purchases(self, t, x, t_x, T) -> np.ndarray:
        """E[purchases in (T, T + t] | history]."""
        p = self.params_
        r, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
        x, T = np.asarray(x, dtype=float), np.asarray(T, dtype=float)
        z = t / (alpha + T + t)
        head = (a + b + x - 1) / (a - 1)
        body = 1 - ((alpha + T) / (alpha + T + t)) ** (r + x) * hyp2f1(r + x, b + x, a + b + x - 1, z)
        return head * body / (1.0 + self._drop_odds(x, t_x, T))

    def expected_purchases_new(self, t) -> np.ndarray:
        """E[purchases in (0, t]] for a member who has just made the first purchase."""
        p = self.params_
        r, alpha, a, b = p["r"], p["alpha"], p["a"], p["b"]
        t = np.asarray(t, dtype=float)
        return (a + b - 1) / (a - 1) * (1 - (alpha / (alpha + t)) ** r * hyp2f1(r, b, a + b - 1, t / (alpha + t)))

    def p_no_purchase_new(self, t) -> np.ndarray:
        """P(no purchase in (0, t]) for a member who has just made the first purchase."""
        p = self.params_
        return (p["alpha"] / (p["alpha"] + np.asarray(t, dtype=float))) ** p["r"]


class GammaGamma:
    """Gamma-Gamma: each member's purchase values are gamma(p, nu) around a mean that varies
    between members (nu ~ gamma(q, gamma)); independent of the purchase rate."""

    def fit(self, x, m) -> GammaGamma:
        x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
        keep = (x > 0) & (m > 0)
        x, m = x[keep], m[keep]
        if len(m) < MIN_REPEATERS:
            raise ValueError(f"Gamma-Gamma needs at least {MIN_REPEATERS} members with repeat purchases, not {len(m)}")
        scale = float(np.median(m))  # spend rescaled for the optimiser

        def nll(log_params):
            p, q, g = np.exp(log_params)
            ms = m / scale
            ll = (
                gammaln(p * x + q)
                - gammaln(p * x)
                - gammaln(q)
                + q * np.log(g)
                + (p * x - 1) * np.log(ms)
                + p * x * np.log(x)
                - (p * x + q) * np.log(x * ms + g)
            )
            return -ll.mean()

        res = minimize(nll, np.zeros(3), method="L-BFGS-B", bounds=[(-10, 10)] * 3)
        p, q, g = np.exp(res.x)
        self.params_ = {"p": p, "q": q, "gamma": g * scale}
        self.converged_ = bool(res.success)
        return self

    def expected_spend(self, x, m) -> np.ndarray:
        """E[value of a purchase | x repeat purchases of mean value m]; the population mean for x = 0."""
        p, q, g = self.params_["p"], self.params_["q"], self.params_["gamma"]
        x, m = np.asarray(x, dtype=float), np.asarray(m, dtype=float)
        return p * (g + x * m) / (p * x + q - 1)


class BuyTillYouDie:
    """BG/NBD and Gamma-Gamma fitted together on :func:`rfm_summary` rows, then scored for any
    members of the same cutoff (so a fit on a sample scores every partition of the programme)."""

    def fit(self, summary: pd.DataFrame, max_fit_members: int | None = None) -> BuyTillYouDie:
        """``max_fit_members``: fit on a fixed random sample of this many rows (four parameters
        need no more)."""
        # rows in one canonical order: the same members give the same fit however they are
        # listed (a partitioned build concatenates them differently; the optimiser's tolerance shows)
        summary = summary.sort_values(["x", "t_x", "T", "m", "spend"], kind="stable")
        x, t_x, T = summary["x"].to_numpy(), summary["t_x"].to_numpy(), summary["T"].to_numpy()
        fit = np.arange(len(x))
        if max_fit_members is not None and len(x) > max_fit_members:
            fit = np.random.default_rng(0).choice(len(x), max_fit_members, replace=False)
        self.bg_ = BetaGeo().fit(x[fit], t_x[fit], T[fit])
        m = summary["m"].to_numpy()
        self.gg_ = None
        if ((x[fit] > 0) & (m[fit] > 0)).sum() >= MIN_REPEATERS:
            self.gg_ = GammaGamma().fit(x[fit], m[fit])
        # too few repeat buyers for the spend model: the mean value of a purchase day
        self.mean_spend_ = float(summary["spend"].sum() / max(x.sum() + len(x), 1))
        return self

    def score(self, summary: pd.DataFrame, horizon_days: float) -> pd.DataFrame:
        """P(alive), P(no purchase) and expected purchases in the next ``horizon_days``, spend per
        purchase and the expected spend in the horizon, per row of ``summary``."""
        x, t_x, T = summary["x"].to_numpy(), summary["t_x"].to_numpy(), summary["T"].to_numpy()
        alive = self.bg_.p_alive(x, t_x, T)
        p = self.bg_.params_
        quiet_if_alive = ((p["alpha"] + T) / (p["alpha"] + T + horizon_days)) ** (p["r"] + x)
        purchases = self.bg_.expected_purchases(horizon_days, x, t_x, T)
        if self.gg_ is not None:
            spend = self.gg_.expected_spend(x, summary["m"].to_numpy())
        else:
            spend = np.full(len(x), self.mean_spend_)
        return pd.DataFrame(
            {
                "p_alive": alive,
                "p_no_purchase": (1 - alive) + alive * quiet_if_alive,
                "expected_purchases": purchases,
                "expected_spend_per_purchase": spend,
                "expected_spend": purchases * spend,
            },
            index=summary.index,
        )


def btyd_scores(
    orders: pd.DataFrame,
    cutoff: pd.Timestamp,
    horizon_days: float,
    max_fit_members: int | None = None,
    summary: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """:class:`BuyTillYouDie` fitted on the history before ``cutoff`` only (so the scores are
    point-in-time) and scored for every member with a purchase before it. ``summary``:
    :func:`rfm_summary` of the same orders and cutoff, when the caller has it already."""
    summary = rfm_summary(orders, cutoff) if summary is None else summary
    return BuyTillYouDie().fit(summary, max_fit_members).score(summary, horizon_days)
