"""Vectorised validation of the events and customers tables on DuckDB, with a quarantine.

Every row read is either accepted or rejected with a named reason; nothing is dropped silently
(accepted + rejected == received is checked on every run). The checks are SQL expressions, so
the same code validates a thousand rows in a test and 100M rows out of core.

Provenance: `source_file` is the path as given, `source_row` the 1-based data row of that file
(header excluded: line `source_row + 1` of a CSV without embedded newlines; row
`source_row - 1` of a parquet file in `file_row_number` terms).
"""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb

from features.config import DataConfig
from features.errors import UserError
from features.ingest.contract import (
    ACTION_ID,
    AMOUNT,
    CATEGORY,
    CHANNEL,
    CUSTOMER_KEY,
    CUSTOMERS_KEY,
    EVENT_ID,
    EVENT_SCHEMA,
    EVENT_TYPE,
    KEY_PATTERN,
    KEY_SEPARATOR,
    LINK_KEY,
    PROPENSITY,
    REASON,
    REQUIRED_EVENT_COLUMNS,
    SOURCE_FILE,
    SOURCE_ROW,
    TS,
    DataDir,
)
from features.ingest.privacy import Pseudonymiser, missing_secret_message
from features.ingest.tombstones import ERASED, Tombstones

# rejection reasons, in priority order: a row's `reason` is the first that applies
MISSING_EVENT_ID = "missing_event_id"
EMPTY_CUSTOMER_KEY = "empty_customer_key"
MALFORMED_CUSTOMER_KEY = "malformed_customer_key"
MALFORMED_LINK_KEY = "malformed_link_key"
UNKNOWN_CHANNEL = "unknown_channel"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
MISSING_TIMESTAMP = "missing_timestamp"
UNPARSEABLE_TIMESTAMP = "unparseable_timestamp"
ANCIENT_TIMESTAMP = "ancient_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
NON_NUMERIC_AMOUNT = "non_numeric_amount"
NEGATIVE_AMOUNT = "negative_amount"
NON_NUMERIC_PROPENSITY = "non_numeric_propensity"
PROPENSITY_OUT_OF_RANGE = "propensity_out_of_range"
DUPLICATE = "duplicate"

EVENT_REASONS = [
    MISSING_EVENT_ID,
    EMPTY_CUSTOMER_KEY,
    MALFORMED_CUSTOMER_KEY,
    MALFORMED_LINK_KEY,
    UNKNOWN_CHANNEL,
    UNKNOWN_EVENT_TYPE,
    MISSING_TIMESTAMP,
    UNPARSEABLE_TIMESTAMP,
    ANCIENT_TIMESTAMP,
    FUTURE_TIMESTAMP,
    NON_NUMERIC_AMOUNT,
    NEGATIVE_AMOUNT,
    NON_NUMERIC_PROPENSITY,
    PROPENSITY_OUT_OF_RANGE,
    ERASED,  # an erased person's identifier, without a new consent (features/ingest/tombstones.py)
    DUPLICATE,
]
CUSTOMER_REASONS = [EMPTY_CUSTOMER_KEY, MALFORMED_CUSTOMER_KEY, DUPLICATE]

REASONS = "reasons"  # every failing check of a row, ';'-joined, in priority order

# relations created on the connection
ACCEPTED_EVENTS = "accepted_events"
REJECTED_EVENTS = "rejected_events"
ACCEPTED_CUSTOMERS = "accepted_customers"
REJECTED_CUSTOMERS = "rejected_customers"
CHECKED_EVENTS = "_nba_checked_events"
CHECKED_CUSTOMERS = "_nba_checked_customers"
# internal provenance columns of the checked tables: position of the file in the list, row
FILE_ORDER = "_nba_file_order"
CUSTOMER_KEY_CHECKED = "_nba_customer_key"  # customer_key as text, in the checked table
ROW = "_nba_row"

_STRING_EVENT_COLUMNS = [EVENT_ID, CUSTOMER_KEY, LINK_KEY, CHANNEL, EVENT_TYPE, ACTION_ID, CATEGORY]
_NUMERIC_TYPES = re.compile(
    r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|UHUGEINT|"
    r"FLOAT|DOUBLE|DECIMAL.*)$"
)
_TIME_TYPES = re.compile(r"^(DATE|TIMESTAMP.*)$")
_ROW_SHIFT = 40  # sort position = file_order << 40 | row: 1e12 rows a file, 8M files


