"""Online feature store: per-customer streaming state for serving, surviving restarts.

Two backends behind one interface (`OnlineStoreBase`), chosen by the `online_store` section of
the configuration (`open_online_store`): `OnlineStore`, one SQLite file for the processes of one
machine (the embedded default, described here), and `RedisOnlineStore`
(`features/store/redis_online_store.py`), one Redis shared by every replica of the service. Both
give the same features, identities, idempotency and all-or-nothing batches; the parity and
restart tests run against both.

One SQLite file in WAL mode holds, per customer, the base aggregates of `FeatureSet.base` valued
as of the customer's last applied event (a float64 BLOB) and the short window buffer of the
sliding-window counts, plus what makes applying events safe to repeat: the ids of applied events
(idempotency), the identity map (identifier -> customer_id, so `customer_key`s find their
customer), the profile columns of the customers table, and a fingerprint of the feature
definitions the state was computed with.

Durability: a batch of events is applied in ONE transaction and acknowledged (the returned
`ApplyReport`) only after its commit. With `journal_mode=WAL` and `synchronous=NORMAL` a committed
transaction survives a crash of the process (the WAL is written before the commit returns; the
operating system keeps it even if the process is killed), and a crash mid-batch leaves nothing of
that batch. An operating-system crash or power loss can lose the last commits before a
checkpoint; open with `synchronous="FULL"` (an fsync per commit) when that matters.

Idempotency after `materialize(as_of)`: the materialised events are not listed one by one; the
store keeps `as_of` as a watermark and rejects every event with ts < watermark as `duplicate`
(it is either in the materialised state or, if it arrived late, belongs to the batch path). After
a materialisation, replay the stream from `as_of` on: events with ts >= as_of are applied once.

Identity online: a known `customer_key` (else `link_key`) finds its customer; an unknown
identifier becomes a new customer whose id follows `features.ingest.identity`'s rule ("c_" + 16 hex
digits of md5 of the component's smallest identifier), and a `link_key` of a known customer adds
the new identifier to that customer. Links between two already known, different customers are
counted (`ApplyReport.unmerged_links`) but not merged: merging, cutting a shared identifier and
ids that change when a smaller identifier joins are the batch resolution's job, and a
re-materialisation takes them over. Online, a customer whose identifier already has more links
than its type's limit (data.identity) takes no more: the new identifier stays on its own.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from features.config import OnlineStoreConfig
from features.ingest.contract import (
    ACTION_ID,
    AMOUNT,
    CATEGORY,
    CHANNEL,
    CUSTOMER_ID,
    CUSTOMER_KEY,
    EVENT_COLUMNS,
    EVENT_ID,
    EVENT_SCHEMA,
    EVENT_TYPE,
    KEY_PATTERN,
    KEY_SEPARATOR,
    LINK_KEY,
    PROPENSITY,
    REASON,
    REQUIRED_EVENT_COLUMNS,
    TS,
    DataDir,
)
from features.ingest.identity import customer_id_of

# rejection reasons: the validation step's names where the check is the same, in its order
from features.ingest.validation import (  # noqa: E402
    ANCIENT_TIMESTAMP,
    DUPLICATE,
    EMPTY_CUSTOMER_KEY,
    FUTURE_TIMESTAMP,
    MALFORMED_CUSTOMER_KEY,
    MALFORMED_LINK_KEY,
    MISSING_EVENT_ID,
    MISSING_TIMESTAMP,
    NEGATIVE_AMOUNT,
    NON_NUMERIC_AMOUNT,
    NON_NUMERIC_PROPENSITY,
    PROPENSITY_OUT_OF_RANGE,
    UNKNOWN_CHANNEL,
    UNKNOWN_EVENT_TYPE,
    UNPARSEABLE_TIMESTAMP,
)
from features.store.batch import AS_OF, DUCKDB, base_aggregates_sql, to_us
from features.store.definitions import FeatureSet, profile_columns
from features.store.streaming import CustomerState, StreamingUpdater

APPLY_REASONS = [
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
    DUPLICATE,
    "conflict",
]
# a conditional batch (`expect`) whose customer's state changed since it was read
CONFLICT = APPLY_REASONS[-1]

SCHEMA_VERSION = 1
_CHUNK = 50_000  # rows per materialisation chunk: ~80 MB of float64 base aggregates
_IN_CHUNK = 10_000  # ids per `IN (json_each(?))` lookup

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state (
    customer_id TEXT PRIMARY KEY,
    last_us INTEGER NOT NULL,
    base BLOB NOT NULL,
    win BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY, ts_us INTEGER NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS identity (identifier TEXT PRIMARY KEY, customer_id TEXT NOT NULL)
    WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identity_by_customer ON identity (customer_id);
CREATE TABLE IF NOT EXISTS profile (customer_id TEXT PRIMARY KEY, data TEXT NOT NULL)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS event_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    ts_us INTEGER NOT NULL,
    customer_key TEXT NOT NULL,
    link_key TEXT,
    channel TEXT NOT NULL,
    event_type TEXT NOT NULL,
    action_id TEXT,
    amount REAL,
    category TEXT,
    propensity REAL,
    customer_id TEXT NOT NULL,
    received_us INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS event_log_by_customer ON event_log (customer_id, ts_us);
"""
_LOG_COLUMNS = [EVENT_ID, "ts_us", CUSTOMER_KEY, LINK_KEY, CHANNEL, EVENT_TYPE, ACTION_ID]
_LOG_COLUMNS += [AMOUNT, CATEGORY, PROPENSITY, CUSTOMER_ID, "received_us"]
_INSERT_LOG = (
    f"INSERT INTO event_log ({', '.join(_LOG_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_LOG_COLUMNS))})"
)

# sqlite3 keeps the prepared statement of each SQL text (cached_statements): a read is one
# bind and one step of an already compiled statement
_READ_ONE = (
    "SELECT s.last_us, s.base, s.win, p.data FROM (SELECT ? AS cid) k "
    "LEFT JOIN state s ON s.customer_id = k.cid LEFT JOIN profile p ON p.customer_id = k.cid"
)
_READ_MANY = (
    "SELECT k.value, s.last_us, s.base, s.win, p.data FROM json_each(?) k "
    "LEFT JOIN state s ON s.customer_id = k.value LEFT JOIN profile p ON p.customer_id = k.value"
)
_UPSERT_STATE = (
    "INSERT INTO state (customer_id, last_us, base, win) VALUES (?, ?, ?, ?) "
    "ON CONFLICT (customer_id) DO UPDATE SET last_us = excluded.last_us, base = excluded.base, "
    "win = excluded.win"
)


@dataclass(frozen=True)
class OnlineRow:
    """One customer's online features as arrays (no pandas): a real-time decision's input."""

    customer_id: str
    as_of_us: int
    features: np.ndarray  # float64, in FeatureSet.names order
    profile: list[Any]  # in OnlineStore.profile_names order; NaN where missing
    version: bytes | None = None  # the stored state read (`state_version`), None: no state


# a customer's stored (last_us, base, window buffer, profile JSON); None where absent
_Stored = tuple[int | None, bytes | None, bytes | None, str | bytes | None]
_StateRow = tuple[str, int, bytes, bytes]  # (customer_id, last_us, base, window buffer)


class DefinitionMismatch(RuntimeError):
    """The store's state was computed with other feature definitions and cannot be reused."""


