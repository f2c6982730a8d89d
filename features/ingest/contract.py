"""The data contract: table names, column names and types, and where a data directory keeps them.

Column names live here and only here; other modules import the constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from features.errors import UserError

# events columns
EVENT_ID = "event_id"
TS = "ts"
CUSTOMER_KEY = "customer_key"
LINK_KEY = "link_key"
CHANNEL = "channel"
EVENT_TYPE = "event_type"
ACTION_ID = "action_id"
AMOUNT = "amount"
CATEGORY = "category"
PROPENSITY = "propensity"

# added by the pipeline
CUSTOMER_ID = "customer_id"
# the event store's integer key: customer_id's rank among the store's customer_ids (0-based, in
# customer_id order), so a scan reads 4 bytes a row instead of the id; the view CUSTOMER_INDEX
# maps it back
CUSTOMER_NO = "customer_no"
CUSTOMER_INDEX = "customer_index"
# the event store's dictionary codes of channel, event type and category: each value's 1-based
# position among the store's sorted distinct values of its column, 0 for NULL, so a scan reads
# small integers instead of strings; the view EVENT_VOCABULARY (field, code, value) maps them back
CODED_COLUMNS = {CHANNEL: "channel_no", EVENT_TYPE: "event_type_no", CATEGORY: "category_no"}
EVENT_VOCABULARY = "event_vocabulary"
# the DuckDB variable in which `open_store` names the file behind its `events` view
STORE_EVENTS_VARIABLE = "nba_store_events_file"
REASON = "reason"
SOURCE_FILE = "source_file"
SOURCE_ROW = "source_row"

REQUIRED_EVENT_COLUMNS = [EVENT_ID, TS, CUSTOMER_KEY, CHANNEL, EVENT_TYPE]
OPTIONAL_EVENT_COLUMNS = [LINK_KEY, ACTION_ID, AMOUNT, CATEGORY, PROPENSITY]
EVENT_COLUMNS = REQUIRED_EVENT_COLUMNS + OPTIONAL_EVENT_COLUMNS

EVENT_SCHEMA = pa.schema(
    [
        pa.field(EVENT_ID, pa.string(), nullable=False),
        pa.field(TS, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field(CUSTOMER_KEY, pa.string(), nullable=False),
        pa.field(LINK_KEY, pa.string()),
        pa.field(CHANNEL, pa.string(), nullable=False),
        pa.field(EVENT_TYPE, pa.string(), nullable=False),
        pa.field(ACTION_ID, pa.string()),
        pa.field(AMOUNT, pa.float64()),
        pa.field(CATEGORY, pa.string()),
        pa.field(PROPENSITY, pa.float64()),
    ]
)

# customers: one row a customer, keyed by an identifier; any other columns are profile
CUSTOMERS_KEY = CUSTOMER_KEY

# identifiers are `type:value`; the type is a configured identifier type
KEY_SEPARATOR = ":"
# `type:value`: the value at most 500 characters, no spaces or control characters (a NUL or a
# megabyte "identifier" is hostile input, quarantined as a malformed key)
KEY_PATTERN = r"^[a-z][a-z0-9_]*:[^\s\x00-\x1f\x7f]{1,500}$"

TABLE_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class DataDir:
    """Where a data directory keeps each table and what the pipeline writes beside them."""

    root: Path

    @property
    def quarantine(self) -> Path:
        return self.root / "quarantine"

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def truth(self) -> Path:
        return self.root / "truth"

    @property
    def online_store(self) -> Path:
        """The online store (SQLite), which also holds the log of events received online."""
        return self.store / "online.sqlite"

    @property
    def online_events(self) -> Path:
        """The online store's event log exported as an events file, for the next ingest."""
        return self.root / "events" / "online-events.parquet"

    def table(self, name: str) -> list[Path]:
        """The files of a table: `name.parquet`, `name.csv`, or every such file in folder `name/`.
        A file that is a link to somewhere outside the data directory is refused (UserError):
        a data directory holds its data, and a link out can expose any file the user can read."""
        files: list[Path] = []
        for suffix in TABLE_SUFFIXES:
            single = self.root / f"{name}{suffix}"
            if single.is_file():
                files.append(single)
        folder = self.root / name
        if folder.is_dir():
            files.extend(
                sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in TABLE_SUFFIXES)
            )
        root = self.root.resolve()
        for f in files:
            target = f.resolve()
            if not target.is_relative_to(root):
                raise UserError(
                    f"{f}: links to {target}, outside the data directory {self.root}: copy or "
                    "move the file into the data directory"
                )
        return files

    def events(self) -> list[Path]:
        files = self.table("events")
        if not files:
            raise FileNotFoundError(
                f"{self.root}: no events found; expected events.parquet, events.csv or a folder "
                "events/ of .parquet or .csv files"
            )
        return files

    def customers(self) -> list[Path]:
        return self.table("customers")
