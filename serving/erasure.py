"""The right to erasure: forget a person everywhere this installation keeps them.

`forget(data_dir, key)` finds the person behind any identifier or customer_id (all identifiers
the identity graph links, in the event store and the online store), then removes them from:
every parquet, CSV and JSON-lines file under the data directory (the input events and customers,
the quarantine, the decision logs `decisions/*` and `events/decisions-*`, campaign outputs; a
clear identifier in an input file is recognised by its hash), the online store (either backend:
state, profile, identity entries, event log), the MLflow input examples under DIR/mlflow, and
rebuilds the event store from the erased inputs. Every rewrite goes to a temporary file that is
renamed over the old one, so a crash leaves each file whole, before or after. The erasure is
recorded in DIR/erasure/log.jsonl with salted hashes only (features/ingest/tombstones.py), so later
events of the person are quarantined as `erased` until they consent again.

`PrivacyGate` is the service's side: it hashes clear identifiers of POST /events and lookups,
and rejects events of erased identifiers.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from features.config import DataConfig, OnlineStoreConfig
from features.errors import UserError
from features.ingest.contract import CUSTOMER_ID, CUSTOMER_KEY, KEY_SEPARATOR, LINK_KEY, DataDir
from features.ingest.event_store import IDENTITY_FILE, MANIFEST_FILE, ingest
from features.ingest.privacy import MissingSecret, Pseudonymiser
from features.ingest.tombstones import (
    ERASED,
    ERASURE_DIR,
    LOG_FILE,
    Tombstones,
    append_erasure,
    erasure_dir,
    now_iso,
    read_erasures,
    read_salt,
    salted_hash,
)
from features.store.online_store import OnlineStoreBase

CLEAR_IDENTIFIER = "clear_identifier"  # POST /events: a clear identifier and no secret to hash it
MLFLOW_DIR = "mlflow"
INPUT_EXAMPLES = ("input_example.json", "serving_input_example.json")
_SKIP_DIRS = {ERASURE_DIR, MLFLOW_DIR}
_TABLE_SUFFIXES = {".parquet", ".csv", ".jsonl"}


@dataclass(frozen=True)
class Person:
    """Whom an erasure removes: every customer_id and identifier the graphs link to the key."""

    customer_ids: frozenset[str]
    identifiers: frozenset[str]

    @property
    def values(self) -> frozenset[str]:
        return self.customer_ids | self.identifiers


@dataclass
class ErasureReport:
    """What one erasure removed (counts only: nothing personal)."""

    at: str
    identifiers: int
    customers: int
    rows_removed: dict[str, int] = field(default_factory=dict)  # file (relative) -> rows
    online_events: int = 0
    input_examples: int = 0  # MLflow input examples emptied
    store_rebuilt: bool = False
    again: bool = False  # the key was erased before: this run cleaned every place again

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---------------------------------------------------------------------- who


def _store_identity(dd: DataDir, values: set[str]) -> tuple[set[str], set[str]]:
    """(customer_ids, identifiers) of the event store's identity graph touching `values`."""
    path = dd.store / IDENTITY_FILE
    if not path.is_file() or not values:
        return set(), set()
    table = pq.read_table(path, columns=["identifier", CUSTOMER_ID])
    arr = pa.array(sorted(values), type=pa.string())
    hit = pc.or_(pc.is_in(table["identifier"], arr), pc.is_in(table[CUSTOMER_ID], arr))
    cids = set(table.filter(hit)[CUSTOMER_ID].to_pylist())
    rows = table.filter(pc.is_in(table[CUSTOMER_ID], pa.array(sorted(cids), type=pa.string())))
    return cids, set(rows["identifier"].to_pylist())


