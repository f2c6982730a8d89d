"""The ingest step: validate, quarantine, resolve identities, write the event store.

DIR/store/ holds, all written by DuckDB COPY (zstd parquet):

* events.parquet: accepted events in the contract's columns and types plus customer_id,
  customer_no (its integer key) and the coded columns, sorted by customer_id, ts, event_id;
  parquet format version 2, whose delta encoding of the sorted times scans faster;
* customer_index.parquet: customer_no, customer_id of every resolved customer, customer_no
  0, 1, 2, ... in customer_id order (a scan reads the integer and maps it back per customer);
* vocabulary.parquet: field, code, value of the dictionary codes events.parquet carries beside
  channel, event_type and category (channel_no, ...; 0 for NULL), so a scan reads small
  integers, not strings;
* identity.parquet: identifier, identifier_type, customer_id (sorted by identifier);
* customers.parquet: customer_id first, then the customers table's columns; one row a
  customer_id (the first row by file and row when several keys resolve to one person); empty
  (customer_id, customer_key) when the data directory has no customers table;
* shared_identifiers.parquet: the identifiers the shared-identifier guard cut;
* manifest.json: counts, the reports, and a fingerprint of the input files and configuration,
  so later commands can tell whether the store is stale (`store_is_current`).

Memory stays bounded by DuckDB (it spills joins and sorts to DIR/store/.tmp); only the
distinct (customer_key, link_key) pairs go through pandas and scipy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from features.config import DataConfig, OnlineStoreConfig
from features.errors import UserError
from features.ingest.contract import (
    CODED_COLUMNS,
    CUSTOMER_ID,
    CUSTOMER_INDEX,
    CUSTOMER_KEY,
    CUSTOMER_NO,
    EVENT_ID,
    EVENT_SCHEMA,
    EVENT_VOCABULARY,
    KEY_SEPARATOR,
    LINK_KEY,
    STORE_EVENTS_VARIABLE,
    TS,
    DataDir,
)
from features.ingest.identity import (
    IDENTIFIER,
    IDENTIFIER_TYPE,
    IdentitySummary,
    customer_id_sql,
    resolve_identities,
)
from features.ingest.tombstones import Tombstones
from features.ingest.validation import (
    CUSTOMER_KEY_CHECKED,
    FILE_ORDER,
    REASON,
    REASONS,
    ROW,
    ValidationReport,
    copy_to_parquet,
    rejection_hints,
    validate_customers,
    validate_events,
    write_quarantine,
)

STORE_VERSION = 3  # 2: customer_no and customer_index.parquet; 3: coded columns, vocabulary
SOURCE_CUSTOMER_ID = "source_customer_id"
EVENTS_FILE = "events.parquet"
IDENTITY_FILE = "identity.parquet"
CUSTOMERS_FILE = "customers.parquet"
SHARED_FILE = "shared_identifiers.parquet"
CUSTOMER_INDEX_FILE = "customer_index.parquet"
VOCABULARY_FILE = "vocabulary.parquet"
MANIFEST_FILE = "manifest.json"
STORE_FILES = [
    EVENTS_FILE,
    IDENTITY_FILE,
    CUSTOMERS_FILE,
    SHARED_FILE,
    CUSTOMER_INDEX_FILE,
    VOCABULARY_FILE,
]


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did: validation reports, identity summary, customers merged."""

    events: ValidationReport
    customers: ValidationReport | None
    identity: IdentitySummary
    customers_merged: int  # accepted customer rows dropped because an earlier row had their id
    customers_without_events: int
    store_events: int
    store: Path
    seconds: float
    # what to change in the configuration for the rejections that are configuration's to fix
    hints: list[str] = field(default_factory=list)
    profile_columns: list[str] = field(default_factory=list)  # the customers table's own
    customers_with_profile: int = 0  # customers with events who have a customers row

    def identity_summary_text(self) -> str:
        s = self.identity
        text = (
            f"identity: {s.identifiers:,} identifiers, {s.links:,} links -> "
            f"{s.customers:,} customers (largest {s.largest_component:,} identifiers); "
            f"{s.cut_identifiers:,} shared identifiers cut ({s.links_cut:,} links)"
        )
        if self.customers is not None:
            cols = self.profile_columns
            named = ", ".join(cols[:8]) + (", ..." if len(cols) > 8 else "")
            text += (
                f"\ncustomers table: {len(cols)} profile column(s) ({named or 'none'}) for "
                f"{self.customers_with_profile:,} of {s.customers:,} customers with events "
                f"(features profile_<column>); {self.customers_without_events:,} rows without "
                f"events; {self.customers_merged:,} rows merged into an earlier row of the same "
                "customer"
            )
        return text + f"\nwrote {self.store} in {self.seconds:.1f} s"

    def to_dict(self) -> dict:
        return {
            "events": self.events.to_dict(),
            "customers": None if self.customers is None else self.customers.to_dict(),
            "identity": self.identity.to_dict(),
            "customers_merged": self.customers_merged,
            "customers_without_events": self.customers_without_events,
            "store_events": self.store_events,
            "seconds": round(self.seconds, 3),
            "hints": self.hints,
            "profile_columns": self.profile_columns,
            "customers_with_profile": self.customers_with_profile,
        }


