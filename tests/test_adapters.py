import pandas as pd
import pytest

from kernel.contracts import validate
from kernel.settings import Settings
from training.data.adapters import load_complete_journey
from training.data.importer import complete_tables, import_tables
from training.data.ingest import MAPPINGS, load_public_dataset
from training.data.mapping import load_mapping


def test_online_retail_loads_through_its_mapping_and_accounts_for_every_row(shared_data):
    mapping = load_mapping(MAPPINGS / "online_retail.yaml")
    out = import_tables(shared_data / "online_retail", mapping)
    raw = pd.read_parquet(shared_data / "online_retail" / "online_retail_2010_2011.parquet")
    rejected = out.rejected["transactions"]
    tables, notes = complete_tables(out.tables, mapping)
    result = validate("transactions", tables["transactions"])
    assert len(raw) == len(rejected) + result.counts["valid"] + result.counts["quarantined"]
    reasons = rejected["_reason"].value_counts()
    assert reasons["cancellation (invoice starts with C)"] == 9288
    assert reasons["missing CustomerID"] == 134_697  # 135,080 minus those already counted as cancellations
    assert reasons["non-positive UnitPrice"] == 40
    assert (raw.loc[rejected["_source_row"].astype(int), "Quantity"] <= 0).sum() == 10_624  # negatives all accounted
    assert (result.valid["quantity"] > 0).all()
    members = validate("members", tables["members"])
    assert members.counts["quarantined"] == 0 and members.counts["valid"] == result.valid["member_id"].nunique()
    assert set(tables["members"]["region"]) >= {"United Kingdom", "France"}
    items = validate("items", tables["items"])
    assert items.counts["quarantined"] == 0 and (tables["items"]["category_l1"] != "UNKNOWN").mean() > 0.99
    ledger = validate("points_ledger", tables["points_ledger"])
    assert ledger.counts["quarantined"] == 0
    assert (ledger.valid.groupby("member_id")["points"].cumsum() == ledger.valid["balance"]).all()
    assert any("consent" in n and "assumed" in n for n in notes)


def test_complete_journey_maps_campaigns_and_redemptions(shared_data):
    out = load_complete_journey(shared_data)
    exposures = validate("exposures", out.tables["exposures"])
    responses = validate("responses", out.tables["responses"])
    offers = validate("offers", out.tables["offers"])
    assert exposures.counts == {"valid": 6589, "quarantined": 0}
    assert offers.counts["valid"] == 27
    redemptions = pd.read_parquet(shared_data / "complete_journey" / "coupon_redemptions.parquet")
    redeemed_pairs = redemptions[["campaign_id", "household_id"]].drop_duplicates()
    targeted = redeemed_pairs.merge(pd.read_parquet(shared_data / "complete_journey" / "campaigns.parquet"))
    assert responses.valid["redeemed"].sum() == len(targeted)
    assert exposures.valid["treatment"].all()  # no control group in this data set: stated, not invented
    assert exposures.valid["propensity"].isna().all()
    items = out.tables["items"]
    assert len(items) + len(out.rejected["items"]) == 92331
    assert any("no control group" in n for n in out.notes)


@pytest.mark.unit
def test_missing_shared_data_is_a_clear_error(tmp_path):
    from training.data.adapters import SharedDataMissing

    with pytest.raises(SharedDataMissing, match="shared/data"):
        load_complete_journey(tmp_path)
    settings = Settings(data_dir=tmp_path / "data", dataset="online_retail", shared_data_dir=tmp_path / "nowhere")
    with pytest.raises(SharedDataMissing, match="shared/data"):
        load_public_dataset(settings)
