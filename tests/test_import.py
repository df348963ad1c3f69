"""Bring your own data: a retailer's export imported through a mapping, in batches.

Unit tests on hand-made frames (no world), then increments, PostgreSQL as a source, and the
UK retailer's other year built from ../shared data and imported with no code change.
"""

from __future__ import annotations

import textwrap
import uuid

import pandas as pd
import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from cli.main import app
from kernel.settings import Profile, Settings
from tests.conftest import reachable
from training.data.importer import coerce, import_tables, map_table
from training.data.ingest import import_dataset, read_batches
from training.data.mapping import Mapping, MappingError, TableMapping, load_mapping
from training.data.validation import validate_dataset

TXN = pd.DataFrame(
    {
        "Invoice": ["1001", "1001", "1002", "C1003", "1004", "1005"],
        "Customer": ["7", "7", "8", "7", "", "9"],
        "Sku": ["A", "B", "A", "A", "B", "B"],
        "Qty": ["2", "1", "3", "-1", "1", "x"],
        "Price": ["1,50", "4,00", "1,50", "1,50", "4,00", "4,00"],
        "When": ["03.01.2024 09:15", "03.01.2024 09:15", "04.01.2024 18:00", "05.01.2024 10:00", "06.01.2024 10:00"]
        + ["07.07.2024 10:00"],
        "Land": ["DE", "DE", "AT", "DE", "DE", "DE"],
    }
)
MAPPING = """
timezone: Europe/Berlin
decimal: ","
currency: EUR
tables:
  transactions:
    source: sales.csv
    columns: {order_id: Invoice, member_id: Customer, item_id: Sku, quantity: Qty, unit_price: Price,
              ts: When, region: Land}
    date_format: "%d.%m.%Y %H:%M"
    constants: {channel: store, store_id: null}
    derive: {amount: quantity * unit_price}
    rules:
      - {reject: cancellation, where: {field: order_id, starts_with: "C"}}
      - {reject: no member, where: {field: member_id, missing: true}}
  members: {from_transactions: true}
  items: {from_transactions: true}
"""


def _mapping(text: str = MAPPING) -> Mapping:
    import yaml

    return Mapping.model_validate(yaml.safe_load(text))


def _export(folder, txn: pd.DataFrame = TXN, mapping: str = MAPPING):
    folder.mkdir(parents=True, exist_ok=True)
    txn.to_csv(folder / "sales.csv", index=False)
    (folder / "mapping.yaml").write_text(mapping)
    return folder


@pytest.mark.unit
def test_mapping_coerces_decimal_commas_local_times_and_quarantines_bad_rows_with_the_field():
    mapping = _mapping()
    out, rejected = map_table(TXN, "transactions", mapping.tables["transactions"], mapping)
    assert out["order_id"].tolist() == ["1001", "1001", "1002"]
    assert out["amount"].tolist() == [3.0, 4.0, 4.5]  # 2 x 1,50 ...
    # 09:15 in Berlin in January is 08:15 UTC; curated times are naive UTC
    assert out["ts"].iat[0] == pd.Timestamp("2024-01-03 08:15")
    assert set(out["channel"]) == {"store"} and out["store_id"].isna().all()
    reasons = dict(zip(rejected["Invoice"], rejected["_reason"], strict=True))
    assert reasons == {"C1003": "cancellation", "1004": "no member", "1005": "quantity: not a int (column Qty)"}
    assert rejected["_source_row"].tolist() == [3, 4, 5]  # every rejected row points at its source row


@pytest.mark.unit
def test_a_whole_column_in_another_format_is_a_setting_error_not_a_quarantine():
    mapping = _mapping(MAPPING.replace('date_format: "%d.%m.%Y %H:%M"', ""))
    with pytest.raises(MappingError, match=r"transactions\.ts: 6 of 6 .*tables\.transactions\.date_format"):
        map_table(TXN, "transactions", mapping.tables["transactions"], mapping)
    mapping = _mapping(MAPPING.replace('decimal: ","', 'decimal: "."'))
    with pytest.raises(MappingError, match=r"transactions\.unit_price: .*decimal"):
        map_table(TXN, "transactions", mapping.tables["transactions"], mapping)


@pytest.mark.unit
def test_renamed_columns_and_rules_that_leave_nothing_are_named(tmp_path):
    mapping = _mapping()
    with pytest.raises(MappingError, match=r"column 'Invoice' \(for field order_id\).*tables\.transactions\.columns"):
        map_table(TXN.rename(columns={"Invoice": "InvoiceNo"}), "transactions", mapping.tables["transactions"], mapping)
    every_c = TXN.assign(Invoice="C" + TXN["Invoice"])
    _export(tmp_path / "c", every_c)
    with pytest.raises(MappingError, match=r"transactions: no rows left after the mapping's rules .*'cancellation'"):
        import_tables(tmp_path / "c", mapping)