@dataclass(frozen=True)
class ValidationReport:
    """Row counts of one validated table; accepted + rejected == received."""

    received: int
    accepted: int
    rejected: int
    by_reason: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.accepted + self.rejected != self.received:
            raise AssertionError(
                f"validation lost rows: accepted {self.accepted} + rejected {self.rejected} "
                f"!= received {self.received}"
            )
        if sum(self.by_reason.values()) != self.rejected:
            raise AssertionError(f"by_reason {self.by_reason} does not sum to {self.rejected}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ValidationResult:
    """What `validate_*` left on the connection: the report and the names of its relations."""

    table: str
    files: list[Path]
    report: ValidationReport
    accepted: str  # view of accepted rows (events: the contract's columns and types)
    rejected: str  # view of rejected rows: values as text, reason, reasons, source_file/row
    checked: str  # internal table: every row with its reason (NULL when accepted)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return "parquet"
    if suffix == ".csv":
        return "csv"
    raise UserError(f"{path}: unsupported file type (expected .parquet or .csv)")


def _csv_header(path: Path) -> list[str]:
    """Column names from a CSV file's first record (RFC 4180, UTF-8, an optional BOM)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except UnicodeDecodeError as exc:
        raise UserError(
            f"{path}: not UTF-8 text ({exc.reason}: 0x{exc.object[exc.start]:02x}): save the file as UTF-8"
        ) from exc
    except csv.Error as exc:
        raise UserError(f"{path}: cannot read the CSV header: {exc}") from exc
    if not header:
        raise UserError(f"{path}: empty CSV file; expected a header row naming the columns")
    repeated = sorted({c for c in header if header.count(c) > 1})
    if repeated:
        raise UserError(f"{path}: CSV header repeats column(s) {repeated}")
    return header


def _csv_reader(path: Path, header: list[str]) -> str:
    """Every column as text, in a fixed dialect: no sniffing, which could skip rows it finds
    odd; a malformed row stops the read with an error naming its line."""
    columns = "{" + ", ".join(f"{_lit(c)}: 'VARCHAR'" for c in header) + "}"
    return (
        f"read_csv({_lit(str(path))}, auto_detect = false, header = true, delim = ',', "
        f"quote = '\"', escape = '\"', strict_mode = true, columns = {columns})"
    )


def duckdb_reason(exc: duckdb.Error) -> str:
    """DuckDB's read error in a line: its first paragraph without the offending line's text (a
    2 MB line would be the message), the SQL it ran or its error class."""
    lines = []
    for line in str(exc).splitlines():
        if not line.strip():
            if lines:
                break
            continue
        if not line.startswith(("Original Line:", "LINE ")):
            lines.append(line if len(line) <= 300 else f"{line[:300]}...")
    text = re.sub(r"^[A-Za-z ]*Error: ", "", "; ".join(lines))
    named = re.search(r"^\s*file = (.+)$", str(exc), flags=re.MULTILINE)  # a CSV error's file
    return f"{named.group(1)}: {text}" if named and named.group(1) not in text else text


def _columns(con: duckdb.DuckDBPyConnection, relation: str, path: Path | str) -> dict[str, str]:
    """Column name -> DuckDB type of a relation, with the file named in any read error."""
    try:
        rows = con.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    except duckdb.Error as exc:
        raise UserError(f"{path}: cannot read the file: {duckdb_reason(exc)}") from exc
    return {r[0]: r[1] for r in rows}


@dataclass(frozen=True)
class _Source:
    """One scan over some of a table's files: FROM clause, column types, file order, row."""

    kind: str  # parquet or csv
    relation: str
    types: dict[str, str]
    order: str
    row: str
    file: str  # SQL text of the row's file name


def _prepare(
    con: duckdb.DuckDBPyConnection, files: list[Path], table: str, required: list[str]
) -> list[_Source]:
    """Check every file's columns, register the file list and describe the scans: all
    parquet files in one union-by-name scan, each CSV in its own (for its row numbers)."""
    if not files:
        raise UserError(f"no {table} files to validate")
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"{f}: no such {table} file")
    con.execute("SET TimeZone = 'UTC'")
    con.execute("SET preserve_insertion_order = true")  # CSV row numbers follow file order
    kinds = [_kind(f) for f in files]
    parquet = [i for i, k in enumerate(kinds) if k == "parquet"]
    parquet_index = {order: i for i, order in enumerate(parquet)}
    values = ", ".join(
        f"({order}, {parquet_index.get(order, -1)}, {_lit(str(f))})"
        for order, f in enumerate(files)
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _nba_files_{table} AS SELECT * FROM (VALUES {values}) "
        f"t({FILE_ORDER}, parquet_index, {SOURCE_FILE})"
    )
    sources: list[_Source] = []
    for order, (f, kind) in enumerate(zip(files, kinds, strict=True)):
        if kind == "parquet":
            reader = f"read_parquet({_lit(str(f))})"
            types = _columns(con, reader, f)
        else:
            header = _csv_header(f)
            reader = _csv_reader(f, header)
            types = dict.fromkeys(header, "VARCHAR")
        missing = [c for c in required if c not in types]
        if missing:
            raise UserError(
                f"{f}: {table} file is missing required column(s) {missing}; expected "
                f"{required} (found {list(types)})"
            )
        if kind == "csv":
            # the streaming row_number() OVER () keeps the scan order (preserve_insertion_order)
            rel = f"(SELECT *, row_number() OVER () AS {ROW} FROM {reader}) r"
            sources.append(_Source("csv", rel, types, str(order), f"r.{ROW}", _lit(str(f))))
    if parquet:
        plist = "[" + ", ".join(_lit(str(files[i])) for i in parquet) + "]"
        reader = f"read_parquet({plist}, union_by_name = true"
        types = _columns(con, reader + ")", plist)
        reader += ", file_row_number = true)"
        rel = f"{reader} r JOIN _nba_files_{table} f ON f.parquet_index = r.file_index"
        sources.insert(
            0,
            _Source(
                "parquet",
                rel,
                types,
                f"f.{FILE_ORDER}",
                "r.file_row_number + 1",
                f"f.{SOURCE_FILE}",
            ),
        )
    return sources