class IngestRefused(UserError):
    """Too few events passed validation: no store is written (the previous one, if any, is no
    longer current). Carries the reports and the hints, for the command line's table."""

    def __init__(
        self,
        message: str,
        events: ValidationReport,
        customers: ValidationReport | None,
        hints: list[str],
    ) -> None:
        super().__init__(message)
        self.events = events
        self.customers = customers
        self.hints = hints


def check_accepted_share(
    events: ValidationReport,
    customers: ValidationReport | None,
    hints: list[str],
    min_share: float,
) -> None:
    """Refuse (IngestRefused) when no event, or less than `min_share` of them, is accepted;
    the message names the first configuration hint, or the commonest rejection reason."""
    share = events.accepted / events.received if events.received else 0.0
    if events.accepted and share >= min_share:
        return
    if not events.received:
        why = "the events files hold no rows"
    elif hints:
        why = hints[0]
    else:
        reason, n = max(events.by_reason.items(), key=lambda kv: kv[1])
        why = f"most rejected as {reason} ({n:,} rows; see quarantine/events.parquet)"
    message = (
        f"{events.accepted:,} of {events.received:,} events accepted ({share:.1%}; "
        f"data.validation.min_accepted_share is {min_share:g}): {why}"
    )
    raise IngestRefused(message, events, customers, hints)


def _data_dir(data_dir: DataDir | Path | str) -> DataDir:
    return data_dir if isinstance(data_dir, DataDir) else DataDir(Path(data_dir))


def input_fingerprint(data_dir: DataDir | Path | str) -> list[dict]:
    """Name (relative to the data directory), size and mtime of every input file."""
    dd = _data_dir(data_dir)
    out = []
    for path in [*dd.events(), *dd.customers()]:
        st = path.stat()
        out.append(
            {
                "path": path.relative_to(dd.root).as_posix(),
                "size": st.st_size,
                "mtime_ns": st.st_mtime_ns,
            }
        )
    return out


def config_fingerprint(config: DataConfig) -> str:
    return hashlib.sha256(config.model_dump_json().encode()).hexdigest()


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = self.last = time.perf_counter()

    def __call__(self, step: str) -> None:
        now = time.perf_counter()
        if self.enabled:
            print(f"ingest: {step} ({now - self.last:.1f} s)", file=sys.stderr, flush=True)
        self.last = now


