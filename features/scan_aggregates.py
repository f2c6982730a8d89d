"""Snapshot base aggregates in one columnar scan: DuckDB reads the rows, numpy reduces them.

`features.batch.base_aggregates_sql` states every base aggregate as SQL (the definition Spark
runs, and DuckDB for query points). For a snapshot, a hash aggregate per (customer, channel,
event type) followed by a ~200-column pivot costs DuckDB about twenty times a plain GROUP BY.
This module computes the same numbers from a single projection scan:

1. DuckDB streams the rows before the as-of time as a few narrow columns (customer_id, ts in
   microseconds, small integer codes for channel, event type and category, amount);
2. each row gets a customer index and a class: which aggregate filters its (channel, event
   type[, hour, weekday, category]) passes. Per row value an aggregate reduces (a decay weight,
   the amount, the timestamp, ...), rows are reduced per (class, customer) cell with
   `np.bincount` (sums) or `np.maximum.at` / `np.minimum.at` (last, first);
3. each aggregate is then the sum, max or min of its classes' cells, customer by customer.

Two threads reduce ranges while DuckDB scans the next one (see `scan_partitions`).

An aggregate with no matching event is NaN, as SQL's `SUM(CASE ...)` over no rows is NULL.

Memory is bounded by a partition: when the event relation holds more than
`FeatureConfig.snapshot_partition_events` rows, customers are split into ranges of customer_id
(boundaries from a sample) and each range is scanned and reduced on its own. On the event store,
which is sorted by customer_id, DuckDB skips the parquet row groups outside a range.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.contract import AMOUNT, CATEGORY, CHANNEL, CUSTOMER_ID, EVENT_TYPE, TS
from features.definitions import US_PER_DAY, BaseAggregate, FeatureSet

_SUM, _MAX, _MIN = "sum", "max", "min"  # how a row value is reduced per cell
_CUSTOMERS_SAMPLED = 20_000
_IN_FLIGHT = 2  # ranges reduced at once (threads); the machine this was tuned on has 2 cores


# per aggregate operation: the row value it reduces, whether its parameter (a half-life or a
# window) enters that value, and its reducer
_ROW_VALUES: dict[str, tuple[str, bool, str]] = {
    "decayed_count": ("decay", True, _SUM),
    "decayed_amount": ("amount_decay", True, _SUM),
    "count": ("one", False, _SUM),
    "amount": ("amount", False, _SUM),
    "window_count": ("in_window", True, _SUM),
    "last": ("ts", False, _MAX),
    "first": ("ts", False, _MIN),
}


def _value_of(b: BaseAggregate) -> tuple[str, float | None, str]:
    """The row value an aggregate reduces, its parameter and its reducer."""
    if b.op not in _ROW_VALUES:
        raise ValueError(f"unknown aggregate operation {b.op}")
    value, parametrised, reducer = _ROW_VALUES[b.op]
    return value, b.param if parametrised else None, reducer


@dataclass(frozen=True)
class _Group:
    """Aggregates reducing one row value over one dimension, and their (class, dim value) cells.

    `pair_class[pair]` is the class of a (channel code, event type code) pair, -1 when no
    aggregate takes it; `dim_index[code]` the position of a dimension code among the group's
    dimension values, -1 when none asks for it. Cell = class * n_dim + dim position, and
    `cells[j]` lists the cells aggregate `columns[j]` (a column of the base matrix) reduces.
    Groups without a dimension share one class layout (classes of all their filters), so their
    rows are indexed and counted once a scan.
    """

    value: str
    param: float | None
    reducer: str
    dim: str | None
    pair_class: np.ndarray
    dim_index: np.ndarray
    n_dim: int
    n_cells: int
    cells: tuple[np.ndarray, ...]
    columns: np.ndarray


@dataclass(frozen=True)
class ScanPlan:
    """What one snapshot scan reads and how its rows map to every base aggregate of a set."""

    channels: list[str]
    event_types: list[str]
    categories: list[str]
    groups: list[_Group]
    n_base: int

    @classmethod
    def of(cls, fs: FeatureSet) -> ScanPlan:
        channels = list(dict.fromkeys([*fs.data.channel_names, *_channels_named(fs.base)]))
        event_types = list(dict.fromkeys(t for b in fs.base for t in b.event_types))
        categories = list(dict.fromkeys(str(b.dim_value) for b in fs.base if b.dim == "category"))
        by_key: dict[tuple[str, float | None, str, str | None], list[int]] = {}
        for j, b in enumerate(fs.base):
            by_key.setdefault((*_value_of(b), b.dim), []).append(j)
        undimensioned = [b for b in fs.base if b.dim is None]
        groups = [
            _group(
                fs.base,
                cols,
                key,
                undimensioned if key[-1] is None else [fs.base[j] for j in cols],
                (channels, event_types, categories),
            )
            for key, cols in by_key.items()
        ]
        return cls(channels, event_types, categories, groups, len(fs.base))

    @property
    def n_pairs(self) -> int:
        # codes are 1-based positions in the vocabularies, 0 for a value outside them
        return (len(self.channels) + 1) * (len(self.event_types) + 1)

    def rows_sql(self, events: str, as_of_us: int, bounds: tuple[str | None, str | None]) -> str:
        """The scan: rows before the as-of time whose event type some aggregate uses."""
        n_types = len(self.event_types) + 1
        where = [
            f"{CUSTOMER_ID} IS NOT NULL",
            f"epoch_us({TS}) < {int(as_of_us)}",
            f"{EVENT_TYPE} IN {_in_list(self.event_types)}",
        ]
        lo, hi = bounds
        if lo is not None:
            where.append(f"{CUSTOMER_ID} >= {_quote(lo)}")
        if hi is not None:
            where.append(f"{CUSTOMER_ID} < {_quote(hi)}")
        return (
            f"SELECT {CUSTOMER_ID}, epoch_us({TS}) AS ts_us, "
            f"CAST(COALESCE(list_position({_list(self.channels)}, {CHANNEL}), 0) * {n_types} "
            f"+ COALESCE(list_position({_list(self.event_types)}, {EVENT_TYPE}), 0) "
            "AS USMALLINT) AS pair, "
            f"CAST(COALESCE(list_position({_list(self.categories)}, {CATEGORY}), 0) "
            "AS USMALLINT) AS category, "
            f"CAST(COALESCE({AMOUNT}, 0.0) AS DOUBLE) AS amount "
            f"FROM {events} WHERE {' AND '.join(where)}"
        )


def _channels_named(base: list[BaseAggregate]) -> list[str]:
    return [c for b in base for c in (b.channels or ())]


def _group(
    base: list[BaseAggregate],
    cols: list[int],
    key: tuple[str, float | None, str, str | None],
    class_aggs: list[BaseAggregate],
    vocabularies: tuple[list[str], list[str], list[str]],
) -> _Group:
    """The group of aggregates `cols` (all with `key`); pairs are classed by `class_aggs`."""
    value, param, reducer, dim = key
    channels, event_types, categories = vocabularies
    aggs = [base[j] for j in cols]
    # class of a (channel, event type) pair: which of the class-defining filters it passes
    n_types = len(event_types) + 1
    pair_class = np.full((len(channels) + 1) * n_types, -1, dtype=np.int64)
    members: list[frozenset[int]] = []
    for ci, ch in enumerate(channels, start=1):
        for ti, et in enumerate(event_types, start=1):
            member = frozenset(
                k
                for k, b in enumerate(class_aggs)
                if et in b.event_types and (b.channels is None or ch in b.channels)
            )
            if not member:
                continue
            if member not in members:
                members.append(member)
            pair_class[ci * n_types + ti] = members.index(member)
    # dimension codes: hour 0-23, weekday 0-6, category 1-based position (0: other or null)
    position: dict[int | str | None, int] = {}
    if dim is None:
        dim_index = np.zeros(1, dtype=np.int64)
        position[None] = 0
    else:
        size = {"hour": 24, "dow": 7, "category": len(categories) + 1}[dim]
        dim_index = np.full(size, -1, dtype=np.int64)
        for v in dict.fromkeys(b.dim_value for b in aggs):
            code = categories.index(str(v)) + 1 if dim == "category" else int(v)
            if 0 <= code < size:
                position[v] = len(position)
                dim_index[code] = position[v]
    n_dim = max(len(position), 1)
    index_in_classes = {id(b): k for k, b in enumerate(class_aggs)}
    cells = []
    for b in aggs:
        k = index_in_classes[id(b)]
        v = b.dim_value if dim is not None else None
        cells.append(
            np.array(
                [c * n_dim + position[v] for c, m in enumerate(members) if k in m]
                if v in position
                else [],
                dtype=np.int64,
            )
        )
    return _Group(
        value=value,
        param=param,
        reducer=reducer,
        dim=dim,
        pair_class=pair_class,
        dim_index=dim_index,
        n_dim=n_dim,
        n_cells=len(members) * n_dim,
        cells=tuple(cells),
        columns=np.asarray(cols, dtype=np.int64),
    )


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in_list(values: list[str]) -> str:
    return "(" + ", ".join(_quote(v) for v in values) + ")"


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]::VARCHAR[]"


def partition_bounds(
    con: duckdb.DuckDBPyConnection, events: str, partition_events: int
) -> list[tuple[str | None, str | None]]:
    """Ranges [lo, hi) of customer_id holding about `partition_events` events each.

    One range (no bounds) when the relation is small enough; otherwise the boundaries are
    quantiles of a sample of the events' customer_ids, so the ranges hold similar event counts.
    """
    n_events = con.sql(f"SELECT count(*) FROM {events}").fetchall()[0][0]
    n_parts = max(1, math.ceil(n_events / max(partition_events, 1)))
    if n_parts == 1:
        return [(None, None)]
    sample = con.sql(
        f"SELECT {CUSTOMER_ID} FROM {events} WHERE {CUSTOMER_ID} IS NOT NULL "
        f"USING SAMPLE reservoir({_CUSTOMERS_SAMPLED} ROWS) REPEATABLE (7)"
    ).fetchall()
    ids = sorted(r[0] for r in sample)
    cuts = sorted({ids[len(ids) * k // n_parts] for k in range(1, n_parts)}) if ids else []
    edges: list[str | None] = [None, *cuts, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


@dataclass
class Partition:
    """Base aggregates of one customer range: sorted customer ids and a (customers x base)
    float64 matrix in `FeatureSet.base` order (NaN where no event matched)."""

    customer_ids: pa.Array
    base: np.ndarray

    def ids(self) -> np.ndarray:
        """The customer ids as an object array of str (as DuckDB's `.df()` gives them)."""
        return self.customer_ids.to_numpy(zero_copy_only=False)


def scan_partitions(
    con: duckdb.DuckDBPyConnection,
    fs: FeatureSet,
    events: str,
    as_of_us: int,
    partition_events: int,
    plan: ScanPlan | None = None,
) -> Iterator[Partition]:
    """Base aggregates of every customer with an event before `as_of_us`, a customer range at a
    time, ranges in customer_id order (so the partitions concatenate into a sorted table).

    Two cores at work: two threads reduce ranges in numpy while this one has DuckDB scan the
    next range and the caller derives the finished ones (numpy and DuckDB release the GIL for
    most of their loops). At most `_IN_FLIGHT` ranges are scanned and not yet handed over.
    """
    plan = plan or ScanPlan.of(fs)
    with ThreadPoolExecutor(max_workers=_IN_FLIGHT, thread_name_prefix="nba-reduce") as pool:
        pending: deque[Future[Partition]] = deque()
        for bounds in partition_bounds(con, events, partition_events):
            rows = con.sql(plan.rows_sql(events, as_of_us, bounds)).to_arrow_table()
            pending.append(pool.submit(reduce_rows, plan, rows, as_of_us))
            del rows
            if len(pending) >= _IN_FLIGHT:
                yield from _non_empty(pending.popleft().result())
        while pending:
            yield from _non_empty(pending.popleft().result())


def _non_empty(part: Partition) -> Iterator[Partition]:
    if len(part.customer_ids):
        yield part


def _customer_index(ids: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Index of each row's customer among the sorted distinct customer ids, and those ids.

    The event store is sorted by customer_id, so the usual case is a cheap scan for the rows
    where the id changes; any other order is dictionary-encoded and the dictionary sorted.
    """
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64), ids
    # where the id changes; sorted when the ids at those rows strictly increase
    changed = pc.not_equal(ids.slice(0, n - 1), ids.slice(1)).to_numpy(zero_copy_only=False)
    starts = np.concatenate([[0], np.flatnonzero(changed) + 1])
    firsts = ids.take(pa.array(starts))
    m = len(firsts)
    if m == 1 or pc.all(pc.less(firsts.slice(0, m - 1), firsts.slice(1))).as_py():
        index = np.zeros(n, dtype=np.int64)
        np.cumsum(changed, out=index[1:])
        return index, firsts
    encoded = pc.dictionary_encode(ids)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank[encoded.indices.to_numpy()], encoded.dictionary.take(pa.array(order))


def _dim_codes(dim: str | None, ts_us: np.ndarray, category: np.ndarray) -> np.ndarray:
    """Each row's dimension code, as `base_aggregates_sql` computes it: floor of the hours (days)
    since the epoch, C remainder. Integer floor division equals SQL's FLOOR(ts / 3.6e9.0) for
    every timestamp below 2^53 us (the double quotient never rounds across an integer)."""
    if dim is None:
        return np.zeros(len(ts_us), dtype=np.int64)
    if dim == "hour":
        return np.fmod(ts_us // 3_600_000_000, 24)
    if dim == "dow":
        return np.fmod(ts_us // US_PER_DAY + 3, 7)
    if dim == "category":
        return category.astype(np.int64)
    raise ValueError(f"unknown feature dimension {dim}")


def _cell_sum(grid: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Per customer, the sum of a (cells x customers) grid over some cells (a view for one)."""
    if len(cells) == 1:
        return grid[cells[0]]
    return grid[cells].sum(axis=0)


def _take(values: np.ndarray, sel: np.ndarray | None) -> np.ndarray:
    """`values` at the selected rows; all of them (no copy) when `sel` is None."""
    return values if sel is None else values[sel]


def reduce_rows(plan: ScanPlan, rows: pa.Table, as_of_us: int) -> Partition:
    """Every base aggregate of the customers in `rows` (the scan's columns)."""
    cust, ids = _customer_index(rows.column(CUSTOMER_ID))
    n = len(ids)
    ts_us = rows.column("ts_us").to_numpy()
    pair = rows.column("pair").to_numpy()
    category = rows.column("category").to_numpy()
    amount = rows.column("amount").to_numpy()
    # column-major: each aggregate is written, and later read by the derivation, as one column
    base = np.empty((n, plan.n_base), order="F")
    if n == 0:
        return Partition(ids, base)

    values: dict[tuple[str, float | None], np.ndarray] = {}

    def row_value(kind: str, param: float | None) -> np.ndarray:
        """A row value, computed once a scan and shared by the groups that reduce it."""
        key = (kind, param)
        if key not in values:
            if kind == "decay":
                rate = math.log(2.0) / (float(param) * US_PER_DAY)
                values[key] = np.exp(-rate * (as_of_us - ts_us).astype(np.float64))
            elif kind == "amount_decay":
                values[key] = amount * row_value("decay", param)
            elif kind == "amount":
                values[key] = amount
            elif kind == "in_window":
                w_us = int(round(float(param) * US_PER_DAY))
                values[key] = (ts_us >= as_of_us - w_us).astype(np.float64)
            elif kind == "ts":
                values[key] = ts_us.astype(np.float64)
            else:
                raise ValueError(f"unknown row value {kind}")
        return values[key]

    # rows, cells (cell * n + customer: a cell's customers are contiguous) and row counts per
    # cell of a (pair classes, dimension) layout, shared by the groups that have it
    layouts: dict[tuple[bytes, bytes, str | None], tuple[np.ndarray | None, np.ndarray, np.ndarray]]
    layouts = {}
    for g in plan.groups:
        key = (g.pair_class.tobytes(), g.dim_index.tobytes(), g.dim)
        if key not in layouts:
            klass = g.pair_class[pair]
            if g.dim is None:
                keep = klass >= 0
            else:
                code = _dim_codes(g.dim, ts_us, category)
                inside = (code >= 0) & (code < len(g.dim_index))
                position = g.dim_index[np.where(inside, code, 0)]
                klass = klass * g.n_dim + position
                keep = (klass >= 0) & inside & (position >= 0)
            sel = None if keep.all() else np.flatnonzero(keep)
            cell = _take(klass, sel) * n + _take(cust, sel)
            counts = np.bincount(cell, minlength=g.n_cells * n).reshape(g.n_cells, n)
            layouts[key] = (sel, cell, counts)
        sel, cell, counts = layouts[key]
        size = g.n_cells * n
        if g.reducer == _SUM:
            grid = counts
            if g.value != "one":
                weights = _take(row_value(g.value, g.param), sel)
                grid = np.bincount(cell, weights=weights, minlength=size).reshape(g.n_cells, n)
            for col, cells in zip(g.columns, g.cells, strict=True):
                matches, total = _cell_sum(counts, cells), _cell_sum(grid, cells)
                base[:, col] = np.where(matches > 0, total, np.nan)
        else:
            fill = -np.inf if g.reducer == _MAX else np.inf
            grid = np.full(size, fill)
            ufunc = np.maximum if g.reducer == _MAX else np.minimum
            ufunc.at(grid, cell, _take(row_value(g.value, g.param), sel))
            grid = grid.reshape(g.n_cells, n)
            for col, cells in zip(g.columns, g.cells, strict=True):
                best = ufunc.reduce(grid[cells], axis=0, initial=fill)
                base[:, col] = np.where(np.isfinite(best), best, np.nan)
    return Partition(ids, base)