def _received(con: duckdb.DuckDBPyConnection, files: list[Path], checked: str) -> int:
    """Rows in the files, counted apart from the validation query: parquet metadata row
    counts, and the dense CSV row numbers (max == count is checked)."""
    parquet = [str(f) for f in files if _kind(Path(f)) == "parquet"]
    n = 0
    if parquet:
        plist = "[" + ", ".join(_lit(p) for p in parquet) + "]"
        meta = f"SELECT sum(num_rows) FROM parquet_file_metadata({plist})"
        n += con.execute(meta).fetchall()[0][0]
    csv_orders = [i for i, f in enumerate(files) if _kind(Path(f)) == "csv"]
    if csv_orders:
        rows = con.execute(
            f"SELECT {FILE_ORDER}, max({ROW}), count(*) FROM {checked} "
            f"WHERE {FILE_ORDER} IN ({', '.join(map(str, csv_orders))}) GROUP BY ALL"
        ).fetchall()
        for order, mx, cnt in rows:
            if mx != cnt:
                raise AssertionError(f"{files[order]}: {cnt} rows but row numbers up to {mx}")
            n += cnt
    return int(n)


def _report(
    con: duckdb.DuckDBPyConnection, files: list[Path], checked: str, reasons: list[str]
) -> ValidationReport:
    counts = dict(con.execute(f"SELECT {REASON}, count(*) FROM {checked} GROUP BY ALL").fetchall())
    accepted = int(counts.pop(None, 0))
    unknown = set(counts) - set(reasons)
    if unknown:
        raise AssertionError(f"unexpected reasons {unknown}")
    by_reason = {r: int(counts[r]) for r in reasons if counts.get(r)}
    return ValidationReport(
        received=_received(con, files, checked),
        accepted=accepted,
        rejected=sum(by_reason.values()),
        by_reason=by_reason,
    )


def _blank(col: str) -> str:
    return f"({col} IS NULL OR trim({col}) = '')"


