import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from training.data.simulator import SimConfig, simulate


def _read(root, name):
    return pd.read_parquet(root / f"{name}.parquet")


@pytest.mark.unit
def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    simulate(SimConfig(n_members=400, seed=3), a, progress=False)
    simulate(SimConfig(n_members=400, seed=3), b, progress=False)
    simulate(SimConfig(n_members=400, seed=4), c, progress=False)
    for name in ("raw/transactions", "raw/exposures", "raw/points_ledger", "ground_truth/uplift"):
        pd.testing.assert_frame_equal(_read(a, name), _read(b, name))
    assert not _read(a, "raw/transactions").equals(_read(c, "raw/transactions"))


@pytest.mark.unit
def test_chunks_simulated_side_by_side_give_the_same_files(tmp_path, monkeypatch):
    import training.data.simulator as simulator

    monkeypatch.setattr(simulator, "CHUNK", 150)  # 3 chunks, each its own RNG stream
    one, two = tmp_path / "one", tmp_path / "two"
    counts = simulate(SimConfig(n_members=400, seed=3), one, progress=False, workers=1)
    assert simulate(SimConfig(n_members=400, seed=3), two, progress=False, workers=2) == counts
    files = sorted(p.relative_to(one) for p in one.rglob("*.parquet"))
    assert files == sorted(p.relative_to(two) for p in two.rglob("*.parquet")) and len(files) > 8
    for path in files:
        pd.testing.assert_frame_equal(pd.read_parquet(one / path), pd.read_parquet(two / path))
    members = pd.read_parquet(one / "raw" / "members.parquet")["member_id"]
    assert members.is_unique and len(members) == 400 and members.is_monotonic_increasing  # chunk order kept


def test_true_churn_probability_matches_realised_labels(settings, pipeline):
    meta = pipeline["meta"]
    truth = _read(settings.ground_truth_dir, "churn")
    truth = truth[truth["joined_before_cutoff"]]
    txn = pd.read_parquet(settings.curated_dir / "transactions.parquet")
    bought_after = set(txn.loc[txn["ts"] >= pd.Timestamp(meta["cutoff"]), "member_id"])
    label = ~truth["member_id"].isin(bought_after)
    # calibrated: the mean true probability matches the realised churn rate
    assert abs(truth["p_no_purchase"].mean() - label.mean()) < 0.04
    assert 0.15 < label.mean() < 0.7  # a label window with both classes well represented
    assert roc_auc_score(label, truth["p_no_purchase"]) > 0.85  # the oracle ceiling is informative


def test_randomised_campaigns_recover_true_uplift(settings, pipeline):
    exp = pd.read_parquet(settings.curated_dir / "exposures.parquet")
    resp = pd.read_parquet(settings.curated_dir / "responses.parquet")
    truth = _read(settings.ground_truth_dir, "uplift")
    # each exposure's true conversion probability with and without the offer, at its own time
    per_exposure = _read(settings.ground_truth_dir, "exposures")
    per_exposure = per_exposure[["exposure_id", "p_convert_treated", "p_convert_control"]]
    df = exp.merge(resp[["exposure_id", "converted", "redeemed"]], on="exposure_id").merge(
        per_exposure, on="exposure_id", validate="one_to_one"
    )
    assert len(df) == len(exp)
    assert abs((~df["treatment"]).mean() - SimConfig().control_share) < 0.03  # control group share
    assert not df.loc[~df["treatment"], "redeemed"].any()  # control members never get the coupon
    observed = df.loc[df["treatment"], "converted"].mean() - df.loc[~df["treatment"], "converted"].mean()
    n1, n0 = df["treatment"].sum(), (~df["treatment"]).sum()
    p = df["converted"].mean()
    se = np.sqrt(p * (1 - p) * (1 / n1 + 1 / n0))
    assert abs(observed - (df["p_convert_treated"] - df["p_convert_control"]).mean()) < 3 * se
    # heterogeneous effects: some member x offer pairs are hurt by the offer
    assert (truth["uplift"] < 0).mean() > 0.05 and truth["uplift"].std() > 0.02


def test_members_buy_their_true_favourite_items(settings, pipeline):
    pref = _read(settings.ground_truth_dir, "preferences")
    txn = pd.read_parquet(settings.curated_dir / "transactions.parquet")
    bought = txn.groupby(["member_id", "item_id"]).size().rename("n").reset_index()
    top = pref[pref["rank"] <= 3].merge(bought, on=["member_id", "item_id"], how="left")["n"].fillna(0).mean()
    low = pref[pref["rank"] >= 18].merge(bought, on=["member_id", "item_id"], how="left")["n"].fillna(0).mean()
    assert top > 2 * low


def test_points_ledger_is_consistent_and_fraud_is_injected(settings, pipeline):
    ledger = pd.read_parquet(settings.curated_dir / "points_ledger.parquet")
    assert (ledger.groupby("member_id")["points"].cumsum() == ledger["balance"]).all()
    assert (ledger["balance"] >= 0).all()
    assert {"earn", "burn", "expire", "adjust"} <= set(ledger["kind"])
    fraud = _read(settings.ground_truth_dir, "fraud")
    entries = _read(settings.ground_truth_dir, "fraud_entries")
    assert 0 < fraud["fraud"].sum() < 0.02 * len(fraud)
    assert set(entries["member_id"]) <= set(fraud.loc[fraud["fraud"], "member_id"])
    assert entries["entry_id"].isin(ledger["entry_id"]).all()


def test_engagement_reveals_best_hour(settings, pipeline):
    eng = pd.read_parquet(settings.curated_dir / "engagement.parquet")
    truth = _read(settings.ground_truth_dir, "members").set_index("member_id")
    opens = eng[eng["event"] == "open"]
    mode = opens.groupby("member_id")["hour"].agg(lambda s: s.mode().iat[0])
    active = opens.groupby("member_id").size() >= 5
    hit = (mode[active] == truth.loc[mode[active].index, "best_hour"]).mean()
    assert hit > 0.6