@pytest.mark.unit
@pytest.mark.parametrize(
    "text, setting",
    [
        ("tables: {sales: {}}", "unknown table"),
        ("tables: {offers: {}}", "transactions table is required"),
        ("tables: {transactions: {columns: {price: P}}}", r"transactions\.columns: unknown field"),
        ("timezone: Mars/Base\ntables: {transactions: {}}", "timezone"),
        ("decimal: ';'\ntables: {transactions: {}}", "decimal"),
        ("tables: {transactions: {derive: {amount: 'quantity ** 2'}}}", "derive"),
        ("tables: {transactions: {rules: [{reject: x, where: {field: quantity, le: 0, gt: 1}}]}}", "exactly one"),
    ],
)
def test_mapping_errors_name_the_setting(tmp_path, text, setting):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(MappingError, match=setting):
        load_mapping(path)


@pytest.mark.unit
def test_coerce_reads_booleans_and_ids_written_as_numbers():
    mapping = _mapping()
    values, bad = coerce(pd.Series(["yes", "0", "TRUE", "maybe", None]), "bool", mapping, None)
    assert values.tolist()[:3] == [True, False, True] and bad.tolist() == [False, False, False, True, False]
    ids, _ = coerce(pd.Series([17850.0, None, 12.0]), "str", mapping, None)
    assert ids.tolist() == ["17850", None, "12"]


def _settings(tmp_path, dataset: str = "shop") -> Settings:
    return Settings(data_dir=tmp_path / "data", dataset=dataset, profile=Profile.embedded)


def test_increments_are_idempotent_conflicts_are_quarantined_and_rows_keep_their_batch(tmp_path):
    settings = _settings(tmp_path)
    first = _export(tmp_path / "day1")
    assert import_dataset(settings, first, first / "mapping.yaml")["batch_id"] == "b0001"
    report = validate_dataset(settings)
    assert report["transactions"]["valid"] == 3
    # the same batch again: nothing added
    again = import_dataset(settings, first, first / "mapping.yaml", increment=True)
    assert again["skipped"] and again["batch_id"] == "b0001"
    # day 2: one line repeated unchanged, one line of a known order with other content, a new
    # order and a late row from before day 1
    day2 = pd.DataFrame(
        {
            "Invoice": ["1001", "1002", "1006", "1000"],
            "Customer": ["7", "8", "8", "9"],
            "Sku": ["A", "A", "B", "A"],
            "Qty": ["2", "5", "1", "1"],
            "Price": ["1,50", "1,50", "4,00", "1,50"],
            "When": ["03.01.2024 09:15", "04.01.2024 18:00", "08.01.2024 12:00", "01.01.2024 12:00"],
            "Land": ["DE", "AT", "AT", "CH"],
        }
    )
    second = _export(tmp_path / "day2", day2)
    assert import_dataset(settings, second, second / "mapping.yaml", increment=True)["batch_id"] == "b0002"
    report = validate_dataset(settings)
    t = report["transactions"]
    assert (t["raw"], t["valid"], t["duplicates_skipped"], t["quarantined_conflict"]) == (7, 5, 1, 1)
    curated = pd.read_parquet(settings.curated_dir / "transactions.parquet")
    assert curated.groupby("batch_id").size().to_dict() == {"b0001": 3, "b0002": 2}
    kept = curated.loc[curated["order_id"] == "1002"]
    assert kept["quantity"].tolist() == [3]  # the first import stands; the other content never overwrote it
    conflict = pd.read_parquet(settings.quarantine_dir / "transactions__conflict.parquet")
    assert conflict["_reason"].iat[0].startswith("order_id/item_id/line_no already imported in batch b0001")
    assert set(pd.read_parquet(settings.curated_dir / "members.parquet")["member_id"]) == {"7", "8", "9"}
    batches = read_batches(settings)
    assert [b["batch_id"] for b in batches] == ["b0001", "b0002"]
    v2 = batches[1]["validated"]["transactions"]
    assert v2 == {"duplicates_skipped": 1, "conflicts": 1, "curated": 2}
    res = CliRunner().invoke(app, ["--data-dir", str(settings.data_dir), "--dataset", "shop", "data", "batches"])
    assert res.exit_code == 0 and "b0002" in res.output