def _key_ok(col: str, identifier_types: list[str]) -> str:
    """`type:value` with a configured type: KEY_PATTERN with its type part narrowed to the
    configured types (one regex; types KEY_PATTERN's type part rejects can never match)."""
    head, sep, tail = KEY_PATTERN.partition(KEY_SEPARATOR)
    if not (sep and head.startswith("^")):  # a pattern of another shape: two checks
        listed = ", ".join(_lit(t) for t in identifier_types)
        return (
            f"(regexp_full_match({col}, {_lit(KEY_PATTERN)}) "
            f"AND split_part({col}, {_lit(KEY_SEPARATOR)}, 1) IN ({listed}))"
        )
    types = [t for t in identifier_types if re.fullmatch(head[1:], t)]
    if not types:
        return "false"
    pattern = "^(?:" + "|".join(re.escape(t) for t in types) + ")" + sep + tail
    return f"regexp_full_match({col}, {_lit(pattern)})"


def _where(source: _Source) -> str:
    """SQL text naming a row's file and row, for errors raised inside a query."""
    return f"({source.file} || ' row ' || CAST({source.row} AS VARCHAR))"


def _event_source(source: _Source, privacy: Pseudonymiser) -> str:
    """One source normalised to fixed types: strings as text (clear personal identifiers
    hashed), ts/amount/propensity as both the original text (only when the file holds text)
    and the parsed value."""
    types = source.types
    cols = []
    for c in _STRING_EVENT_COLUMNS:
        text = f"CAST(r.{_q(c)} AS VARCHAR)"
        if c in (CUSTOMER_KEY, LINK_KEY):
            text = privacy.key_sql(text, _where(source))
        cols.append(f"{text} AS {_q(c)}" if c in types else f"NULL::VARCHAR AS {_q(c)}")

    def parsed(c: str, target: str, native: re.Pattern[str]) -> None:
        t = types.get(c)
        if t is None:
            text, value = "NULL::VARCHAR", f"NULL::{target}"
        elif t == "VARCHAR":
            text, value = f"r.{_q(c)}", f"try_cast(r.{_q(c)} AS {target})"
        elif native.match(t):
            text, value = "NULL::VARCHAR", f"CAST(r.{_q(c)} AS {target})"
        else:  # a type the contract does not expect: judge its text rendering
            text = f"CAST(r.{_q(c)} AS VARCHAR)"
            value = f"try_cast({text} AS {target})"
        cols.append(f"{text} AS {_q(c + '_text')}")
        cols.append(f"{value} AS {_q(c + '_val')}")

    parsed(TS, "TIMESTAMPTZ", _TIME_TYPES)
    parsed(AMOUNT, "DOUBLE", _NUMERIC_TYPES)
    parsed(PROPENSITY, "DOUBLE", _NUMERIC_TYPES)
    cols.append(f"CAST({source.order} AS INTEGER) AS {FILE_ORDER}")
    cols.append(f"CAST({source.row} AS BIGINT) AS {ROW}")
    return f"SELECT {', '.join(cols)} FROM {source.relation}"


def _event_checks(config: DataConfig, now: datetime) -> list[tuple[str, str]]:
    ids = config.identity.identifier_types
    channels = ", ".join(_lit(c) for c in config.channel_names)
    event_types = ", ".join(_lit(t) for t in config.event_types.all)
    latest = now + timedelta(seconds=config.validation.future_tolerance_seconds)
    latest_sql = f"TIMESTAMPTZ {_lit(latest.isoformat())}"
    earliest_sql = f"TIMESTAMPTZ {_lit(_utc(config.validation.earliest_timestamp).isoformat())}"
    no_ts = f"({_blank('ts_text')} AND ts_val IS NULL)"

    def present(c: str) -> str:
        return f"({c}_val IS NOT NULL OR NOT {_blank(c + '_text')})"

    return [
        (MISSING_EVENT_ID, _blank(EVENT_ID)),
        (EMPTY_CUSTOMER_KEY, _blank(CUSTOMER_KEY)),
        (
            MALFORMED_CUSTOMER_KEY,
            f"NOT {_blank(CUSTOMER_KEY)} AND NOT {_key_ok(CUSTOMER_KEY, ids)}",
        ),
        (MALFORMED_LINK_KEY, f"NOT {_blank(LINK_KEY)} AND NOT {_key_ok(LINK_KEY, ids)}"),
        (UNKNOWN_CHANNEL, f"{CHANNEL} IS NULL OR {CHANNEL} NOT IN ({channels})"),
        (UNKNOWN_EVENT_TYPE, f"{EVENT_TYPE} IS NULL OR {EVENT_TYPE} NOT IN ({event_types})"),
        (MISSING_TIMESTAMP, no_ts),
        (UNPARSEABLE_TIMESTAMP, f"NOT {no_ts} AND (ts_val IS NULL OR NOT isfinite(ts_val))"),
        (ANCIENT_TIMESTAMP, f"isfinite(ts_val) AND ts_val < {earliest_sql}"),
        (FUTURE_TIMESTAMP, f"isfinite(ts_val) AND ts_val > {latest_sql}"),
        (
            NON_NUMERIC_AMOUNT,
            f"{present('amount')} AND (amount_val IS NULL OR NOT isfinite(amount_val))",
        ),
        (NEGATIVE_AMOUNT, "isfinite(amount_val) AND amount_val < 0"),
        (
            NON_NUMERIC_PROPENSITY,
            f"{present('propensity')} AND (propensity_val IS NULL OR NOT isfinite(propensity_val))",
        ),
        (
            PROPENSITY_OUT_OF_RANGE,
            "isfinite(propensity_val) AND NOT (propensity_val > 0 AND propensity_val <= 1)",
        ),
    ]


