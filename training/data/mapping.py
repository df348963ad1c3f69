"""The mapping from a retailer's own export to the data contracts, read from YAML.

A mapping says, per contract table, where its rows come from (a file in the source folder,
a database table or an SQL query), which source column holds each contract field, which
fields are constants or derived, how dates and numbers are written, and which rows are
rejected (cancellations, returns) with what reason. Every setting is checked when the file
is read, so a typo is an error naming the setting, not a surprise half-way through a load.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from kernel.contracts import CONTRACTS

DATASET_NAME = re.compile(r"^[a-z0-9_]+$")
EXPRESSION = re.compile(r"^\s*([a-z_][a-z0-9_]*)\s*(?:([*/+-])\s*([a-z_][a-z0-9_]*|[0-9.]+))?\s*$")
# helper fields a mapping may fill besides the contract's: they feed derived fields and the
# tables built from transactions (members' region, items' category and price), then are dropped
HELPER_FIELDS = {
    "transactions": {"unit_price": "float", "description": "str", "region": "str", "line_no": "str"},
}


class MappingError(ValueError):
    """A mapping file, or a source that does not fit it: the message names the setting to fix."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Condition(_Strict):
    """Rows where ``field`` matches: one test per condition."""

    field: str
    starts_with: str | None = None
    equals: Any = None
    in_: list[Any] | None = Field(default=None, alias="in")
    matches: str | None = None  # a regular expression, searched
    lt: float | None = None
    le: float | None = None
    gt: float | None = None
    ge: float | None = None
    missing: bool | None = None

    @model_validator(mode="after")
    def _one_test(self) -> Condition:
        tests = [k for k in ("starts_with", "equals", "in_", "matches", "lt", "le", "gt", "ge", "missing")]
        given = [k for k in tests if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"a condition on {self.field!r} needs exactly one test of {tests}, got {given or 'none'}")
        if self.matches is not None:
            re.compile(self.matches)
        return self


class Rule(_Strict):
    """Reject the rows ``where`` matches, quarantined with ``reject`` as the reason."""

    reject: str
    where: Condition


class CategoryRule(_Strict):
    """A category from a text field: its last ``last_words`` words, or the first matching pattern."""

    of: str
    last_words: int | None = Field(default=None, ge=1)
    patterns: dict[str, str] | None = None  # regular expression -> category, first match wins
    default: str = "UNKNOWN"

    @model_validator(mode="after")
    def _one_kind(self) -> CategoryRule:
        if (self.last_words is None) == (self.patterns is None):
            raise ValueError("a category rule needs exactly one of last_words or patterns")
        for pattern in self.patterns or {}:
            re.compile(pattern)
        return self


class TableMapping(_Strict):
    source: str | None = None  # a file in the source folder, or a table of the source database
    query: str | None = None  # SQL, for a database source
    columns: dict[str, str] = {}  # field -> source column
    constants: dict[str, Any] = {}
    derive: dict[str, str | CategoryRule] = {}  # field -> "a * b" or a category rule
    date_format: str | None = None  # strftime format of every time field of this table (default ISO 8601)
    rules: list[Rule] = []
    from_transactions: bool = False  # members / items only: built from the transactions

    @property
    def has_source(self) -> bool:
        """A file or table (or query) to read; without one a table is built or starts empty."""
        return self.source is not None or self.query is not None

    @field_validator("derive")
    @classmethod
    def _expressions(cls, derive: dict) -> dict:
        for field, how in derive.items():
            if isinstance(how, str) and not EXPRESSION.match(how):
                raise ValueError(
                    f"{field}: {how!r} is not 'field', 'field OP field' or 'field OP number' (OP one of * / + -)"
                )
        return derive


class Mapping(_Strict):
    timezone: str = "UTC"  # of times written without an offset; curated times are UTC
    decimal: Literal[".", ","] = "."
    thousands: Literal["", ",", ".", " ", "'"] = ""
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    margin_rate: float = Field(default=0.3, ge=-1, le=1)  # items without a margin
    consent: Literal["from_data", "assumed"] = "from_data"  # assumed: offline evaluation only
    points: Literal["from_data", "derive"] = "derive"  # derive: 1 point per currency unit when no ledger
    tables: dict[str, TableMapping]

    @field_validator("tables")
    @classmethod
    def _known_tables(cls, tables: dict) -> dict:
        unknown = sorted(set(tables) - set(CONTRACTS))
        if unknown:
            raise ValueError(f"unknown table(s) {unknown}; contract tables are {sorted(CONTRACTS)}")
        if "transactions" not in tables:
            raise ValueError("the transactions table is required")
        for name, table in tables.items():
            fields = set(_contract_fields(name)) | set(HELPER_FIELDS.get(name, {}))
            for group in ("columns", "constants", "derive"):
                extra = sorted(set(getattr(table, group)) - fields)
                if extra:
                    raise ValueError(f"{name}.{group}: unknown field(s) {extra}; fields are {sorted(fields)}")
            if table.from_transactions and name not in ("members", "items"):
                raise ValueError(f"{name}.from_transactions: only members and items can be built from transactions")
        return tables

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, tz: str) -> str:
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(tz)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as err:
            raise ValueError(f"unknown time zone {tz!r} (an IANA name such as Europe/London)") from err
        return tz