@pytest.mark.unit
def test_members_are_versioned_by_their_consent_time(tmp_path):
    from training.data.validation import deduplicate

    base = {"tier": "Gold", "consent_email": True}
    df = pd.DataFrame(
        [
            {"member_id": "1", "consent_updated_at": pd.Timestamp("2024-01-01"), **base, "batch_id": "b0001"},
            {"member_id": "2", "consent_updated_at": pd.Timestamp("2024-01-01"), **base, "batch_id": "b0001"},
            {"member_id": "1", "consent_updated_at": pd.Timestamp("2024-02-01"), "tier": "Gold", "consent_email": False}
            | {"batch_id": "b0002"},  # an opt-out later: an update
            {
                "member_id": "2",
                "consent_updated_at": pd.Timestamp("2024-01-01"),
                "tier": "Silver",
                "consent_email": True,
            }
            | {"batch_id": "b0002"},  # same moment, other content: a conflict
        ]
    )
    kept, conflicts, counts = deduplicate("members", df)
    assert kept.set_index("member_id")["consent_email"].to_dict() == {"1": False, "2": True}
    assert conflicts["member_id"].tolist() == ["2"]
    assert counts == {"b0001": {"updated": 1}, "b0002": {"conflicts": 1}}


@pytest.mark.unit
def test_a_partial_members_table_keeps_its_consent_and_is_completed_from_the_transactions(tmp_path):
    """A CRM export with only ids and consent: join date, tier and region come from the sales;
    a buyer without a CRM row gets no consent; a CRM row that never bought is quarantined."""
    crm = pd.DataFrame({"Kunde": ["7", "99"], "Werbung": ["ja", "ja"], "Stand": ["2024-01-02"] * 2})
    mapping = MAPPING.replace(
        "  members: {from_transactions: true}",
        """  members:
    source: crm.csv
    from_transactions: true
    columns: {member_id: Kunde, consent_personalisation: Werbung, consent_updated_at: Stand}
    derive: {consent_email: consent_personalisation}""",
    )
    folder = _export(tmp_path / "export", mapping=mapping)
    crm.assign(Werbung=crm["Werbung"].map({"ja": "true", "nein": "false"})).to_csv(folder / "crm.csv", index=False)
    settings = _settings(tmp_path)
    notes = import_dataset(settings, folder, folder / "mapping.yaml")["notes"]
    assert any(n.startswith("members: fields the export lacks filled from the transactions") for n in notes)
    report = validate_dataset(settings)
    members = pd.read_parquet(settings.curated_dir / "members.parquet").set_index("member_id")
    assert members["consent_personalisation"].to_dict() == {"7": True, "8": False}
    assert members.loc["7", "consent_email"] and not members.loc["8", "consent_email"]
    assert members.loc["8", "region"] == "AT" and members.loc["7", "join_date"] == pd.Timestamp("2024-01-03 08:15")
    assert members.loc["7", "consent_updated_at"] == pd.Timestamp("2024-01-01 23:00")  # Berlin midnight, in UTC
    assert members["batch_id"].to_dict() == {"7": "b0001", "8": "derived"}
    assert report["members"]["quarantined_contract"] == 1  # 99 never bought: no join date, kept in quarantine
    quarantined = pd.read_parquet(settings.quarantine_dir / "members__contract.parquet")
    assert quarantined["member_id"].tolist() == ["99"] and "join_date" in quarantined["_reason"].iat[0]


def test_cli_import_template_and_clear_errors(tmp_path):
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "data")]
    res = runner.invoke(app, [*base, "data", "template", str(tmp_path / "tpl")])
    assert res.exit_code == 0
    assert (tmp_path / "tpl" / "transactions.csv").read_text().startswith("order_id,member_id,item_id")
    assert load_mapping(tmp_path / "tpl" / "mapping.yaml").tables["transactions"].columns["order_id"] == "Invoice"
    src = _export(tmp_path / "src")
    bad_name = runner.invoke(app, [*base, "data", "import", "--dataset", "My-Shop", "--source", str(src)])
    assert bad_name.exit_code == 2 and "[a-z0-9_]+" in bad_name.output
    renamed = _export(tmp_path / "renamed", TXN.rename(columns={"Qty": "Quantity"}))
    res = runner.invoke(
        app,
        [
            *base,
            "data",
            "import",
            "--dataset",
            "shop",
            "--source",
            str(renamed),
            "--mapping",
            str(renamed / "mapping.yaml"),
        ],
    )
    assert res.exit_code == 2 and "tables.transactions.columns.quantity" in res.output and "Traceback" not in res.output
    no_batch = runner.invoke(
        app,
        [
            *base,
            "data",
            "import",
            "--dataset",
            "other",
            "--source",
            str(src),
            "--mapping",
            str(src / "mapping.yaml"),
            "--increment",
        ],
    )
    assert no_batch.exit_code == 2 and "without --increment" in no_batch.output
    ok = runner.invoke(
        app,
        [*base, "data", "import", "--dataset", "shop", "--source", str(src), "--mapping", str(src / "mapping.yaml")],
    )
    assert ok.exit_code == 0 and "batch b0001 imported" in ok.output