def _default_memory_limit() -> str | None:
    """Half the physical memory: DuckDB spills beyond it, and the identity step's arrays
    (outside DuckDB's buffer manager) have room beside it."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return f"{max(total // 2 // 2**20, 1024)}MB"


def ingest(
    data_dir: DataDir | Path | str,
    config: DataConfig,
    now: datetime | None = None,
    progress: bool = True,
    memory_limit: str | None = None,
    online: OnlineStoreConfig | None = None,
) -> IngestReport:
    """Validate the data directory's events (and customers), quarantine rejected rows, resolve
    identities and write DIR/store. The manifest is removed first and written last, so a
    failed ingest never leaves a store that looks current. `memory_limit` caps DuckDB
    (default: half the physical memory); it spills to DIR/store/.tmp beyond it. `online` names
    the online store whose log of events received online joins the input (default: the data
    directory's SQLite store)."""
    dd = _data_dir(data_dir)
    t0 = time.perf_counter()
    step = _Progress(progress)
    from features.store.online_store import (  # it imports the batch engine, which imports this
        export_event_log,
        online_store_location,
    )

    # events received online (POST /events) join the input; the file is rewritten whole
    logged = export_event_log(dd, dd.online_events, online)
    if logged:
        where = online_store_location(dd, online)
        step(f"took {logged:,} events received online from {where}")
    store = dd.store
    store.mkdir(parents=True, exist_ok=True)
    (store / MANIFEST_FILE).unlink(missing_ok=True)
    fingerprint = input_fingerprint(dd)  # before reading: a file changed meanwhile is stale
    staging, spill = store / ".staging", store / ".tmp"
    for d in (staging, spill):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()

    con = duckdb.connect()
    try:
        con.execute(f"SET temp_directory = {_lit(str(spill))}")
        limit = memory_limit or _default_memory_limit()
        if limit:
            con.execute(f"SET memory_limit = {_lit(limit)}")
        events = validate_events(dd.events(), config, con, now=now, tombstones=Tombstones.load(dd))
        customer_files = dd.customers()
        customers = validate_customers(customer_files, config, con) if customer_files else None
        write_quarantine(dd, con, events, customers)
        step(
            f"validated {events.report.received:,} events: {events.report.accepted:,} "
            f"accepted, {events.report.rejected:,} rejected"
        )
        hints = rejection_hints(con, events, config)
        if customers is not None:
            hints += rejection_hints(con, customers, config)
        check_accepted_share(
            events.report,
            None if customers is None else customers.report,
            hints,
            config.validation.min_accepted_share,
        )

        pairs = con.sql(
            f"SELECT DISTINCT {CUSTOMER_KEY}, {LINK_KEY} FROM {events.accepted}"
        ).arrow()
        pairs = pairs.read_all() if isinstance(pairs, pa.RecordBatchReader) else pairs
        identity = resolve_identities(pairs, config)
        del pairs
        con.register("_nba_identity", identity.table)
        # customer_no: the rank of customer_id (byte order, as ORDER BY sorts VARCHAR)
        con.execute(
            f"CREATE TEMP TABLE _nba_numbers AS SELECT {CUSTOMER_ID}, "
            f"(row_number() OVER (ORDER BY {CUSTOMER_ID}) - 1)::UINTEGER AS {CUSTOMER_NO} "
            f"FROM (SELECT DISTINCT {CUSTOMER_ID} FROM _nba_identity)"
        )
        step(
            f"resolved {identity.summary.identifiers:,} identifiers into "
            f"{identity.summary.customers:,} customers"
        )

        _create_vocabulary(con, events.accepted)
        cols = ", ".join(f"e.{c}" for c in EVENT_SCHEMA.names)
        codes = ", ".join(
            f"COALESCE(v{i}.code, 0)::{_code_type(con, field)} AS {coded}"
            for i, (field, coded) in enumerate(CODED_COLUMNS.items())
        )
        code_joins = " ".join(
            f"LEFT JOIN (SELECT code, value FROM _nba_vocabulary WHERE field = {_lit(field)}) v{i} "
            f"ON v{i}.value = e.{field}"
            for i, field in enumerate(CODED_COLUMNS)
        )
        copy_to_parquet(
            con,
            f"SELECT {cols}, m.{CUSTOMER_ID}, n.{CUSTOMER_NO}, {codes} FROM {events.accepted} e "
            f"JOIN _nba_identity m ON e.{CUSTOMER_KEY} = m.{IDENTIFIER} "
            f"JOIN _nba_numbers n ON n.{CUSTOMER_ID} = m.{CUSTOMER_ID} {code_joins} "
            f"ORDER BY n.{CUSTOMER_NO}, e.{TS}, e.{EVENT_ID}",
            staging / EVENTS_FILE,
            parquet_version=2,
        )
        copy_to_parquet(
            con, "SELECT * FROM _nba_vocabulary ORDER BY field, code", staging / VOCABULARY_FILE
        )
        copy_to_parquet(
            con,
            f"SELECT {CUSTOMER_NO}, {CUSTOMER_ID} FROM _nba_numbers ORDER BY {CUSTOMER_NO}",
            staging / CUSTOMER_INDEX_FILE,
        )
        written = con.execute(
            f"SELECT count(*) FROM read_parquet({_lit(str(staging / EVENTS_FILE))})"
        ).fetchall()[0][0]
        if written != events.report.accepted:
            raise AssertionError(f"store holds {written} events, {events.report.accepted} accepted")
        step(f"wrote {written:,} events")

        copy_to_parquet(
            con,
            f"SELECT {IDENTIFIER}, split_part({IDENTIFIER}, {_lit(KEY_SEPARATOR)}, 1) AS "
            f"{IDENTIFIER_TYPE}, "
            f"{CUSTOMER_ID} FROM _nba_identity ORDER BY {IDENTIFIER}",
            staging / IDENTITY_FILE,
        )
        con.register("_nba_shared", identity.cut)
        copy_to_parquet(con, "SELECT * FROM _nba_shared", staging / SHARED_FILE)
        merged, without_events = _write_customers(con, customers, staging / CUSTOMERS_FILE)
        profile, with_profile = _profile_reach(con, staging / CUSTOMERS_FILE)
        step("wrote identity, shared identifiers and customers")
    finally:
        con.close()

    seconds = time.perf_counter() - t0
    report = IngestReport(
        events=events.report,
        customers=None if customers is None else customers.report,
        identity=identity.summary,
        customers_merged=merged,
        customers_without_events=without_events,
        store_events=int(written),
        store=store,
        seconds=seconds,
        hints=hints,
        profile_columns=profile,
        customers_with_profile=with_profile,
    )
    for name in STORE_FILES:
        os.replace(staging / name, store / name)
    manifest = {
        "version": STORE_VERSION,
        "created_at": datetime.now(UTC).isoformat(),
        "now": None if now is None else now.isoformat(),
        "inputs": fingerprint,
        "config": config_fingerprint(config),
        "report": report.to_dict(),
        "files": STORE_FILES,
    }
    tmp = store / f".{MANIFEST_FILE}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, store / MANIFEST_FILE)
    shutil.rmtree(staging, ignore_errors=True)
    shutil.rmtree(spill, ignore_errors=True)
    return report


def _create_vocabulary(con: duckdb.DuckDBPyConnection, events: str) -> None:
    """Temp table _nba_vocabulary (field, code, value): each coded column's distinct values,
    numbered 1, 2, ... in sorted order."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _nba_vocabulary AS "
        + " UNION ALL ".join(
            f"SELECT {_lit(field)} AS field, "
            f"(row_number() OVER (ORDER BY value))::UINTEGER AS code, value "
            f"FROM (SELECT DISTINCT CAST({field} AS VARCHAR) AS value FROM {events} "
            f"WHERE {field} IS NOT NULL)"
            for field in CODED_COLUMNS
        )
    )


def _code_type(con: duckdb.DuckDBPyConnection, field: str) -> str:
    """The narrowest unsigned integer type holding a coded column's codes."""
    query = f"SELECT count(*) FROM _nba_vocabulary WHERE field = {_lit(field)}"
    (n,) = con.execute(query).fetchone()
    return "USMALLINT" if n < 2**16 else "UINTEGER"


def _write_customers(con: duckdb.DuckDBPyConnection, customers, target: Path) -> tuple[int, int]:
    """Write customers with their customer_id (one row a customer_id, the first by file and
    row); a key no event mentions gets the id of its own one-identifier component. Returns
    (rows merged, customers without events)."""
    if customers is None:
        copy_to_parquet(
            con,
            f"SELECT NULL::VARCHAR AS {CUSTOMER_ID}, NULL::VARCHAR AS {CUSTOMER_KEY} LIMIT 0",
            target,
        )
        return 0, 0
    own = [r[0] for r in con.execute(f"DESCRIBE {customers.accepted}").fetchall()]
    # a customers table may carry its own customer_id: keep it, renamed
    rename = f" RENAME ({CUSTOMER_ID} AS {SOURCE_CUSTOMER_ID})" if CUSTOMER_ID in own else ""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _nba_customers_resolved AS
        SELECT coalesce(m.{CUSTOMER_ID}, {customer_id_sql(f"CAST(c.{CUSTOMER_KEY} AS VARCHAR)")})
                   AS {CUSTOMER_ID},
               m.{CUSTOMER_ID} IS NULL AS _nba_no_events,
               c.* EXCLUDE ({REASON}, {REASONS}, {CUSTOMER_KEY_CHECKED}){rename}
        FROM {customers.checked} c
        LEFT JOIN _nba_identity m ON CAST(c.{CUSTOMER_KEY} AS VARCHAR) = m.{IDENTIFIER}
        WHERE c.{REASON} IS NULL
        """
    )
    copy_to_parquet(
        con,
        f"SELECT * EXCLUDE (_nba_no_events, {FILE_ORDER}, {ROW}) FROM _nba_customers_resolved "
        f"QUALIFY row_number() OVER (PARTITION BY {CUSTOMER_ID} ORDER BY {FILE_ORDER}, {ROW}) = 1 "
        f"ORDER BY {CUSTOMER_ID}",
        target,
    )
    rows, ids, no_events = con.execute(
        f"SELECT count(*), count(DISTINCT {CUSTOMER_ID}), count(*) FILTER (_nba_no_events) "
        "FROM _nba_customers_resolved"
    ).fetchall()[0]
    return int(rows - ids), int(no_events)


def _profile_reach(con: duckdb.DuckDBPyConnection, customers_file: Path) -> tuple[list[str], int]:
    """The customers table's profile columns (the features' `profile_<column>`) and how many
    customers with events have a row in it."""
    path = _lit(str(customers_file))
    names = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM read_parquet({path})").fetchall()]
    skip = {CUSTOMER_ID, CUSTOMER_KEY, SOURCE_CUSTOMER_ID}
    (n,) = con.execute(
        f"SELECT count(*) FROM read_parquet({path}) c "
        f"WHERE c.{CUSTOMER_ID} IN (SELECT {CUSTOMER_ID} FROM _nba_numbers)"
    ).fetchone()
    return [c for c in names if c not in skip], int(n)


def store_is_current(data_dir: DataDir | Path | str, config: DataConfig | None = None) -> bool:
    """True when DIR/store was written by this store version from exactly the current input
    files (names, sizes, mtimes) and, when `config` is given, the same data configuration."""
    dd = _data_dir(data_dir)
    try:
        manifest = json.loads((dd.store / MANIFEST_FILE).read_text())
        inputs = input_fingerprint(dd)
    except (FileNotFoundError, json.JSONDecodeError):
        return False
    if manifest.get("version") != STORE_VERSION or manifest.get("inputs") != inputs:
        return False
    if config is not None and manifest.get("config") != config_fingerprint(config):
        return False
    return all((dd.store / name).is_file() for name in STORE_FILES)


def open_store(data_dir: DataDir | Path | str) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection (session TimeZone UTC) with views `events`, `customers`,
    `identity`, `shared_identifiers`, `customer_index` and `event_vocabulary` over DIR/store."""
    dd = _data_dir(data_dir)
    missing = [name for name in STORE_FILES if not (dd.store / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{dd.store}: no event store ({', '.join(missing)} missing); run `nba ingest` first"
        )
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for view, name in [
        ("events", EVENTS_FILE),
        ("customers", CUSTOMERS_FILE),
        ("identity", IDENTITY_FILE),
        ("shared_identifiers", SHARED_FILE),
        (CUSTOMER_INDEX, CUSTOMER_INDEX_FILE),
        (EVENT_VOCABULARY, VOCABULARY_FILE),
    ]:
        path = _lit(str((dd.store / name).resolve()))
        con.execute(f"CREATE VIEW {view} AS SELECT * FROM read_parquet({path})")
    con.execute(
        f"SET VARIABLE {STORE_EVENTS_VARIABLE} = {_lit(str((dd.store / EVENTS_FILE).resolve()))}"
    )
    return con


@dataclass(frozen=True)
class StoreFile:
    """The event store's events.parquet as a snapshot scan reads it: the row groups of a
    customer_no range, read by pyarrow (about half the CPU of a DuckDB scan of the same
    columns). The file is sorted by customer_no, and each row group's statistics give its
    first and last customer_no; `customer_ids[n]` is customer_no n's customer_id."""

    path: str
    metadata: pq.FileMetaData  # parsed once: a range's read does not parse the footer again
    group_first: np.ndarray
    group_last: np.ndarray
    group_rows: np.ndarray
    customer_ids: pa.Array

    @classmethod
    def of(cls, con: duckdb.DuckDBPyConnection, events: str) -> StoreFile | None:
        """The store file behind the relation `events` when it is the event store's `events`
        view (`open_store` names its file in a connection variable) with customer_no, the
        coded columns, `customer_index`, `event_vocabulary` and row-group statistics; else
        None (a scan then reads the relation through DuckDB)."""
        if events != "events":
            return None
        try:
            path = con.sql(f"SELECT getvariable('{STORE_EVENTS_VARIABLE}')").fetchall()[0][0]
            con.sql(f"SELECT field, code, value FROM {EVENT_VOCABULARY} LIMIT 0")
            ids = con.sql(
                f"SELECT {CUSTOMER_ID} FROM {CUSTOMER_INDEX} ORDER BY {CUSTOMER_NO}"
            ).to_arrow_table()
        except duckdb.Error:
            return None
        if not path or not Path(path).is_file():
            return None
        meta = pq.ParquetFile(path).metadata
        names = meta.schema.names
        if not {CUSTOMER_NO, *CODED_COLUMNS.values()} <= set(names):
            return None
        col = names.index(CUSTOMER_NO)
        bounds = []
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            stats = group.column(col).statistics
            if group.num_rows and (stats is None or not stats.has_min_max):
                return None
            first, last = (stats.min, stats.max) if group.num_rows else (0, -1)
            bounds.append((first, last, group.num_rows))
        table = np.array(bounds, dtype=np.int64).reshape(-1, 3)
        return cls(
            path=path,
            metadata=meta,
            group_first=table[:, 0],
            group_last=table[:, 1],
            group_rows=table[:, 2],
            customer_ids=ids.column(0).combine_chunks(),
        )

    @property
    def n_customers(self) -> int:
        return len(self.customer_ids)

    def ranges(self, partition_events: int) -> list[tuple[int, int]]:
        """customer_no ranges [lo, hi) of about `partition_events` events each, cut where a row
        group starts, covering 0 .. n_customers."""
        total = int(self.group_rows.sum())
        parts = max(1, math.ceil(total / max(partition_events, 1)))
        ends = np.cumsum(self.group_rows)
        cuts = {
            int(self.group_first[np.searchsorted(ends, total * k / parts, side="right")])
            for k in range(1, parts)
        }
        edges = [0, *sorted(c for c in cuts if 0 < c < self.n_customers), self.n_customers]
        return list(zip(edges[:-1], edges[1:], strict=True))

    def read(self, lo: int, hi: int, columns: list[str]) -> pa.Table:
        """The rows of the row groups holding customer_no lo .. hi - 1 (the first and last may
        hold neighbours too: the caller keeps its range)."""
        groups = np.flatnonzero((self.group_last >= lo) & (self.group_first < hi))
        file = pq.ParquetFile(self.path, metadata=self.metadata)
        return file.read_row_groups(groups.tolist(), columns=columns)