def definitions_fingerprint(fs: FeatureSet) -> tuple[str, str]:
    """(sha256, JSON) of the base aggregates: the state's layout and meaning. Derived features
    are computed at read time, so changing them needs no re-materialisation."""
    spec = json.dumps([asdict(b) for b in fs.base], sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest(), spec


@dataclass(frozen=True)
class ApplyReport:
    """What one `apply_events` call did; returned only after the batch is committed.

    `rejected` holds the rejected input rows (original index) with a `reason` column, built on
    first access; applied + n_rejected == received.
    """

    received: int
    applied: int
    applied_ids: tuple[str, ...] = ()
    new_customers: int = 0
    new_identifiers: int = 0
    unmerged_links: int = 0  # links between two known customers, left to batch resolution
    by_reason: dict[str, int] = field(default_factory=dict)
    rejected_rows: tuple[tuple[int, str], ...] = ()  # (position in the input, reason)
    _source: pd.DataFrame | Sequence[Mapping[str, Any]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.applied + len(self.rejected_rows) != self.received:
            raise AssertionError(
                f"online store lost events: applied {self.applied} + rejected "
                f"{len(self.rejected_rows)} != received {self.received}"
            )

    @property
    def n_rejected(self) -> int:
        return len(self.rejected_rows)

    @cached_property
    def rejected(self) -> pd.DataFrame:
        """The rejected input rows with their `reason`, in input order."""
        pos = [p for p, _ in self.rejected_rows]
        reasons = [r for _, r in self.rejected_rows]
        src = self._source
        if isinstance(src, pd.DataFrame):
            out = src.iloc[pos].copy()
        else:
            rows = [] if src is None else [src[p] for p in pos]
            out = pd.DataFrame.from_records(rows, columns=None if rows else list(EVENT_COLUMNS))
        out[REASON] = np.array(reasons, dtype=object)  # positional: the index may repeat
        return out


@dataclass
class _Batch:
    """The columns of one batch as Python lists (no pandas in the per-event loop)."""

    n: int
    event_id: list[str | None]
    ts_us: list[int]
    ts_missing: list[bool]
    ts_bad: list[bool]
    customer_key: list[str | None]
    link_key: list[str | None]
    channel: list[str | None]
    event_type: list[str | None]
    amount: list[float]
    amount_bad: list[bool]
    category: list[str | None]
    action_id: list[str | None]
    propensity: list[float]
    propensity_bad: list[bool]


def _profile_value(v: Any, kind: str) -> Any:
    """A stored profile value as the batch engine has it: NaN where missing, times as
    datetimes, integers as floats (see `definitions.profile_columns`), the rest as stored."""
    if v is None:
        return math.nan
    if kind != _VALUE:
        return datetime.fromisoformat(v)
    return float(v) if isinstance(v, int) and not isinstance(v, bool) else v


def _blank(v: Any) -> bool:
    if v is None or v is pd.NA or v is pd.NaT:
        return True
    if isinstance(v, float):
        return math.isnan(v)
    return isinstance(v, str) and not v.strip()


def _text(values: Iterable[Any]) -> list[str | None]:
    """Values as text; missing and blank values as None."""
    return [
        (v if v and not v.isspace() else None)
        if type(v) is str
        else (None if _blank(v) else str(v))
        for v in values
    ]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_NAT = np.iinfo(np.int64).min


def _frame_batch(events: pd.DataFrame) -> _Batch:
    """A DataFrame of events as lists; timestamps to µs since the epoch (naive taken as UTC)."""
    missing = [c for c in REQUIRED_EVENT_COLUMNS if c not in events.columns]
    if missing:
        raise ValueError(f"events: missing required columns {missing}")
    n = len(events)

    def text(name: str) -> list[str | None]:
        if name not in events.columns:
            return [None] * n
        arr = events[name].array
        # arrow-backed strings (pandas' default) convert without a pandas round trip
        values = arr.__arrow_array__().to_pylist() if hasattr(arr, "__arrow_array__") else arr
        return _text(values)

    ts = events[TS]
    if ts.dtype.kind == "M":  # datetime64, naive or tz-aware: no parsing
        us = ts.to_numpy(dtype="datetime64[us]").view(np.int64)
        ts_missing = (us == _NAT).tolist()
        ts_bad = [False] * n
    else:
        na = ts.isna().to_numpy()
        parsed = pd.to_datetime(ts, utc=True, errors="coerce", format="mixed")
        us = parsed.to_numpy(dtype="datetime64[us]").view(np.int64)
        ts_missing = na.tolist()
        ts_bad = ((us == _NAT) & ~na).tolist()
    amount_list, amount_bad = _frame_numbers(events, AMOUNT)
    propensity, propensity_bad = _frame_numbers(events, PROPENSITY)
    return _Batch(
        n=n,
        event_id=text(EVENT_ID),
        ts_us=us.tolist(),
        ts_missing=ts_missing,
        ts_bad=ts_bad,
        customer_key=text(CUSTOMER_KEY),
        link_key=text(LINK_KEY),
        channel=text(CHANNEL),
        event_type=text(EVENT_TYPE),
        amount=amount_list,
        amount_bad=amount_bad,
        category=text(CATEGORY),
        action_id=text(ACTION_ID),
        propensity=propensity,
        propensity_bad=propensity_bad,
    )


def _frame_numbers(events: pd.DataFrame, name: str) -> tuple[list[float], list[bool]]:
    """A numeric column as floats (NaN where missing) and whether each present value failed to
    read as a finite number."""
    n = len(events)
    if name not in events.columns:
        return [math.nan] * n, [False] * n
    raw = events[name]
    if raw.dtype.kind == "f":
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        bad = np.isinf(values)
    else:
        values = pd.to_numeric(raw, errors="coerce").to_numpy(np.float64, na_value=np.nan)
        bad = ~np.isfinite(values) & raw.notna().to_numpy()
    return values.tolist(), bad.tolist()


def _record_ts(v: Any) -> int | None:
    """µs since the epoch of one timestamp value (datetime, pandas/numpy time, ISO text);
    None when it cannot be read as a time. Naive times are taken as UTC."""
    if isinstance(v, pd.Timestamp):
        t = v.tz_localize("UTC") if v.tzinfo is None else v
        return (t - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(microseconds=1)
    if isinstance(v, datetime):
        t = v.replace(tzinfo=UTC) if v.tzinfo is None else v
        return (t - _EPOCH) // _US
    if isinstance(v, np.datetime64):
        return None if np.isnat(v) else int(v.astype("datetime64[us]").astype(np.int64))
    if isinstance(v, str):
        try:
            return _record_ts(datetime.fromisoformat(v.strip()))
        except ValueError:
            try:
                return _record_ts(pd.Timestamp(v))
            except (ValueError, TypeError):
                return None
    return None


def _record_number(v: Any) -> tuple[float, bool]:
    """(value, failed to read as a finite number) of one optional numeric field."""
    if _blank(v):
        return math.nan, False
    if isinstance(v, bool):  # JSON true is not an amount
        return math.nan, True
    try:
        x = float(v)
    except (TypeError, ValueError):
        return math.nan, True
    return (x, False) if math.isfinite(x) else (math.nan, True)


def _records_batch(records: Sequence[Mapping[str, Any]]) -> _Batch:
    """Events given as mappings (e.g. JSON objects of POST /events) as lists."""
    n = len(records)

    def text(name: str) -> list[str | None]:
        return _text(r.get(name) for r in records)

    ts_raw = [r.get(TS) for r in records]
    ts_missing = [_blank(v) for v in ts_raw]
    parsed = [None if m else _record_ts(v) for v, m in zip(ts_raw, ts_missing, strict=True)]
    amounts = [_record_number(r.get(AMOUNT)) for r in records]
    propensities = [_record_number(r.get(PROPENSITY)) for r in records]
    return _Batch(
        n=n,
        event_id=text(EVENT_ID),
        ts_us=[0 if t is None else t for t in parsed],
        ts_missing=ts_missing,
        ts_bad=[t is None and not m for t, m in zip(parsed, ts_missing, strict=True)],
        customer_key=text(CUSTOMER_KEY),
        link_key=text(LINK_KEY),
        channel=text(CHANNEL),
        event_type=text(EVENT_TYPE),
        amount=[a for a, _ in amounts],
        amount_bad=[bad for _, bad in amounts],
        category=text(CATEGORY),
        action_id=text(ACTION_ID),
        propensity=[p for p, _ in propensities],
        propensity_bad=[bad for _, bad in propensities],
    )


@dataclass
class _Plan:
    """What one batch does to the store, computed in Python before a backend writes it."""

    states: dict[str, CustomerState]  # the touched customers' new states
    applied: list[tuple[str, int]]  # (event_id, ts_us) in application order
    identity: list[tuple[str, str]]  # new (identifier, customer_id)
    logged: list[tuple[Any, ...]]  # event log rows in _LOG_COLUMNS order
    new_customers: int = 0
    unmerged: int = 0


def state_version(last_us: int | None, base: bytes | None, win: bytes | None) -> bytes | None:
    """A customer's stored state as one value (None when it has none): a decision made on it
    can be committed only while the stored state still equals it."""
    if base is None:
        return None
    return int(last_us).to_bytes(8, "little", signed=True) + base + (win or b"")


class OnlineStoreBase(ABC):
    """Customer feature state for serving: O(1) event application, sub-millisecond reads.

    `read` / `read_many` return the same features as `BatchEngine.snapshot` at the same time
    (the parity test checks it, on every backend). The backends share validation, identity
    online, the streaming update and materialisation's SQL; each stores the result its way
    (`OnlineStore`: SQLite, `features.store.redis_online_store.RedisOnlineStore`: Redis).
    """

    backend: ClassVar[str]

    def __init__(self, fs: FeatureSet) -> None:
        self.fs = fs
        self.updater = StreamingUpdater(fs)
        self.n_base = len(fs.base)
        self._names = list(fs.names)
        self._is_time = self.updater.is_time.copy()
        self._window_idx = np.array(sorted(self.updater.window_us), dtype=np.int64)
        data = fs.data
        self._channels = frozenset(data.channel_names)
        self._event_types = frozenset(data.event_types.all)
        self._future_us = data.validation.future_tolerance_seconds * 1_000_000
        self._identity = data.identity
        self._earliest_us = _record_ts(data.validation.earliest_timestamp)
        head, sep, tail = KEY_PATTERN.partition(KEY_SEPARATOR)
        types = [t for t in data.identity.identifier_types if re.fullmatch(head[1:], t)]
        self._key_re = re.compile("^(?:" + "|".join(re.escape(t) for t in types) + ")" + sep + tail)
        self._fingerprint, self._spec = definitions_fingerprint(fs)
        self._profile_names: list[str] = []
        self._profile_kinds: list[str] = []

    # ------------------------------------------------------------------ what a backend provides

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the state lives, for messages: a file path or a Redis URL and namespace."""

    @abstractmethod
    def close(self) -> None: ...

    @property
    @abstractmethod
    def watermark_us(self) -> int | None:
        """Events older than this (µs since the epoch) count as applied: the last
        materialisation time, or None for a store built by streaming alone."""

    @property
    def materializing(self) -> bool:
        """True while a materialisation has started and not finished (never on SQLite, where it
        is one transaction): a service must not serve such a store."""
        return False

    @abstractmethod
    def resolve(self, identifier: str) -> str | None:
        """customer_id of an identifier (`type:value`), None when the store has not seen it."""

    @abstractmethod
    def identifiers(self, customer_id: str) -> list[str]:
        """Every identifier the store links to a customer, sorted."""

    @abstractmethod
    def customer_ids(self) -> list[str]:
        """Every customer with online state (at least one applied or materialised event)."""

    @abstractmethod
    def is_applied(self, event_id: str) -> bool:
        """True when the event id was applied (not covering the materialisation watermark)."""

    @abstractmethod
    def _fetch(self, customer_id: str) -> _Stored | None:
        """One customer's stored (last_us, base, win, profile JSON), None if unknown."""

    @abstractmethod
    def _fetch_many(self, customer_ids: list[str]) -> dict[str, _Stored | None]:
        """`_fetch` for many customers at once."""

    @abstractmethod
    def _commit(
        self,
        b: _Batch,
        valid: list[int],
        reasons: list[str | None],
        log_us: int | None,
        expect: Mapping[str, bytes | None] | None,
    ) -> _Plan | None:
        """Apply the valid events atomically (all or nothing); None when a customer in
        `expect` no longer has the expected state version (nothing is written then)."""

    @abstractmethod
    def logged_events(self, after_seq: int = 0) -> pd.DataFrame:
        """The event log (events applied with `log=True`) in the contract's columns and types,
        plus customer_id, seq and the receiving time, in arrival order."""

    @abstractmethod
    def logged_events_of(self, customer_id: str) -> pd.DataFrame:
        """One customer's logged events (as `logged_events`), newest first: what the service
        accepted since the last ingest, for that customer's history."""

    @abstractmethod
    def forget_applied_before(self, before_us: int) -> int:
        """Bound the idempotency record: drop the ids of events older than `before_us` and raise
        the watermark to it, so replays of those events stay duplicates (a late event older than
        it is then rejected too). Returns the ids dropped."""

    @abstractmethod
    def forget_customer(self, customer_id: str, identifiers: Sequence[str] = ()) -> int:
        """Erase one person: their state, profile, identity entries (theirs and `identifiers`)
        and logged events, in one transaction, leaving no copy behind; returns the logged
        events removed (the right to erasure, serving/erasure.py)."""

    @abstractmethod
    def _replacing(self) -> AbstractContextManager[_Replace]:
        """A materialisation's writer: everything but the event log cleared on entry, the new
        content written through it, complete on a normal exit."""

    # ------------------------------------------------------------------ shared

    def __enter__(self) -> OnlineStoreBase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def profile_names(self) -> list[str]:
        return list(self._profile_names)

    @property
    def feature_names(self) -> list[str]:
        """Columns `read` returns: derived features, then profile columns."""
        return self._names + self._profile_names

    def _mismatch_message(self, stored: str, version: str | None, old_spec: str | None) -> str:
        if version != str(SCHEMA_VERSION):
            what = f"store layout version {version}, this code writes {SCHEMA_VERSION}"
        else:
            old = {d["name"]: d for d in json.loads(old_spec or "[]")}
            new = {d["name"]: d for d in json.loads(self._spec)}
            changed = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
            gone, added = sorted(old.keys() - new.keys()), sorted(new.keys() - old.keys())
            parts = [
                f"{label} {len(names)} (e.g. {', '.join(names[:3])})"
                for label, names in (("changed", changed), ("removed", gone), ("added", added))
                if names
            ]
            what = "base aggregates " + ("; ".join(parts) or "reordered")
        return (
            f"online store {self.location} was written with other feature definitions "
            f"(fingerprint {stored[:12]}, current {self._fingerprint[:12]}: {what}). Its state "
            "cannot be reused: re-materialise it from the event store (`nba features "
            "--materialize`, or open it with reset=True and materialize(con, as_of)), then "
            "replay the stream from as_of."
        )

    # ------------------------------------------------------------------ state (de)serialisation

    def _decode(self, last_us: int, base: bytes, win: bytes) -> CustomerState:
        arr = np.frombuffer(base, dtype="<f8")
        if arr.size != self.n_base:
            raise DefinitionMismatch(
                f"{self.location}: a state holds {arr.size} base aggregates, the definitions "
                f"{self.n_base}; re-materialise the store"
            )
        pairs = np.frombuffer(win, dtype="<i8").reshape(-1, 2)
        window = list(zip(pairs[:, 0].tolist(), pairs[:, 1].tolist(), strict=True))
        return CustomerState(arr.copy(), int(last_us), window)

    def _stored(self, last_us: int | None, base: bytes | None, win: bytes | None) -> CustomerState:
        """A fetched state, or the empty state of a customer known without events."""
        if base is None:
            return self.updater.new_state()
        return self._decode(int(last_us), base, win or b"")

    @staticmethod
    def _encode(state: CustomerState) -> tuple[int, bytes, bytes]:
        win = np.asarray(state.window, dtype="<i8").tobytes() if state.window else b""
        return int(state.last_us), state.base.astype("<f8", copy=False).tobytes(), win

    # ------------------------------------------------------------------ reads

    def knows(self, customer_id: str) -> bool:
        """True for a customer with online state, a profile or an identifier here."""
        return self._fetch(customer_id) is not None

    def _as_of(self, last_us: int | None, as_of_us: int | None, customer_id: str) -> int:
        if as_of_us is None:
            now = time.time_ns() // 1000
            # just after the last applied event, so that it counts (a feature as of t uses the
            # events before t), even stamped a little ahead of this clock (validation allows it)
            return now if last_us is None else max(now, last_us + 1)
        if last_us is not None and as_of_us < last_us:
            raise ValueError(
                f"customer {customer_id}: online state is as of {last_us} us, later than the "
                f"requested as_of {as_of_us} us; earlier times are the batch engine's job"
            )
        return int(as_of_us)

    def _profile_values(self, data: str | bytes | None) -> list[Any]:
        """Profile values of one customer (NaN where missing); times back as datetimes."""
        if not self._profile_names:
            return []
        if data is None:
            return [math.nan] * len(self._profile_names)
        return [
            _profile_value(v, k) for v, k in zip(json.loads(data), self._profile_kinds, strict=True)
        ]

    def read(self, customer_id: str, as_of_us: int | None = None) -> dict[str, Any] | None:
        """Features (then profile columns) of one customer as of `as_of_us` (default: now),
        None for a customer the store does not know. No pandas on this path.

        As in the batch engine, events at or after `as_of_us` must not count: an explicit
        `as_of_us` earlier than the state raises; equal to it, an event stamped exactly then
        (already applied) counts, where the batch engine would leave it out. The default, now,
        moves to just after the state's time when an event is stamped ahead of this clock."""
        row = self.read_row(customer_id, as_of_us)
        if row is None:
            return None
        out = dict(zip(self._names, row.features.tolist(), strict=True))
        out.update(zip(self._profile_names, row.profile, strict=True))
        return out

    def read_row(self, customer_id: str, as_of_us: int | None = None) -> OnlineRow | None:
        """`read` as arrays: the derived features as one float64 vector (in `fs.names` order)
        and the profile values (in `profile_names` order), None for an unknown customer. The
        row carries the state's version, for a decision committed only on the state it read."""
        found = self._fetch(customer_id)
        if found is None:
            return None
        last_us, base, win, data = found
        state = self._stored(last_us, base, win)
        t = self._as_of(state.last_us, as_of_us, customer_id)
        return OnlineRow(
            customer_id,
            t,
            self.updater.features_at(state, t),
            self._profile_values(data),
            state_version(last_us, base, win),
        )

    def new_customer_row(self, customer_id: str, as_of_us: int | None = None) -> OnlineRow:
        """The features of a customer with no event yet (a cold start): no history, no consent,
        no profile."""
        t = self._as_of(None, as_of_us, customer_id)
        values = self.updater.features_at(self.updater.new_state(), t)
        return OnlineRow(customer_id, t, values, [math.nan] * len(self._profile_names))

    def read_many(self, customer_ids: Sequence[str], as_of_us: int | None = None) -> pd.DataFrame:
        """Features of many customers in `BatchEngine.snapshot`'s layout (customer_id, as_of,
        features, profile), in the given order; customers the store does not know are left out."""
        ids = list(dict.fromkeys(customer_ids))
        rows: list[tuple[str, int, np.ndarray, list[Any]]] = []
        for start in range(0, len(ids), _IN_CHUNK):
            chunk = ids[start : start + _IN_CHUNK]
            fetched = self._fetch_many(chunk)
            for cid in chunk:
                found = fetched.get(cid)
                if found is None:
                    continue
                last_us, base, win, data = found
                state = self._stored(last_us, base, win)
                t = self._as_of(state.last_us, as_of_us, cid)
                rows.append((cid, t, self.updater.base_at(state, t), self._profile_values(data)))
        as_of = np.array([r[1] for r in rows], dtype=np.int64)
        base = np.vstack([r[2] for r in rows]) if rows else np.empty((0, self.n_base), np.float64)
        feats = pd.DataFrame(self.fs.derive(base, as_of), columns=self._names)
        feats.insert(0, AS_OF, pd.to_datetime(as_of, unit="us", utc=True))
        feats.insert(0, CUSTOMER_ID, [r[0] for r in rows])
        if self._profile_names:
            prof = pd.DataFrame([r[3] for r in rows], columns=self._profile_names)
            prof = prof.infer_objects()
            for name, kind in zip(self._profile_names, self._profile_kinds, strict=True):
                if kind != _VALUE:  # the dtype the batch engine's profile has
                    prof[name] = pd.to_datetime(prof[name], utc=kind == _DATETIME_TZ)
            feats = pd.concat([feats, prof], axis=1)
        return feats

    def _reasons(self, b: _Batch, now_us: int) -> list[str | None]:
        """The first failing field check of each event (validation's order), None if none."""
        key_ok = self._key_re.match
        latest = now_us + self._future_us
        out: list[str | None] = [None] * b.n
        for i in range(b.n):
            ck, lk = b.customer_key[i], b.link_key[i]
            if b.event_id[i] is None:
                out[i] = MISSING_EVENT_ID
            elif ck is None:
                out[i] = EMPTY_CUSTOMER_KEY
            elif not key_ok(ck):
                out[i] = MALFORMED_CUSTOMER_KEY
            elif lk is not None and not key_ok(lk):
                out[i] = MALFORMED_LINK_KEY
            elif b.channel[i] not in self._channels:
                out[i] = UNKNOWN_CHANNEL
            elif b.event_type[i] not in self._event_types:
                out[i] = UNKNOWN_EVENT_TYPE
            elif b.ts_missing[i]:
                out[i] = MISSING_TIMESTAMP
            elif b.ts_bad[i]:
                out[i] = UNPARSEABLE_TIMESTAMP
            elif b.ts_us[i] < self._earliest_us:
                out[i] = ANCIENT_TIMESTAMP
            elif b.ts_us[i] > latest:
                out[i] = FUTURE_TIMESTAMP
            elif b.amount_bad[i]:
                out[i] = NON_NUMERIC_AMOUNT
            elif b.amount[i] < 0:
                out[i] = NEGATIVE_AMOUNT
            elif b.propensity_bad[i]:
                out[i] = NON_NUMERIC_PROPENSITY
            elif (
                not (b.propensity[i] > 0 and b.propensity[i] <= 1)
                and b.propensity[i] == b.propensity[i]
            ):
                out[i] = PROPENSITY_OUT_OF_RANGE
        return out

    # ------------------------------------------------------------------ event application

    def apply_events(
        self,
        events: pd.DataFrame,
        *,
        now: pd.Timestamp | None = None,
        log: bool = False,
        expect: Mapping[str, bytes | None] | None = None,
    ) -> ApplyReport:
        """Apply a batch of contract events in ONE transaction, in ts order (stable for ties).

        Each event is applied or rejected with a reason (see APPLY_REASONS); rejected events
        leave state and identity untouched. `now` (default: the clock) bounds future timestamps.
        `log=True` also appends every applied event to the event log in the same transaction:
        events that arrive only here (POST /events), not replays of the batch store's.
        `expect` ({customer_id: `OnlineRow.version`}) makes the batch conditional: when any of
        those customers' state changed since it was read, nothing is applied and every valid
        event is rejected as `conflict` (a decision must then be made again on the new state).
        """
        return self._apply(_frame_batch(events), events, now, log, expect)

    def apply_records(
        self,
        records: Sequence[Mapping[str, Any]],
        *,
        now: pd.Timestamp | None = None,
        log: bool = False,
        expect: Mapping[str, bytes | None] | None = None,
    ) -> ApplyReport:
        """`apply_events` for events as mappings (the JSON objects of POST /events), without
        pandas: the cheaper path for batches of a few events."""
        return self._apply(_records_batch(records), records, now, log, expect)

    def _apply(
        self,
        b: _Batch,
        source: pd.DataFrame | Sequence[Mapping[str, Any]],
        now: pd.Timestamp | None,
        log: bool = False,
        expect: Mapping[str, bytes | None] | None = None,
    ) -> ApplyReport:
        now_us = time.time_ns() // 1000 if now is None else int(to_us(now))
        reasons = self._reasons(b, now_us)
        ts = b.ts_us
        order = sorted(range(b.n), key=ts.__getitem__) if b.n > 1 else range(b.n)
        valid = [i for i in order if reasons[i] is None]
        plan = self._commit(b, valid, reasons, now_us if log else None, expect)
        if plan is None:
            for i in valid:
                reasons[i] = CONFLICT
            plan = _Plan({}, [], [], [])
        rejected = tuple((i, r) for i, r in enumerate(reasons) if r is not None)
        by_reason: dict[str, int] = {}
        for _, r in rejected:
            by_reason[r] = by_reason.get(r, 0) + 1
        return ApplyReport(
            received=b.n,
            applied=len(plan.applied),
            applied_ids=tuple(a[0] for a in plan.applied),
            new_customers=plan.new_customers,
            new_identifiers=len(plan.identity),
            unmerged_links=plan.unmerged,
            by_reason={r: by_reason[r] for r in APPLY_REASONS if r in by_reason},
            rejected_rows=rejected,
            _source=source,
        )

    @staticmethod
    def _batch_keys(b: _Batch, valid: list[int]) -> tuple[list[str], list[str]]:
        """The distinct event ids and identifiers (customer and link keys) of the valid events."""
        ids = list(dict.fromkeys(b.event_id[i] for i in valid))
        keys = {b.customer_key[i] for i in valid} | ({b.link_key[i] for i in valid} - {None})
        return ids, list(keys)

    @staticmethod
    def _new_customer_ids(b: _Batch, valid: list[int], idmap: Mapping[str, str]) -> set[str]:
        """The ids a batch may give customers none of whose identifiers is known yet (the rule
        of `_plan`): with the known customers', every state the batch can touch."""
        out = set()
        for i in valid:
            ck, lk = b.customer_key[i], b.link_key[i]
            if ck in idmap:
                continue
            if lk is not None and lk != ck:
                out.add(customer_id_of(ck))  # ck on its own if lk is a shared identifier
            if lk is not None and lk in idmap:
                continue
            out.add(customer_id_of(ck if lk is None or lk == ck else min(ck, lk)))
        return out

    def _plan(
        self,
        b: _Batch,
        valid: list[int],
        reasons: list[str | None],
        watermark: int | None,
        seen: set[str],
        idmap: dict[str, str],
        states: dict[str, CustomerState | None],
        load_state: Callable[[str], CustomerState | None],
        log_us: int | None,
        identifier_count: Callable[[str], int] | None = None,
    ) -> _Plan:
        """The batch applied in memory, in the order of `valid`: duplicates marked in `reasons`,
        identities resolved online, states updated. `states` holds the stored states read so
        far (None: no state); `load_state` reads one more. `identifier_count` (a customer's
        stored identifiers) bounds links online as batch resolution's shared-identifier guard
        does: a known identifier whose customer already holds more than its type's limit
        (data.identity) takes no more; the new one becomes a customer of its own (unmerged)."""
        plan = _Plan({}, [], [], [])
        apply = self.updater.apply
        stored: dict[str, int] = {}  # identifiers a customer held before the batch
        added: dict[str, int] = {}  # and those the batch gave it so far

        def full(cid: str, known: str) -> bool:
            if identifier_count is None:
                return False
            if cid not in stored:
                stored[cid] = identifier_count(cid)
            limit = self._identity.limit_for(known.partition(KEY_SEPARATOR)[0])
            # the known identifier's links to the others would pass its limit
            return stored[cid] + added.get(cid, 0) > limit

        for i in valid:
            eid, ts = b.event_id[i], b.ts_us[i]
            if (watermark is not None and ts < watermark) or eid in seen:
                reasons[i] = DUPLICATE
                continue
            ck, lk = b.customer_key[i], b.link_key[i]
            if lk == ck:
                lk = None
            cid = idmap.get(ck)
            adds: list[str] = []
            merge_conflict = False
            if cid is not None:
                if lk is not None:
                    other = idmap.get(lk)
                    if other is None and not full(cid, ck):
                        adds.append(lk)
                    elif other is None:
                        merge_conflict = True  # lk waits for an event of its own
                    elif other != cid:
                        merge_conflict = True
            elif lk is not None and lk in idmap and not full(idmap[lk], lk):
                cid = idmap[lk]
                adds.append(ck)
            elif lk is not None and lk in idmap:  # a shared identifier: ck on its own
                adds = [ck]
                cid = customer_id_of(ck)
                merge_conflict = True
            else:
                adds = [ck] if lk is None else [ck, lk]
                cid = customer_id_of(min(adds))
            state = plan.states.get(cid)
            if state is None:
                state = states[cid] if cid in states else load_state(cid)
                if state is None:
                    state = self.updater.new_state()
                    plan.new_customers += 1
            apply(state, ts, b.channel[i], b.event_type[i], b.amount[i], b.category[i])
            plan.states[cid] = state
            seen.add(eid)
            plan.applied.append((eid, ts))
            if log_us is not None:
                amount, propensity = b.amount[i], b.propensity[i]
                plan.logged.append(
                    (eid, ts, ck, b.link_key[i], b.channel[i], b.event_type[i], b.action_id[i])
                    + (None if amount != amount else amount, b.category[i])
                    + (None if propensity != propensity else propensity, cid, log_us)
                )
            for ident in adds:
                idmap[ident] = cid
                plan.identity.append((ident, cid))
            if adds:
                added[cid] = added.get(cid, 0) + len(adds)
            plan.unmerged += merge_conflict
        return plan

    # ------------------------------------------------------------------ materialisation

    def materialize(
        self,
        con: duckdb.DuckDBPyConnection,
        as_of: pd.Timestamp,
        *,
        events: str = "events",
        customers: str | None = "customers",
        identity: str | None = "identity",
        chunk_rows: int = _CHUNK,
    ) -> int:
        """Replace the store's content (all but the event log) by the batch state as of
        `as_of`; returns customers.

        `con` has `events` (contract columns + customer_id) and optionally `customers` and
        `identity` (identifier, customer_id); a missing optional relation is skipped (identity
        then comes from the events' customer_key). Base aggregates come from the batch SQL
        (`base_aggregates_sql`, what `BatchEngine.base_snapshot` runs), streamed in chunks of
        `chunk_rows`; window buffers from the events inside the longest window before `as_of`.
        `as_of` becomes the watermark: replay the stream from `as_of` afterwards.
        """
        as_of_us = int(to_us(as_of))
        names = [b.name for b in self.fs.base]
        base_sql = base_aggregates_sql(self.fs, events, DUCKDB, as_of_us=as_of_us)
        win_sql = self._window_sql(events, as_of_us)
        casts = ", ".join(f'CAST(b."{n}" AS DOUBLE)' for n in names)
        if win_sql is None:
            sql = (
                f"SELECT b.{CUSTOMER_ID}, {casts}, NULL::BIGINT[] AS w_ts, "
                f"NULL::BIGINT[] AS w_agg FROM ({base_sql}) b"
            )
        else:
            sql = (
                f"SELECT b.{CUSTOMER_ID}, {casts}, w.w_ts, w.w_agg FROM ({base_sql}) b "
                f"LEFT JOIN ({win_sql}) w ON w.{CUSTOMER_ID} = b.{CUSTOMER_ID}"
            )
        if identity is not None and _has_relation(con, identity):
            id_sql = (
                f"SELECT CAST(identifier AS VARCHAR), CAST({CUSTOMER_ID} AS VARCHAR) "
                f"FROM {identity}"
            )
        else:
            id_sql = (
                f"SELECT DISTINCT CAST({CUSTOMER_KEY} AS VARCHAR), "
                f"CAST({CUSTOMER_ID} AS VARCHAR) FROM {events}"
            )
        has_customers = customers is not None and _has_relation(con, customers)
        n_customers = 0
        with self._replacing() as out:
            for batch in _batches(con, sql, chunk_rows):
                n_customers += out.states(self._state_rows(batch, as_of_us))
            for batch in _batches(con, id_sql, chunk_rows):
                out.identity(
                    list(zip(batch.column(0).to_pylist(), batch.column(1).to_pylist(), strict=True))
                )
            profile_names: list[str] = []
            kinds: list[str] = []
            if has_customers:
                profile_names, kinds = self._profile_rows(con, customers, chunk_rows, out.profiles)
            out.meta(
                {
                    "watermark_us": str(as_of_us),
                    "materialized_as_of": pd.Timestamp(as_of_us, unit="us", tz="UTC").isoformat(),
                    "profile_columns": json.dumps(profile_names),
                    "profile_kinds": json.dumps(kinds),
                }
            )
        self._profile_names, self._profile_kinds = profile_names, kinds
        return n_customers

    def _window_sql(self, events: str, as_of_us: int) -> str | None:
        """Per customer, (ts_us, aggregate index) of the window-count events inside the longest
        window before `as_of`, as two aligned lists in the streaming buffer's order."""
        if not self.updater.window_us:
            return None
        start = as_of_us - self.updater.max_window_us
        parts = []
        for i in self.updater.window_us:
            b = self.fs.base[i]
            cond = [
                f"epoch_us({TS}) >= {start}",
                f"epoch_us({TS}) < {as_of_us}",
                f"{EVENT_TYPE} IN ({', '.join(_sql_lit(t) for t in b.event_types)})",
            ]
            if b.channels is not None:
                cond.append(f"{CHANNEL} IN ({', '.join(_sql_lit(c) for c in b.channels)})")
            parts.append(
                f"SELECT {CUSTOMER_ID}, epoch_us({TS}) AS ts_us, {i}::BIGINT AS agg "
                f"FROM {events} WHERE {' AND '.join(cond)}"
            )
        return (
            f"SELECT {CUSTOMER_ID}, list(ts_us ORDER BY ts_us, agg) AS w_ts, "
            f"list(agg ORDER BY ts_us, agg) AS w_agg FROM ({' UNION ALL '.join(parts)}) "
            f"GROUP BY {CUSTOMER_ID}"
        )

    def _state_rows(self, batch: pa.RecordBatch, as_of_us: int) -> list[_StateRow]:
        """One chunk of the materialisation query as stored states (customer_id, last_us, base,
        window buffer)."""
        n = batch.num_rows
        if n == 0:
            return []
        ids = batch.column(0).to_pylist()
        base = np.empty((n, self.n_base), dtype="<f8")
        for j in range(self.n_base):
            base[:, j] = batch.column(1 + j).to_numpy(zero_copy_only=False)
        # the streaming state: counts start at 0 (SQL gives NULL when nothing matched), window
        # counts live in the buffer, never in the base
        counts = ~self._is_time
        base[:, counts] = np.nan_to_num(base[:, counts], nan=0.0)
        base[:, self._window_idx] = 0.0
        w_ts, w_agg = batch.column(1 + self.n_base), batch.column(2 + self.n_base)
        offsets = np.asarray(w_ts.offsets.to_numpy(zero_copy_only=False), dtype=np.int64)
        flat_ts = w_ts.flatten().to_numpy(zero_copy_only=False)
        flat_agg = w_agg.flatten().to_numpy(zero_copy_only=False)
        pairs = np.empty((len(flat_ts), 2), dtype="<i8")
        pairs[:, 0], pairs[:, 1] = flat_ts, flat_agg
        raw = pairs.tobytes()
        return [
            (ids[i], as_of_us, base[i].tobytes(), raw[offsets[i] * 16 : offsets[i + 1] * 16])
            for i in range(n)
        ]

    def _profile_rows(
        self,
        con: duckdb.DuckDBPyConnection,
        customers: str,
        chunk_rows: int,
        write: Callable[[list[tuple[str, str]]], None],
    ) -> tuple[list[str], list[str]]:
        """Profile columns of the customers table (`features.profile_columns`) as JSON arrays,
        handed to `write` chunk by chunk; returns their names and kinds (times are kept as ISO
        text and read back as times)."""
        wanted = self.fs.config.profile_columns
        empty = profile_columns(con.sql(f"SELECT * FROM {customers} LIMIT 0").df(), wanted)
        names = list(empty.columns)
        kinds = [_kind(empty[c]) for c in names]
        for batch in _batches(con, f"SELECT * FROM {customers}", chunk_rows):
            frame = profile_columns(batch.to_pandas(date_as_object=False), wanted)
            values = [_json_column(frame[c]) for c in names]
            write(
                [
                    (cid, json.dumps(list(vals), allow_nan=False))
                    for cid, *vals in zip(frame.index.tolist(), *values, strict=True)
                ]
            )
        return names, kinds


class _Replace(Protocol):
    """How a backend takes a materialisation's content (see `OnlineStoreBase._replacing`)."""

    def states(self, rows: list[_StateRow]) -> int: ...
    def identity(self, pairs: list[tuple[str, str]]) -> None: ...
    def profiles(self, rows: list[tuple[str, str]]) -> None: ...
    def meta(self, values: Mapping[str, str]) -> None: ...


class OnlineStore(OnlineStoreBase):
    """The embedded backend: one SQLite file in WAL mode (see the module's docstring).
    Thread-safe (one connection behind a lock); several processes may open the file, writers
    are serialised by SQLite."""

    backend = "sqlite"

    def __init__(
        self,
        path: Path | str,
        fs: FeatureSet,
        *,
        reset: bool = False,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
    ) -> None:
        """Open (or create) the store at `path`. `reset=True` discards a store written with
        other feature definitions instead of refusing to open it."""
        super().__init__(fs)
        self.path = Path(path)
        self._lock = threading.RLock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False, cached_statements=64
        )
        con = self._con
        con.execute("PRAGMA busy_timeout = 30000")
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"{self.path}: SQLite refused WAL mode (got {mode})")
        con.execute(f"PRAGMA synchronous = {synchronous}")
        con.execute("PRAGMA cache_size = -65536")  # 64 MB page cache
        con.execute("PRAGMA mmap_size = 268435456")
        con.executescript(_SCHEMA)
        self._check_definitions(reset)
        self._profile_names = json.loads(self._meta("profile_columns") or "[]")
        self._profile_kinds = json.loads(self._meta("profile_kinds") or "[]")

    @property
    def location(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ meta and lifecycle

    def _meta(self, key: str) -> str | None:
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _set_meta(self, key: str, value: str) -> None:
        self._con.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )

    def _check_definitions(self, reset: bool) -> None:
        con = self._con
        con.execute("BEGIN IMMEDIATE")
        try:
            stored = self._meta("fingerprint")
            version = self._meta("schema_version")
            if stored is not None and (
                stored != self._fingerprint or version != str(SCHEMA_VERSION)
            ):
                if not reset:
                    raise DefinitionMismatch(
                        self._mismatch_message(stored, version, self._meta("definitions"))
                    )
                for table in ("state", "applied", "identity", "profile", "meta"):
                    con.execute(f"DELETE FROM {table}")
                stored = None
            if stored is None:
                self._set_meta("schema_version", str(SCHEMA_VERSION))
                self._set_meta("fingerprint", self._fingerprint)
                self._set_meta("definitions", self._spec)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            self._con.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @property
    def watermark_us(self) -> int | None:
        with self._lock:
            value = self._meta("watermark_us")
        return None if value is None else int(value)

    # ------------------------------------------------------------------ reads

    def resolve(self, identifier: str) -> str | None:
        with self._lock:
            row = self._con.execute(
                "SELECT customer_id FROM identity WHERE identifier = ?", (identifier,)
            ).fetchone()
        return None if row is None else row[0]

    def identifiers(self, customer_id: str) -> list[str]:
        with self._lock:
            rows = self._con.execute(
                "SELECT identifier FROM identity WHERE customer_id = ? ORDER BY identifier",
                (customer_id,),
            ).fetchall()
        return [r[0] for r in rows]

    def customer_ids(self) -> list[str]:
        with self._lock:
            rows = self._con.execute("SELECT customer_id FROM state ORDER BY customer_id")
            return [r[0] for r in rows]

    def is_applied(self, event_id: str) -> bool:
        with self._lock:
            row = self._con.execute(
                "SELECT 1 FROM applied WHERE event_id = ?", (event_id,)
            ).fetchone()
        return row is not None

    def _known_without_state(self, customer_id: str) -> bool:
        row = self._con.execute(
            "SELECT 1 FROM identity WHERE customer_id = ? LIMIT 1", (customer_id,)
        ).fetchone()
        return row is not None

    def _fetch(self, customer_id: str) -> _Stored | None:
        with self._lock:
            last_us, base, win, data = self._con.execute(_READ_ONE, (customer_id,)).fetchone()
            if base is None and data is None and not self._known_without_state(customer_id):
                return None
        return last_us, base, win, data

    def _fetch_many(self, customer_ids: list[str]) -> dict[str, _Stored | None]:
        with self._lock:
            fetched = self._con.execute(_READ_MANY, (json.dumps(customer_ids),)).fetchall()
            return {
                cid: (last_us, base, win, data)
                if base is not None or data is not None or self._known_without_state(cid)
                else None
                for cid, last_us, base, win, data in fetched
            }

    # ------------------------------------------------------------------ event application

    def _lookup(self, sql: str, keys: list[str]) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for start in range(0, len(keys), _IN_CHUNK):
            chunk = keys[start : start + _IN_CHUNK]
            out += self._con.execute(sql, (json.dumps(chunk),)).fetchall()
        return out

    def _identifier_count(self, customer_id: str) -> int:
        return self._con.execute(
            "SELECT count(*) FROM identity WHERE customer_id = ?", (customer_id,)
        ).fetchone()[0]

    def _state_of(self, customer_id: str) -> tuple[int, bytes, bytes] | None:
        return self._con.execute(
            "SELECT last_us, base, win FROM state WHERE customer_id = ?", (customer_id,)
        ).fetchone()

    def _commit(
        self,
        b: _Batch,
        valid: list[int],
        reasons: list[str | None],
        log_us: int | None,
        expect: Mapping[str, bytes | None] | None,
    ) -> _Plan | None:
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                changed = any(
                    state_version(*(self._state_of(cid) or (None, None, None))) != version
                    for cid, version in (expect or {}).items()
                )
                plan = None if changed else self._apply_locked(b, valid, reasons, log_us)
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return plan

    def _apply_locked(
        self, b: _Batch, valid: list[int], reasons: list[str | None], log_us: int | None
    ) -> _Plan:
        """The batch's reads, plan and writes inside `_commit`'s transaction."""
        con = self._con
        wm = self._meta("watermark_us")
        ids, keys = self._batch_keys(b, valid)
        seen = {
            r[0]
            for r in self._lookup(
                "SELECT event_id FROM applied WHERE event_id IN (SELECT value FROM json_each(?))",
                ids,
            )
        }
        idmap: dict[str, str] = dict(
            self._lookup(
                "SELECT identifier, customer_id FROM identity "
                "WHERE identifier IN (SELECT value FROM json_each(?))",
                keys,
            )
        )
        states: dict[str, CustomerState | None] = {
            cid: self._decode(last_us, base, win)
            for cid, last_us, base, win in self._lookup(
                "SELECT customer_id, last_us, base, win FROM state "
                "WHERE customer_id IN (SELECT value FROM json_each(?))",
                list(set(idmap.values())),
            )
        }

        def load_state(cid: str) -> CustomerState | None:
            row = self._state_of(cid)
            return None if row is None else self._decode(*row)

        plan = self._plan(
            b,
            valid,
            reasons,
            None if wm is None else int(wm),
            seen,
            idmap,
            states,
            load_state,
            log_us,
            self._identifier_count,
        )
        con.executemany(_UPSERT_STATE, [(cid, *self._encode(s)) for cid, s in plan.states.items()])
        con.executemany("INSERT INTO applied (event_id, ts_us) VALUES (?, ?)", plan.applied)
        con.executemany(
            "INSERT INTO identity (identifier, customer_id) VALUES (?, ?)", plan.identity
        )
        con.executemany(_INSERT_LOG, plan.logged)
        return plan

    # ------------------------------------------------------------------ the event log

    def logged_events(self, after_seq: int = 0) -> pd.DataFrame:
        with self._lock:
            return _logged_events(self._con, after_seq)

    def logged_events_of(self, customer_id: str) -> pd.DataFrame:
        with self._lock:
            return _logged_events(self._con, customer_id=customer_id)

    def forget_applied_before(self, before_us: int) -> int:
        with self._lock:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                wm = self._meta("watermark_us")
                if wm is None or int(wm) < before_us:
                    self._set_meta("watermark_us", str(int(before_us)))
                dropped = con.execute("DELETE FROM applied WHERE ts_us < ?", (before_us,)).rowcount
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return dropped

    def forget_customer(self, customer_id: str, identifiers: Sequence[str] = ()) -> int:
        with self._lock:
            con = self._con
            # deleted rows are overwritten with zeros, not left in free pages
            con.execute("PRAGMA secure_delete = ON")
            con.execute("BEGIN IMMEDIATE")
            try:
                idents = sorted(set(self.identifiers(customer_id)) | set(identifiers))
                keys = json.dumps(idents)
                where = (
                    "customer_id = ? OR customer_key IN (SELECT value FROM json_each(?)) "
                    "OR link_key IN (SELECT value FROM json_each(?))"
                )
                ids = [
                    r[0]
                    for r in con.execute(
                        f"SELECT event_id FROM event_log WHERE {where}", (customer_id, keys, keys)
                    )
                ]
                con.execute(f"DELETE FROM event_log WHERE {where}", (customer_id, keys, keys))
                con.execute(
                    "DELETE FROM applied WHERE event_id IN (SELECT value FROM json_each(?))",
                    (json.dumps(ids),),
                )
                con.execute(
                    "DELETE FROM identity WHERE customer_id = ? "
                    "OR identifier IN (SELECT value FROM json_each(?))",
                    (customer_id, keys),
                )
                for table in ("state", "profile"):
                    con.execute(f"DELETE FROM {table} WHERE customer_id = ?", (customer_id,))
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
            finally:
                con.execute("PRAGMA secure_delete = OFF")
            # a page rebuilt by a b-tree balance can keep a deleted cell's bytes in its unused
            # space: VACUUM writes every page afresh (about the time of copying the file), and
            # the checkpoint moves them out of the WAL, which is then emptied
            con.execute("VACUUM")
            for _ in range(600):
                if con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0:
                    break
                time.sleep(0.05)  # a reader of another process still on an older snapshot
        return len(ids)

    # ------------------------------------------------------------------ materialisation

    @contextmanager
    def _replacing(self) -> Iterator[_Replace]:
        """One transaction: the old content and the new are never both half there."""
        with self._lock:
            lite = self._con
            lite.execute("BEGIN IMMEDIATE")
            try:
                for table in ("state", "applied", "identity", "profile"):
                    lite.execute(f"DELETE FROM {table}")
                yield _SqliteReplace(self)
                lite.execute("COMMIT")
            except BaseException:
                lite.execute("ROLLBACK")
                raise
            lite.execute("PRAGMA wal_checkpoint(TRUNCATE)")


class _SqliteReplace:
    def __init__(self, store: OnlineStore) -> None:
        self._store, self._con = store, store._con

    def states(self, rows: list[_StateRow]) -> int:
        self._con.executemany(
            "INSERT INTO state (customer_id, last_us, base, win) VALUES (?, ?, ?, ?)", rows
        )
        return len(rows)

    def identity(self, pairs: list[tuple[str, str]]) -> None:
        self._con.executemany(
            "INSERT OR IGNORE INTO identity (identifier, customer_id) VALUES (?, ?)", pairs
        )

    def profiles(self, rows: list[tuple[str, str]]) -> None:
        self._con.executemany(
            "INSERT OR IGNORE INTO profile (customer_id, data) VALUES (?, ?)", rows
        )

    def meta(self, values: Mapping[str, str]) -> None:
        for key, value in values.items():
            self._store._set_meta(key, value)


def _logged_events(
    con: sqlite3.Connection, after_seq: int = 0, customer_id: str | None = None
) -> pd.DataFrame:
    select = f"SELECT seq, {', '.join(_LOG_COLUMNS)} FROM event_log"
    if customer_id is None:
        rows = con.execute(f"{select} WHERE seq > ? ORDER BY seq", (after_seq,)).fetchall()
    else:
        rows = con.execute(
            f"{select} WHERE customer_id = ? ORDER BY ts_us DESC, seq DESC", (customer_id,)
        ).fetchall()
    return log_frame(rows)


def log_frame(rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """Event log rows (seq, then `_LOG_COLUMNS`) in the contract's columns and types, plus
    customer_id, seq and the receiving time."""
    frame = pd.DataFrame(list(rows), columns=["seq", *_LOG_COLUMNS])
    frame[TS] = pd.to_datetime(frame.pop("ts_us").astype("int64"), unit="us", utc=True)
    frame["received"] = pd.to_datetime(
        frame.pop("received_us").astype("int64"), unit="us", utc=True
    )
    frame["seq"] = frame["seq"].astype("int64")
    for name in (AMOUNT, PROPENSITY):
        frame[name] = frame[name].astype("float64")
    return frame[[*EVENT_COLUMNS, CUSTOMER_ID, "seq", "received"]]


def open_online_store(
    data_dir: DataDir,
    fs: FeatureSet,
    config: OnlineStoreConfig | None = None,
    *,
    reset: bool = False,
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
) -> OnlineStoreBase:
    """The online store the configuration names: the data directory's SQLite file, or the
    Redis at `config.url` (NBA_REDIS_URL overrides it) under `config.namespace`."""
    config = config or OnlineStoreConfig()
    if config.backend == "redis":
        from features.store.redis_online_store import RedisOnlineStore

        return RedisOnlineStore(config, fs, reset=reset)
    return OnlineStore(data_dir.online_store, fs, reset=reset, synchronous=synchronous)


def online_store_exists(data_dir: DataDir, config: OnlineStoreConfig | None = None) -> bool:
    """True when the configured online store has been written (materialised or streamed into):
    what a service needs before it can start."""
    config = config or OnlineStoreConfig()
    if config.backend == "redis":
        from features.store.redis_online_store import redis_store_exists

        return redis_store_exists(config)
    return data_dir.online_store.is_file()


def online_store_location(data_dir: DataDir, config: OnlineStoreConfig | None = None) -> str:
    """Where the configured online store lives, for messages."""
    config = config or OnlineStoreConfig()
    if config.backend == "redis":
        from features.store.redis_online_store import redis_location

        return redis_location(config)
    return str(data_dir.online_store)


def export_event_log(
    data_dir: DataDir, target: Path, config: OnlineStoreConfig | None = None
) -> int | None:
    """Write the event log of the configured online store as a contract events file, the next
    ingest's input (written aside, then renamed: a reader never sees half a file). Returns the
    events written, None when there is no store or it has logged nothing. Needs no feature
    definitions: the log is raw events."""
    import pyarrow.parquet as pq

    config = config or OnlineStoreConfig()
    if config.backend == "redis":
        from features.store.redis_online_store import redis_logged_events

        events = redis_logged_events(config)
    else:
        events = _sqlite_logged_events(data_dir.online_store)
    if events is None or events.empty:
        return None
    table = pa.Table.from_pandas(events[EVENT_COLUMNS], schema=EVENT_SCHEMA, preserve_index=False)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    pq.write_table(table, tmp)
    tmp.replace(target)
    return len(events)


def _sqlite_logged_events(store_path: Path) -> pd.DataFrame | None:
    """The event log of the SQLite store at `store_path`, read-only; None without a store."""
    if not Path(store_path).is_file():
        return None
    con = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        con.execute("PRAGMA busy_timeout = 30000")
        has_log = con.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'event_log'"
        ).fetchone()
        return _logged_events(con) if has_log else None
    finally:
        con.close()


def _sql_lit(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _batches(con: duckdb.DuckDBPyConnection, sql: str, rows: int) -> pa.RecordBatchReader:
    """A query's result streamed as arrow record batches of at most `rows` rows."""
    rel = con.sql(sql)
    if hasattr(rel, "to_arrow_reader"):  # duckdb >= 1.4
        return rel.to_arrow_reader(rows)
    return rel.fetch_arrow_reader(rows)


def _has_relation(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    try:
        con.execute(f"SELECT * FROM {name} LIMIT 0")
    except duckdb.CatalogException:
        return False
    return True


_VALUE, _DATETIME, _DATETIME_TZ = "value", "datetime", "datetime_tz"


def _kind(s: pd.Series) -> str:
    """How a profile column travels through JSON: as itself, or as ISO text of a time."""
    if s.dtype.kind == "M":
        return _DATETIME_TZ if getattr(s.dtype, "tz", None) is not None else _DATETIME
    return _VALUE


def _json_column(s: pd.Series) -> list[Any]:
    """A profile column as JSON-ready Python values: numbers as float, times as ISO text."""
    if pd.api.types.is_bool_dtype(s):
        return [None if pd.isna(v) else bool(v) for v in s.tolist()]
    if pd.api.types.is_integer_dtype(s):
        return [None if pd.isna(v) else int(v) for v in s.tolist()]
    if pd.api.types.is_numeric_dtype(s):
        arr = s.to_numpy(dtype=np.float64, na_value=np.nan)
        return [None if not math.isfinite(v) else v for v in arr.tolist()]
    out: list[Any] = []
    for v in s.tolist():
        if _blank(v):
            out.append(None)
        elif isinstance(v, datetime | pd.Timestamp):
            out.append(v.isoformat())
        else:
            out.append(v if isinstance(v, str | int | float | bool) else str(v))
    return out