def _fails_sql(checks: list[tuple[str, str]]) -> str:
    parts = [f"CASE WHEN coalesce({cond}, false) THEN {_lit(name)} END" for name, cond in checks]
    return f"concat_ws(';', {', '.join(parts)})"


def _judged_sql(source: str, fails: str) -> str:
    """Rows of `source` with `reasons` (every failing check) and the primary `reason`."""
    return (
        f"SELECT *, nullif(_nba_fails, '') AS {REASONS}, "
        f"nullif(split_part(_nba_fails, ';', 1), '') AS {REASON} "
        f"FROM (SELECT *, {fails} AS _nba_fails FROM ({source}))"
    )


def _pos(prefix: str = "") -> str:
    """A row's place in the input: file order, then row, as one BIGINT."""
    return f"((CAST({prefix}{FILE_ORDER} AS BIGINT) << {_ROW_SHIFT}) + {prefix}{ROW})"


def _mark_duplicates(con: duckdb.DuckDBPyConnection, table: str, key: str) -> None:
    """Among the rows of `table` that pass every check, reject all but the first copy of a
    key (by file order, then row) as `duplicate`."""
    con.execute(
        f"""
        UPDATE {table} SET {REASON} = {_lit(DUPLICATE)}, {REASONS} = {_lit(DUPLICATE)}
        FROM (
            SELECT {key} AS _nba_key, min({_pos()}) AS _nba_first FROM {table}
            WHERE {REASON} IS NULL GROUP BY {key} HAVING count(*) > 1
        ) d
        WHERE {table}.{REASON} IS NULL AND {table}.{key} = d._nba_key
          AND {_pos(table + ".")} <> d._nba_first
        """
    )


def _create(con: duckdb.DuckDBPyConnection, sql: str, table: str) -> None:
    """Run the statement that reads the files; a CSV structure error names file and line."""
    try:
        con.execute(sql)
    except duckdb.Error as exc:
        secret = missing_secret_message(exc)
        if secret is not None:
            raise UserError(secret) from exc
        if not isinstance(exc, duckdb.InvalidInputException):
            raise
        raise UserError(f"cannot read the {table} files: {duckdb_reason(exc)}") from exc


def _utc(t: datetime) -> datetime:
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def _now(now: datetime | None) -> datetime:
    return datetime.now(UTC) if now is None else _utc(now)