@functools.cache
def _contract_fields(table: str) -> tuple[str, ...]:
    return tuple(CONTRACTS[table].to_schema().columns)  # pandera builds the schema each call: slow


def validate_dataset_name(name: str) -> str:
    if not DATASET_NAME.match(name or ""):
        raise MappingError(f"dataset name {name!r}: use lower-case letters, digits and '_' only ([a-z0-9_]+)")
    return name


def load_mapping(path: Path | str | None, source_tables: list[str] | None = None) -> Mapping:
    """Read and check a mapping file; without one, every table present in the source maps by
    its contract field names (``source_tables``: the tables found there)."""
    if path is None:
        raw: dict = {"tables": {t: {} for t in (source_tables or [])}}
    else:
        path = Path(path)
        if not path.exists():
            raise MappingError(f"mapping file {path} not found")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise MappingError(f"mapping {path}: not valid YAML ({str(err).splitlines()[0]})") from err
        if not isinstance(raw, dict):
            raise MappingError(f"mapping {path}: expected a mapping of settings at the top level")
    try:
        return Mapping.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "mapping"
        more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
        raise MappingError(f"mapping setting {where}: {first['msg']}{more}") from err


TEMPLATE = """\
# loyalty-ml mapping: how your export maps onto the data contracts.
# Import:   loyalty-ml data import --dataset my_shop --source EXPORT_DIR --mapping mapping.yaml
# Only `tables.transactions` is required; members and items can be built from it
# (from_transactions: true), the other tables are optional and start empty.

timezone: Europe/London     # of times written without an offset (curated times are UTC)
decimal: "."                # "," for 12,50
thousands: ""               # "." or "," or " " when numbers carry a thousands separator
currency: GBP               # ISO 4217; 1 point per unit of it
margin_rate: 0.3            # for items without a margin
consent: from_data          # or "assumed" (no consent records: offline evaluation only)
points: derive              # derive the ledger (1 point per currency unit) when none is given

tables:
  transactions:
    source: transactions.csv          # a file in the source folder (.csv .parquet .jsonl), or a table name
    # query: SELECT * FROM sales WHERE ...   # for a database source (--source postgresql+psycopg://...)
    columns:                          # contract field: your column
      order_id: Invoice
      member_id: Customer ID
      item_id: StockCode
      quantity: Quantity
      unit_price: Price               # helper: feeds amount and the items' price
      ts: InvoiceDate
      description: Description        # helper: feeds the items' category rule
      region: Country                 # helper: the members' region
    date_format: "%d/%m/%Y %H:%M"     # strftime; default ISO 8601
    constants:
      channel: online
      store_id: null
    derive:
      amount: quantity * unit_price
    rules:                            # first match wins; rejected rows are quarantined with the reason
      - reject: cancellation
        where: {field: order_id, starts_with: "C"}
      - reject: missing customer id
        where: {field: member_id, missing: true}
      - reject: return or correction (quantity <= 0)
        where: {field: quantity, le: 0}
  members:
    from_transactions: true           # first purchase = join date, tier from 12-month spend
    # source: crm.csv                 # with it, your rows (ids + consent) win; gaps come from the sales
  items:
    from_transactions: true           # price = median unit price
    derive:
      category_l1: {of: description, last_words: 1}
      category_l2: {of: description, patterns: {"MUG|CUP|TEAPOT": KITCHEN, "CARD|WRAP": PAPER}, default: OTHER}
  # offers:        {source: offers.csv}
  # exposures:     {source: exposures.csv}      # campaign sends, with treatment / control
  # responses:     {source: responses.csv}
  # engagement:    {source: engagement.jsonl}
  # points_ledger: {source: ledger.parquet}
"""