def find_person(dd: DataDir, store: OnlineStoreBase | None, key: str) -> Person:
    """Every customer_id and identifier the key reaches through the event store's and the
    online store's identity graphs (followed to a fixed point)."""
    person = KEY_SEPARATOR in key
    cids: set[str] = set() if person else {key}
    idents: set[str] = {key} if person else set()
    values = {key}
    for _ in range(16):
        more_c, more_i = _store_identity(dd, values)
        if store is not None:
            for ident in idents | more_i:
                cid = store.resolve(ident)
                if cid is not None:
                    more_c.add(cid)
            for cid in cids | more_c:
                more_i |= set(store.identifiers(cid))
        new = (more_c | more_i) - values
        cids |= more_c
        idents |= more_i
        values |= new
        if not new:
            break
    if not idents and not (store is not None and key in cids and store.knows(key)):
        raise UserError(f"no customer known by {key!r}: expected a customer_id or `type:value`")
    return Person(frozenset(cids), frozenset(idents))


# ---------------------------------------------------------------------- files


def _atomic_path(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    return Path(name)


def _replace(tmp: Path, target: Path) -> None:
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


class _Matcher:
    """Tells whether a text value is one of the person's (clear identifiers by their hash)."""

    def __init__(self, person: Person, privacy: Pseudonymiser) -> None:
        self.values = person.values
        self.array = pa.array(sorted(self.values), type=pa.string())
        self.privacy = privacy

    def hit(self, value: object) -> bool:
        if not isinstance(value, str):
            return False
        if value in self.values:
            return True
        try:
            return self.privacy.hash_key(value) in self.values
        except MissingSecret:
            return False  # a clear identifier and no secret: it cannot be this person's hash

    def column_mask(self, column: pa.ChunkedArray) -> pa.ChunkedArray | None:
        """Rows of a string column holding one of the values: exact matches in arrow, and the
        distinct values that may be a clear identifier (a personal type's prefix) hashed."""
        column = column.cast(pa.string())
        hits = set(pc.unique(pc.filter(column, pc.is_in(column, self.array))).to_pylist())
        if self.privacy.personal:
            types = "|".join(self.privacy.personal)
            maybe = pc.match_substring_regex(column, rf"^\s*(?i:{types})\s*:")
            candidates = pc.unique(pc.filter(column, pc.fill_null(maybe, False))).to_pylist()
            hits |= {u for u in candidates if self.hit(u)}
        if not hits:
            return None
        return pc.fill_null(pc.is_in(column, pa.array(sorted(hits), type=pa.string())), False)


def _text_columns(schema: pa.Schema) -> list[str]:
    return [
        f.name
        for f in schema
        if pa.types.is_string(f.type)
        or pa.types.is_large_string(f.type)
        or (pa.types.is_dictionary(f.type) and pa.types.is_string(f.type.value_type))
    ]


def _group_mask(table: pa.Table, match: _Matcher) -> pa.ChunkedArray | None:
    mask = None
    for col in table.columns:
        if pa.types.is_dictionary(col.type):
            col = col.cast(pa.string())
        m = match.column_mask(col)
        if m is not None:
            mask = m if mask is None else pc.or_(mask, m)
    return mask


def _scrub_parquet(path: Path, match: _Matcher) -> int:
    """Rewrite a parquet file without the person's rows, a row group at a time (memory stays
    at one row group); a file without them is not touched."""
    file = pq.ParquetFile(path)
    text = _text_columns(file.schema_arrow)
    groups = range(file.num_row_groups)
    hit = {
        g
        for g in groups
        if text and _group_mask(file.read_row_group(g, columns=text), match) is not None
    }
    if not text or not hit:
        return 0
    removed = 0
    tmp = _atomic_path(path)
    try:
        with pq.ParquetWriter(tmp, file.schema_arrow, compression="zstd") as out:
            for g in groups:
                table = file.read_row_group(g)
                mask = _group_mask(table.select(text), match) if g in hit else None
                if mask is not None:
                    removed += int(pc.sum(mask).as_py() or 0)
                    table = table.filter(pc.invert(mask))
                out.write_table(table)
        _replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return removed


def _scrub_csv(path: Path, match: _Matcher) -> int:
    with path.open(newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    if not rows:
        return 0
    kept = [rows[0]] + [r for r in rows[1:] if not any(match.hit(v) for v in r)]
    removed = len(rows) - len(kept)
    if removed:
        tmp = _atomic_path(path)
        try:
            with tmp.open("w", newline="", encoding="utf-8") as f:
                csv.writer(f, lineterminator="\n").writerows(kept)
            _replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return removed


def _strings(value: object) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _scrub_jsonl(path: Path, match: _Matcher) -> int:
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            kept.append(line)  # a torn last line of a crash: nothing readable in it
            continue
        if not any(match.hit(s) for s in _strings(record)):
            kept.append(line)
    removed = len(lines) - len(kept)
    if removed:
        tmp = _atomic_path(path)
        try:
            tmp.write_text("".join(kept), encoding="utf-8")
            _replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return removed


def data_files(dd: DataDir) -> list[Path]:
    """Every table file under the data directory an erasure rewrites (not MLflow's, not the
    erasure log)."""
    out = []
    for path in sorted(dd.root.rglob("*")):
        rel = path.relative_to(dd.root)
        if rel.parts[0] in _SKIP_DIRS or any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_file() and path.suffix in _TABLE_SUFFIXES:
            out.append(path)
    return out


def scrub_files(dd: DataDir, person: Person, privacy: Pseudonymiser) -> dict[str, int]:
    """Remove the person's rows from every table file; {relative path: rows removed}."""
    match = _Matcher(person, privacy)
    scrub = {".parquet": _scrub_parquet, ".csv": _scrub_csv, ".jsonl": _scrub_jsonl}
    removed = {}
    for path in data_files(dd):
        n = scrub[path.suffix](path, match)
        if n:
            removed[path.relative_to(dd.root).as_posix()] = n
    return removed


def empty_input_examples(dd: DataDir) -> int:
    """Empty the data rows of every MLflow input example under DIR/mlflow (columns kept): they
    are feature rows of real customers without any identifier, so no row can be told apart as
    the person's, and none may survive an erasure. Returns the files changed."""
    root = dd.root / MLFLOW_DIR
    changed = 0
    for name in INPUT_EXAMPLES:
        for path in root.rglob(name) if root.is_dir() else []:
            doc = json.loads(path.read_text())
            inner = doc.get("dataframe_split", doc) if isinstance(doc, dict) else None
            if not isinstance(inner, dict) or not inner.get("data"):
                continue
            inner["data"] = []
            inner.pop("index", None)
            tmp = _atomic_path(path)
            try:
                tmp.write_text(json.dumps(doc))
                _replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            changed += 1
    return changed


# ---------------------------------------------------------------------- the erasure


def forget(
    data_dir: DataDir | Path,
    key: str,
    config: DataConfig,
    store: OnlineStoreBase | None = None,
    online: OnlineStoreConfig | None = None,
) -> ErasureReport:
    """Erase the person known by `key` (an identifier, clear or hashed, or a customer_id)
    everywhere; `store` is the open online store (None: none to erase from). Records the
    erasure (salted hashes, time) before removing anything, so an interrupted erasure still
    turns the person's later events away and can be run again."""
    dd = data_dir if isinstance(data_dir, DataDir) else DataDir(Path(data_dir))
    privacy = Pseudonymiser.from_env(config.identity.personal_types)
    key = privacy.hash_key(key.strip()) or key
    again = _erased_before(dd, key)
    cleanup = False
    try:
        person = find_person(dd, store, key)
    except UserError:
        if not again:
            raise
        # erased before (perhaps interrupted): clean every place again, no new record
        cleanup = True
        is_id = KEY_SEPARATOR in key
        person = Person(
            frozenset() if is_id else frozenset({key}), frozenset({key} if is_id else ())
        )
    cleanup = cleanup or (again and not person.customer_ids)
    if not again and not person.customer_ids and not _mentioned(dd, person, privacy):
        raise UserError(f"no customer known by {key!r} in {dd.root}")
    salt = read_salt(dd, create=True)
    assert salt is not None
    at = now_iso()
    if not cleanup:
        append_erasure(
            dd,
            {
                "at": at,
                "identifiers": sorted(salted_hash(salt, i) for i in person.identifiers),
                "customers": sorted(salted_hash(salt, c) for c in person.customer_ids),
            },
        )
    report = ErasureReport(at, len(person.identifiers), len(person.customer_ids), again=again)
    if store is not None:
        for cid in sorted(person.customer_ids) or [""]:
            report.online_events += store.forget_customer(cid, sorted(person.identifiers))
    had_store = (dd.store / MANIFEST_FILE).is_file()
    manifest = json.loads((dd.store / MANIFEST_FILE).read_text()) if had_store else {}
    report.rows_removed = scrub_files(dd, person, privacy)
    report.input_examples = empty_input_examples(dd)
    if had_store:
        now = manifest.get("now")
        ingest(
            dd,
            config,
            now=None if now is None else datetime.fromisoformat(now),
            progress=False,
            online=online,
        )
        report.store_rebuilt = True
    return report


def _erased_before(dd: DataDir, key: str) -> bool:
    """Whether the erasure log holds the key (an identifier or a customer_id)."""
    salt = read_salt(dd)
    if salt is None:
        return False
    h = salted_hash(salt, key)
    return any(h in r.get("identifiers", []) + r.get("customers", []) for r in read_erasures(dd))


def _mentioned(dd: DataDir, person: Person, privacy: Pseudonymiser) -> bool:
    """Whether any input file names the identifiers (a person the graphs do not hold yet)."""
    match = _Matcher(person, privacy)
    con = duckdb.connect()
    try:
        for path in dd.events() if dd.table("events") else []:
            if path.suffix != ".parquet":
                continue
            rel = f"read_parquet('{str(path).replace(chr(39), chr(39) * 2)}')"
            cols = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {rel}").fetchall()]
            for c in (CUSTOMER_KEY, LINK_KEY):
                if c in cols:
                    col = con.sql(f"SELECT DISTINCT {c} FROM {rel}").arrow()
                    col = col.read_all() if isinstance(col, pa.RecordBatchReader) else col
                    if match.column_mask(col.column(0)) is not None:
                        return True
    finally:
        con.close()
    return False


# ---------------------------------------------------------------------- the service's side


class PrivacyGate:
    """Clear identifiers hashed and erased identifiers turned away, for the service."""

    def __init__(self, data_dir: DataDir, config: DataConfig) -> None:
        self.data_dir = data_dir
        self.privacy = Pseudonymiser.from_env(config.identity.personal_types)
        self._stamp: tuple[int, int] | None = None
        self._tombstones = Tombstones(None)

    def key(self, key: str) -> str:
        """A lookup key with a clear identifier hashed (MissingSecret without the secret)."""
        return self.privacy.hash_key(key) or key

    @property
    def tombstones(self) -> Tombstones:
        """The erasure log as it is now (read again when the file changed)."""
        path = erasure_dir(self.data_dir) / LOG_FILE
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp:
            self._tombstones = Tombstones.load(self.data_dir)
            self._stamp = stamp
        return self._tombstones

    def screen(
        self, records: Sequence[MutableMapping[str, Any]], store: OnlineStoreBase
    ) -> dict[int, str]:
        """Hash the records' clear keys in place; {position: reason} of those to reject:
        `clear_identifier` (no secret to hash it with) or `erased`."""
        out: dict[int, str] = {}
        for i, r in enumerate(records):
            for c in (CUSTOMER_KEY, LINK_KEY):
                try:
                    if isinstance(r.get(c), str):
                        r[c] = self.privacy.hash_key(r[c])
                except MissingSecret:
                    out[i] = CLEAR_IDENTIFIER
        tomb = self.tombstones
        if tomb:
            keys = {r.get(c) for r in records for c in (CUSTOMER_KEY, LINK_KEY)}
            known = {k for k in keys if isinstance(k, str) and store.resolve(k) is not None}
            for i in tomb.reject(records, known):
                out.setdefault(i, ERASED)
        return out