def validate_events(
    files: list[Path],
    config: DataConfig,
    con: duckdb.DuckDBPyConnection,
    now: datetime | None = None,
    tombstones: Tombstones | None = None,
) -> ValidationResult:
    """Validate the events files; leave views `accepted_events` and `rejected_events` on `con`.

    `now` (default: the current UTC time; a naive value is UTC) bounds `future_timestamp`.
    Clear personal identifiers are hashed with NBA_PII_SECRET (features/ingest/privacy.py; without
    it they are an error); an erased identifier's events are `erased` (`tombstones`).
    Sets the session TimeZone to UTC. Raises ValueError naming the file and column when a
    required column is missing.
    """
    files = [Path(f) for f in files]
    sources = _prepare(con, files, "events", REQUIRED_EVENT_COLUMNS)
    privacy = Pseudonymiser.from_env(config.identity.personal_types)
    union = " UNION ALL BY NAME ".join(_event_source(s, privacy) for s in sources)
    checks = _event_checks(config, _now(now))
    judged = _judged_sql(union, _fails_sql(checks))
    # the *_text columns hold original text only where a file held text (CSV), so rejected
    # rows, duplicates included, come back as written; typed parquet columns cost nothing
    _create(
        con,
        f"""
        CREATE OR REPLACE TEMP TABLE {CHECKED_EVENTS} AS
        SELECT {EVENT_ID}, ts_val AS {TS}, {CUSTOMER_KEY}, {LINK_KEY}, {CHANNEL}, {EVENT_TYPE},
               {ACTION_ID}, amount_val AS {AMOUNT}, {CATEGORY}, propensity_val AS {PROPENSITY},
               ts_text, amount_text, propensity_text, {REASON}, {REASONS}, {FILE_ORDER}, {ROW}
        FROM ({judged})
        """,
        "events",
    )
    if tombstones:
        tombstones.mark_sql(con, CHECKED_EVENTS, REASON, REASONS)
    _mark_duplicates(con, CHECKED_EVENTS, EVENT_ID)

    def blank_null(c: str) -> str:
        return f"CASE WHEN trim({c}) = '' THEN NULL ELSE {c} END AS {c}"

    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW {ACCEPTED_EVENTS} AS
        SELECT {EVENT_ID}, {TS}, {CUSTOMER_KEY}, {blank_null(LINK_KEY)}, {CHANNEL},
               {EVENT_TYPE}, {blank_null(ACTION_ID)}, {AMOUNT}, {blank_null(CATEGORY)},
               {PROPENSITY}
        FROM {CHECKED_EVENTS} WHERE {REASON} IS NULL
        """
    )
    text_cols = []
    for c in EVENT_SCHEMA.names:
        if c in (TS, AMOUNT, PROPENSITY):
            text_cols.append(f"coalesce(c.{c}_text, CAST(c.{c} AS VARCHAR)) AS {c}")
        else:
            text_cols.append(f"c.{c}")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW {REJECTED_EVENTS} AS
        SELECT {", ".join(text_cols)}, c.{REASON}, c.{REASONS}, f.{SOURCE_FILE},
               c.{ROW} AS {SOURCE_ROW}
        FROM {CHECKED_EVENTS} c JOIN _nba_files_events f USING ({FILE_ORDER})
        WHERE c.{REASON} IS NOT NULL
        ORDER BY c.{FILE_ORDER}, c.{ROW}
        """
    )
    report = _report(con, files, CHECKED_EVENTS, EVENT_REASONS)
    return ValidationResult(
        "events", files, report, ACCEPTED_EVENTS, REJECTED_EVENTS, CHECKED_EVENTS
    )


# text forms a CSV profile column must all have to be read as that type; a round-trip test
# that keeps identifiers such as postcodes with leading zeros as text
_PROFILE_TYPES = [
    ("BIGINT", "regexp_full_match({v}, '-?(0|[1-9][0-9]{{0,17}})')"),
    ("DOUBLE", "regexp_full_match({v}, '-?(0|[1-9][0-9]*)(\\.[0-9]+)?([eE][-+]?[0-9]+)?')"),
    ("BOOLEAN", "lower({v}) IN ('true', 'false')"),
    (
        "DATE",
        "regexp_full_match({v}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}') AND "
        "try_cast({v} AS DATE) IS NOT NULL",
    ),
]


def _profile_columns(con: duckdb.DuckDBPyConnection, src: _Source) -> list[str]:
    """Select expressions of a CSV source's columns with inferred types: the first of
    BIGINT, DOUBLE, BOOLEAN, DATE every non-blank value has the form of, else text as read.
    customer_key stays text (it is validated as such)."""
    profile = [c for c in src.types if c != CUSTOMERS_KEY]
    if not profile:
        return [f"r.{_q(CUSTOMERS_KEY)}"]
    tests = []
    for c in profile:
        v = f"nullif(trim(r.{_q(c)}), '')"
        tests += [f"bool_and({v} IS NULL OR ({t.format(v=v)}))" for _, t in _PROFILE_TYPES]
        tests.append(f"count({v})")
    try:
        got = con.execute(f"SELECT {', '.join(tests)} FROM {src.relation}").fetchall()[0]
    except duckdb.InvalidInputException as exc:
        raise UserError(f"cannot read the customers files: {duckdb_reason(exc)}") from exc
    width = len(_PROFILE_TYPES) + 1
    out = []
    for c in src.types:
        if c == CUSTOMERS_KEY:
            out.append(f"r.{_q(c)}")
            continue
        j = profile.index(c) * width
        flags, present = got[j : j + width - 1], got[j + width - 1]
        kind = next((t for (t, _), ok in zip(_PROFILE_TYPES, flags, strict=True) if ok), None)
        if present and kind is not None:
            out.append(f"CAST(nullif(trim(r.{_q(c)}), '') AS {kind}) AS {_q(c)}")
        else:
            out.append(f"r.{_q(c)}")
    return out


