import pandas as pd
import pytest

from kernel.contracts import ContractError, validate
from training.data.validation import validate_dataset


def _txn(**over):
    row = {
        "order_id": "o1",
        "member_id": "m1",
        "item_id": "i1",
        "quantity": 2,
        "amount": 9.5,
        "ts": "2024-05-01 10:00",
        "channel": "store",
        "store_id": "s1",
    }
    row.update(over)
    return row


@pytest.mark.unit
def test_bad_rows_are_quarantined_with_reason_and_counted():
    df = pd.DataFrame(
        [_txn(), _txn(quantity=-1), _txn(channel="mars"), _txn(ts="not a date"), _txn(member_id=""), _txn(amount="abc")]
    )
    result = validate("transactions", df)
    assert result.counts == {"valid": 1, "quarantined": 5}
    reasons = dict(zip(result.quarantined["_source_row"], result.quarantined["_reason"], strict=True))
    assert "quantity" in reasons[1] and "greater_than" in reasons[1]
    assert "channel" in reasons[2] and "mars" in reasons[2]
    assert reasons[3].startswith("ts:")
    assert "member_id" in reasons[4]
    assert "amount" in reasons[5]
    # the valid row is coerced to the contract's dtypes
    assert str(result.valid["ts"].dtype).startswith("datetime64")


@pytest.mark.unit
def test_timestamps_in_mixed_formats_parse_row_by_row_and_bad_ones_are_quarantined_as_they_came():
    """A property test found it: two formats in one column failed the whole table."""
    mixed = pd.DataFrame([_txn(), _txn(item_id="i2", ts="2023-12-31T23:59:59")])
    result = validate("transactions", mixed)
    assert result.counts == {"valid": 2, "quarantined": 0}
    assert result.valid["ts"].tolist() == [pd.Timestamp("2024-05-01 10:00"), pd.Timestamp("2023-12-31 23:59:59")]
    with_bad = pd.concat([mixed, pd.DataFrame([_txn(item_id="i3", ts="31/12/2024 xx")])], ignore_index=True)
    result = validate("transactions", with_bad)
    assert result.counts == {"valid": 2, "quarantined": 1}
    assert result.quarantined.loc[0, "ts"] == "31/12/2024 xx" and "ts:" in result.quarantined.loc[0, "_reason"]


@pytest.mark.unit
def test_missing_column_is_a_clear_error_naming_the_field():
    with pytest.raises(ContractError, match="amount"):
        validate("transactions", pd.DataFrame([_txn()]).drop(columns="amount"))


@pytest.mark.unit
def test_cross_field_rules():
    offers = pd.DataFrame(
        [
            {
                "offer_id": "o",
                "kind": "coupon",
                "scene_dimension": "time",
                "value_dimension": "material",
                "category_l1": "wine",
                "cost": 2.0,
                "margin_impact": -0.1,
                "eligible_tiers": "Gold|Diamond",
                "stock": 5,
                "valid_from": "2024-02-01",
                "valid_to": "2024-01-01",
            }
        ]
    )
    q = validate("offers", offers).quarantined
    assert len(q) == 1 and "valid_window" in q["_reason"][0] and "tiers_known" in q["_reason"][0]
    ledger = pd.DataFrame(
        [
            {
                "entry_id": "p1",
                "member_id": "m",
                "ts": "2024-01-01",
                "kind": "burn",
                "points": 10,
                "balance": 0,
                "expires_at": None,
                "order_id": None,
            }
        ]
    )
    assert "sign_matches_kind" in validate("points_ledger", ledger).quarantined["_reason"][0]


def _edited_copy(settings, tmp_path, dataset: str, edits: dict):
    """The test world's raw tables in a new dataset, each in ``edits`` changed by its function;
    transactions cut to their first 1,000 rows."""
    bad = settings.model_copy(update={"data_dir": tmp_path, "dataset": dataset})
    bad.raw_dir.mkdir(parents=True)
    for f in settings.raw_dir.glob("*.parquet"):
        df = pd.read_parquet(f)
        if f.stem == "transactions":
            df = df.head(1000).copy()
        if f.stem in edits:
            df = edits[f.stem](df)
        df.to_parquet(bad.raw_dir / f.name)
    return bad


def _set(**cells):
    """An edit that sets ``column=(row, value)`` cells."""

    def edit(df):
        for column, (row, value) in cells.items():
            df.loc[row, column] = value
        return df

    return edit


def test_dataset_validation_quarantines_and_accounts_for_every_row(settings, pipeline, tmp_path):
    # an unknown member: referential quarantine; the others break the contract
    edit = _set(quantity=(0, 0), member_id=(1, "ghost"), channel=(2, "fax"))
    bad = _edited_copy(settings, tmp_path, "broken", {"transactions": edit})
    report = validate_dataset(bad)["transactions"]
    assert report["raw"] == 1000
    assert report["quarantined_contract"] == 2 and report["quarantined_reference"] == 1
    assert report["valid"] == 997
    q = pd.concat([pd.read_parquet(p) for p in bad.quarantine_dir.glob("transactions__*.parquet")])
    assert len(q) == 3 and q["_reason"].str.len().gt(0).all()
    assert "member_id: not in curated members" in set(q["_reason"])


def test_simulated_data_passes_its_contracts(pipeline):
    for table, r in pipeline["report"].items():
        assert r["quarantined_contract"] == 0 and r["quarantined_reference"] == 0, (table, r["reasons"])
        assert r["valid"] == r["raw"]


def test_validation_in_slices_accounts_for_every_row_and_holds_uniqueness_across_slices(
    settings, pipeline, tmp_path, monkeypatch
):
    import training.data.validation as validation

    edits = {
        "transactions": _set(quantity=(0, 0), member_id=(500, "ghost")),
        "members": lambda df: pd.concat([df, df.head(1)], ignore_index=True),  # the first member again, later
    }
    bad = _edited_copy(settings, tmp_path, "sliced", edits)
    monkeypatch.setattr(validation, "VALIDATE_CHUNK_ROWS", 997)
    report = validate_dataset(bad)
    members = report["members"]
    assert members["raw"] == members["valid"] + 1 and members["quarantined_contract"] == 1
    q = pd.read_parquet(bad.quarantine_dir / "members__contract.parquet")
    assert q["_reason"].str.startswith("member_id: not unique").all()
    assert int(q["_source_row"].iloc[0]) == members["raw"] - 1  # counted over the whole table, not the slice
    txn = report["transactions"]
    assert (txn["valid"], txn["quarantined_contract"], txn["quarantined_reference"]) == (998, 1, 1)
    curated = pd.read_parquet(bad.curated_dir / "transactions.parquet")
    assert len(curated) == 998 and curated["member_id"].ne("ghost").all()
    assert pd.read_parquet(bad.curated_dir / "members.parquet")["member_id"].is_unique