@pytest.mark.skipif(not reachable("127.0.0.1", 5432), reason="PostgreSQL on 127.0.0.1:5432 not reachable")
def test_import_from_postgresql_by_query(tmp_path):
    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    table = f"sales_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(url)
    TXN.to_sql(table, engine, index=False)
    try:
        mapping = MAPPING.replace("source: sales.csv", f'query: "SELECT * FROM {table} WHERE \\"Qty\\" <> \'x\'"')
        (tmp_path / "m.yaml").write_text(mapping)
        settings = _settings(tmp_path, "pg_shop")
        record = import_dataset(settings, url, tmp_path / "m.yaml")
        assert record["rows"]["transactions"] == 3 and record["rejected_on_import"] == {"transactions": 2}
        assert "postgres@127.0.0.1" in record["source"]
        assert validate_dataset(settings)["transactions"]["valid"] == 3
        bad = load_mapping(tmp_path / "m.yaml")
        bad.tables["transactions"] = TableMapping(query="SELECT * FROM no_such_table")
        with pytest.raises(MappingError, match=r"tables\.transactions\.query: the database refused it"):
            import_tables(url, bad)
    finally:
        with engine.begin() as conn:
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {table}")
        engine.dispose()


OTHER_YEAR = textwrap.dedent(
    """
    timezone: Europe/London
    currency: GBP
    consent: assumed
    tables:
      transactions:
        source: online_retail_ii.csv
        columns: {order_id: Invoice, member_id: Customer ID, item_id: StockCode, quantity: Quantity,
                  unit_price: Price, ts: InvoiceDate, description: Description, region: Country}
        date_format: "%m/%d/%Y %H:%M"
        constants: {channel: online, store_id: null}
        derive: {amount: quantity * unit_price}
        rules:
          - {reject: cancellation, where: {field: order_id, starts_with: "C"}}
          - {reject: missing customer, where: {field: member_id, missing: true}}
          - {reject: return, where: {field: quantity, le: 0}}
          - {reject: no price, where: {field: unit_price, le: 0}}
      items:
        from_transactions: true
        derive: {category_l1: {of: description, last_words: 1}, category_l2: {of: description, last_words: 2}}
    """
)


def test_the_other_year_layout_imports_through_a_mapping_with_no_code_change(shared_data, tmp_path):
    raw = pd.read_parquet(shared_data / "online_retail" / "online_retail_2010_2011.parquet").head(60_000)
    export = raw.rename(columns={"InvoiceNo": "Invoice", "UnitPrice": "Price", "CustomerID": "Customer ID"})
    export["InvoiceDate"] = export["InvoiceDate"].dt.strftime("%m/%d/%Y %H:%M")  # text, US order, as published
    folder = tmp_path / "export"
    folder.mkdir()
    export.to_csv(folder / "online_retail_ii.csv", index=False)
    (folder / "mapping.yaml").write_text(OTHER_YEAR)
    runner = CliRunner()
    base = ["--data-dir", str(tmp_path / "data")]
    args = ["--source", str(folder), "--mapping", str(folder / "mapping.yaml")]
    res = runner.invoke(app, [*base, "data", "import", "--dataset", "uk_other_year", *args])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, [*base, "--dataset", "uk_other_year", "data", "validate"])
    assert res.exit_code == 0, res.output
    settings = Settings(data_dir=tmp_path / "data", dataset="uk_other_year")
    curated = pd.read_parquet(settings.curated_dir / "transactions.parquet")
    expected = raw.loc[
        ~raw["InvoiceNo"].astype(str).str.startswith("C")
        & raw["CustomerID"].notna()
        & (raw["Quantity"] > 0)
        & (raw["UnitPrice"] > 0)
    ]
    assert len(curated) == len(expected)
    assert curated["amount"].sum() == pytest.approx((expected["Quantity"] * expected["UnitPrice"]).sum(), rel=1e-6)
    rejected = pd.read_parquet(settings.quarantine_dir / "transactions__import_b0001.parquet")
    assert len(rejected) + len(curated) == len(raw)  # every source row accounted for