def validate_customers(
    files: list[Path], config: DataConfig, con: duckdb.DuckDBPyConnection
) -> ValidationResult:
    """Validate the customers files: a well-formed `customer_key`, once (later copies of a key
    are `duplicate`). Other columns are profile columns, kept as read (parquet) or typed by
    their values over the whole file (CSV, see `_profile_columns`)."""
    files = [Path(f) for f in files]
    sources = _prepare(con, files, "customers", [CUSTOMERS_KEY])
    privacy = Pseudonymiser.from_env(config.identity.personal_types)
    key_col = f"r.{_q(CUSTOMERS_KEY)}"
    selects = []
    for src in sources:
        if src.kind == "csv":
            cols = _profile_columns(con, src)
        else:  # parquet: its own types
            cols = [f"r.{_q(c)}" for c in src.types]
        # the key hashed like the events' keys, so the customers join their events
        where = _where(src)
        hashed_key = privacy.key_sql(f"CAST({key_col} AS VARCHAR)", where)
        cols = [f"{hashed_key} AS {_q(CUSTOMERS_KEY)}" if c == key_col else c for c in cols]
        selects.append(
            f"SELECT {', '.join(cols)}, CAST({src.order} AS INTEGER) AS {FILE_ORDER}, "
            f"CAST({src.row} AS BIGINT) AS {ROW} FROM {src.relation}"
        )
    union = " UNION ALL BY NAME ".join(selects)
    key = CUSTOMER_KEY_CHECKED
    keyed = f"SELECT *, CAST({_q(CUSTOMERS_KEY)} AS VARCHAR) AS {key} FROM ({union})"
    ids = config.identity.identifier_types
    checks = [
        (EMPTY_CUSTOMER_KEY, _blank(key)),
        (MALFORMED_CUSTOMER_KEY, f"NOT {_blank(key)} AND NOT {_key_ok(key, ids)}"),
    ]
    judged = _judged_sql(keyed, _fails_sql(checks))
    _create(
        con,
        f"CREATE OR REPLACE TEMP TABLE {CHECKED_CUSTOMERS} AS SELECT * EXCLUDE (_nba_fails) "
        f"FROM ({judged})",
        "customers",
    )
    _mark_duplicates(con, CHECKED_CUSTOMERS, key)
    internal = f"{REASON}, {REASONS}, {FILE_ORDER}, {ROW}, {key}"
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {ACCEPTED_CUSTOMERS} AS SELECT * EXCLUDE ({internal}) "
        f"FROM {CHECKED_CUSTOMERS} WHERE {REASON} IS NULL ORDER BY {FILE_ORDER}, {ROW}"
    )
    columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {ACCEPTED_CUSTOMERS}").fetchall()]
    as_text = ", ".join(f"CAST(c.{_q(c)} AS VARCHAR) AS {_q(c)}" for c in columns)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW {REJECTED_CUSTOMERS} AS
        SELECT {as_text}, c.{REASON}, c.{REASONS}, f.{SOURCE_FILE}, c.{ROW} AS {SOURCE_ROW}
        FROM {CHECKED_CUSTOMERS} c JOIN _nba_files_customers f USING ({FILE_ORDER})
        WHERE c.{REASON} IS NOT NULL
        ORDER BY c.{FILE_ORDER}, c.{ROW}
        """
    )
    report = _report(con, files, CHECKED_CUSTOMERS, CUSTOMER_REASONS)
    return ValidationResult(
        "customers", files, report, ACCEPTED_CUSTOMERS, REJECTED_CUSTOMERS, CHECKED_CUSTOMERS
    )


def rejection_hints(
    con: duckdb.DuckDBPyConnection, result: ValidationResult, config: DataConfig, limit: int = 3
) -> list[str]:
    """What to change in the configuration for the rejections that are configuration's to fix,
    most rows first: an identifier type, a channel or an event type the data uses and the
    configuration lacks, or timestamps beyond the future tolerance. Each names the setting."""
    checked = result.checked
    head = KEY_PATTERN.partition(KEY_SEPARATOR)[0].lstrip("^")
    known = ", ".join(_lit(t) for t in config.identity.identifier_types) or "NULL"
    sep = _lit(KEY_SEPARATOR)
    found: list[tuple[int, str]] = []

    def add(sql: str, text: str) -> None:
        for value, n in con.execute(sql + f" ORDER BY 2 DESC, 1 LIMIT {limit}").fetchall():
            found.append((int(n), text.format(value=value, n=int(n))))

    key_columns = (
        [CUSTOMER_KEY_CHECKED] if result.table == "customers" else [CUSTOMER_KEY, LINK_KEY]
    )
    malformed = ", ".join(_lit(r) for r in (MALFORMED_CUSTOMER_KEY, MALFORMED_LINK_KEY))
    for col in key_columns:
        kind = f"split_part({col}, {sep}, 1)"
        add(
            f"SELECT {kind}, count(*) FROM {checked} WHERE {REASON} IN ({malformed}) "
            f"AND contains({col}, {sep}) AND regexp_full_match({kind}, {_lit(head)}) "
            f"AND {kind} NOT IN ({known}) GROUP BY 1",
            "unknown identifier type '{value}' ({n:,} rows): add it to "
            "data.identity.identifier_types",
        )
    if result.table == "events":
        add(
            f"SELECT {CHANNEL}, count(*) FROM {checked} WHERE {REASON} = {_lit(UNKNOWN_CHANNEL)} "
            f"AND {CHANNEL} IS NOT NULL GROUP BY 1",
            "unknown channel '{value}' ({n:,} rows): add it to data.channels "
            "(data.channels.{value}: {{identifier: <type>}})",
        )
        add(
            f"SELECT {EVENT_TYPE}, count(*) FROM {checked} "
            f"WHERE {REASON} = {_lit(UNKNOWN_EVENT_TYPE)} AND {EVENT_TYPE} IS NOT NULL GROUP BY 1",
            "unknown event type '{value}' ({n:,} rows): add it to data.event_types (engagement, "
            "purchase, negative, outbound or feedback)",
        )
        add(
            f"SELECT max({TS}), count(*) FROM {checked} "
            f"WHERE {REASON} = {_lit(FUTURE_TIMESTAMP)} HAVING count(*) > 0",
            "{n:,} events stamped after now (the latest {value}): raise "
            "data.validation.future_tolerance_seconds, or pass --now",
        )
    return [text for _, text in sorted(found, key=lambda x: -x[0])]


def copy_to_parquet(
    con: duckdb.DuckDBPyConnection, query: str, target: Path, parquet_version: int = 1
) -> Path:
    """Write a query's rows to a zstd parquet file atomically (a temporary name, then rename).
    Format version 2 adds delta encodings (sorted integers and times shrink and scan faster)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    con.execute(
        f"COPY ({query}) TO {_lit(str(tmp))} "
        f"(FORMAT parquet, COMPRESSION zstd, PARQUET_VERSION V{int(parquet_version)})"
    )
    os.replace(tmp, target)
    return target


def write_quarantine(
    data_dir: DataDir,
    con: duckdb.DuckDBPyConnection,
    events: ValidationResult,
    customers: ValidationResult | None = None,
) -> list[Path]:
    """Write rejected rows to DIR/quarantine/{events,customers}.parquet and the reports to
    DIR/quarantine/report.json; returns the paths written. A stale customers quarantine is
    removed when no customers were validated."""
    out = data_dir.quarantine
    paths = [copy_to_parquet(con, f"SELECT * FROM {events.rejected}", out / "events.parquet")]
    stale = out / "customers.parquet"
    if customers is not None:
        paths.append(copy_to_parquet(con, f"SELECT * FROM {customers.rejected}", stale))
    elif stale.exists():
        stale.unlink()
    report = {
        "events": {**events.report.to_dict(), "files": [str(f) for f in events.files]},
        "customers": None
        if customers is None
        else {**customers.report.to_dict(), "files": [str(f) for f in customers.files]},
    }
    target = out / "report.json"
    tmp = out / ".report.json.tmp"
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, target)
    paths.append(target)
    return paths
