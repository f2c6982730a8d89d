"""Snapshot base aggregates in one columnar scan: the rows are read as a few narrow columns and
a compiled loop reduces them.

`features.store.batch.base_aggregates_sql` states every base aggregate as SQL (the definition Spark
runs, and DuckDB for query points). For a snapshot, a hash aggregate per (customer, channel,
event type) followed by a ~200-column pivot costs DuckDB about twenty times a plain GROUP BY,
and a numpy reduction (a bincount per row value and filter class) about ten. This module
computes the same numbers from a single projection scan:

1. the rows are read as narrow columns: the customer, the time in microseconds, integer codes
   of channel, event type and category, the amount. On the event store (`StoreFile`) pyarrow
   reads the row groups of a customer_no range, columns the store keeps as integers; the
   customer_no indexes the result's rows directly and maps back to customer_id once per
   customer. Any other relation is scanned by DuckDB, which codes the strings and filters the
   rows, and there runs of equal customer_ids are found and ranked;
2. a plan maps each (channel, event type) pair to the base aggregates whose filter it passes
   (those split by hour, weekday or category through a lookup by the row's value), with the
   moment each takes from the row (a decay weight, the amount, one, a window indicator, or
   its time for a latest / earliest);
3. one pass over the rows, compiled with numba, keeps the rows before the as-of time, sums
   each customer's moments per pair and feeds the aggregates from those sums once per
   customer. The files are sorted by customer, so a customer's rows come as a run, reduced
   into one row in cache and written out once.

Two threads reduce ranges while the calling thread reads the next one (see `scan_partitions`);
the compiled loop, pyarrow and DuckDB release the GIL.

An aggregate with no matching event is NaN, as SQL's `SUM(CASE ...)` over no rows is NULL.

Memory is bounded by a partition: when the event relation holds more than
`FeatureConfig.snapshot_partition_events` rows, customers are split into ranges (on the store
at row-group starts, elsewhere customer_id bounds from a sample) and each range is read and
reduced on its own.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import duckdb
import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.ingest.contract import (
    AMOUNT,
    CATEGORY,
    CHANNEL,
    CODED_COLUMNS,
    CUSTOMER_ID,
    CUSTOMER_NO,
    EVENT_TYPE,
    EVENT_VOCABULARY,
    TS,
)
from features.ingest.event_store import StoreFile
from features.store.definitions import US_PER_DAY, BaseAggregate, FeatureSet

_CUSTOMERS_SAMPLED = 20_000
_STORE_COLUMNS = [CUSTOMER_NO, TS, *CODED_COLUMNS.values(), AMOUNT]
_NO_TIME_LOW = np.iinfo(np.int64).min
_NO_TIME_HIGH = np.iinfo(np.int64).max
_IN_FLIGHT = 2  # ranges reduced at once (threads); the machine this was tuned on has 2 cores

# a target's dimension, and the moments of time targets
_HOUR, _DOW, _CATEGORY = 1, 2, 3
_LAST, _FIRST = -1, -2


@dataclass(frozen=True)
class ScanPlan:
    """What one snapshot scan reads and which base aggregates each of its rows feeds.

    A row's pair is its (channel code, event type code), pair = channel * (n types + 1) + type
    (codes are 1-based positions in the vocabularies, 0 for a value outside them). The pair's
    targets are `ptr[pair]:ptr[pair + 1]` of three parallel arrays:

    * `target_moment`: what the target takes from the row, an index into the row's moments
      (`_moment`: one, the amount, a decay weight per rate, the amount times each weight,
      a 0/1 indicator per window) that is added, or `_LAST` / `_FIRST` for the latest /
      earliest time;
    * `target_dim`: 0, or the dimension (`_HOUR`, `_DOW`, `_CATEGORY`) the aggregate is split by;
    * `target_column`: the aggregate's column when `target_dim` is 0, else a row of
      `dim_columns` mapping the row's hour / weekday / category code to the column (-1: none).

    A pair's list holds its targets without a dimension first, then from `dim_start[pair]`
    those split by a dimension. The first are fed once per customer from the customer's sums
    of the pair's moments (and its latest / earliest time), not once per row.
    """

    channels: list[str]
    event_types: list[str]
    categories: list[str]
    n_base: int
    ptr: np.ndarray
    dim_start: np.ndarray
    target_column: np.ndarray
    target_moment: np.ndarray
    target_dim: np.ndarray
    dim_columns: np.ndarray
    rates: np.ndarray
    windows_us: np.ndarray

    @classmethod
    def of(cls, fs: FeatureSet) -> ScanPlan:
        channels = list(dict.fromkeys([*fs.data.channel_names, *_channels_named(fs.base)]))
        event_types = list(dict.fromkeys(t for b in fs.base for t in b.event_types))
        categories = list(dict.fromkeys(str(b.dim_value) for b in fs.base if b.dim == "category"))
        rates = sorted({b.decay_rate_per_us for b in fs.base if b.op.startswith("decayed")})
        windows = sorted({_window_us(b) for b in fs.base if b.op == "window_count"})
        n_types = len(event_types) + 1
        n_pairs = (len(channels) + 1) * n_types
        direct: dict[int, list[tuple[int, int, int]]] = {}
        by_dim: dict[tuple[int, int, int], dict[int, list[int]]] = {}
        for j, b in enumerate(fs.base):
            dim, value = _dim_value(b, categories)
            if value is None:
                continue  # a dimension value no row can have
            moment = _moment(b, rates, windows)
            for ci, ch in enumerate(channels, start=1):
                if b.channels is not None and ch not in b.channels:
                    continue
                for ti, et in enumerate(event_types, start=1):
                    if et in b.event_types:
                        pair = ci * n_types + ti
                        if dim == 0:
                            direct.setdefault(pair, []).append((j, moment, 0))
                        else:
                            by_dim.setdefault((pair, dim, moment), {}).setdefault(value, []).append(
                                j
                            )
        width = max(24, 7, len(categories) + 1)
        dim_rows: list[list[int]] = []
        for (pair, dim, moment), columns in by_dim.items():
            # one lookup row per aggregate sharing (pair, dimension, moment, value): usually one
            for r in range(max(len(c) for c in columns.values())):
                row = [-1] * width
                for value, cs in columns.items():
                    if r < len(cs):
                        row[value] = cs[r]
                direct.setdefault(pair, []).append((len(dim_rows), moment, dim))
                dim_rows.append(row)
        sizes = np.zeros(n_pairs + 1, dtype=np.int64)
        n_direct = np.zeros(n_pairs, dtype=np.int64)
        flat: list[tuple[int, int, int]] = []
        for pair in range(n_pairs):
            # targets without a dimension first (fed once per customer), then the split ones;
            # within each, sums, then last times, then first times, so the loops' branches on
            # the kind of target run in long predictable stretches
            items = sorted(direct.get(pair, []), key=lambda t: (t[2], _target_kind(t[1]), t[0]))
            sizes[pair + 1] = len(items)
            n_direct[pair] = sum(1 for item in items if item[2] == 0)
            flat += items
        table = np.array(flat, dtype=np.int64).reshape(-1, 3)
        ptr = np.cumsum(sizes)
        return cls(
            channels=channels,
            event_types=event_types,
            categories=categories,
            n_base=len(fs.base),
            ptr=ptr,
            dim_start=ptr[:-1] + n_direct,
            target_column=table[:, 0].copy(),
            target_moment=table[:, 1].copy(),
            target_dim=table[:, 2].astype(np.int8),
            dim_columns=np.array(dim_rows, dtype=np.int64).reshape(-1, width),
            rates=np.array(rates, dtype=np.float64),
            windows_us=np.array(windows, dtype=np.int64),
        )

    def rows_sql(self, events: str, as_of_us: int, bounds: tuple[str | None, str | None]) -> str:
        """The DuckDB scan of a relation: rows before the as-of time whose event type some
        aggregate uses, in a customer_id range, with channel, event type and category coded as
        positions in the plan's vocabularies (0: a value outside them)."""
        lo, hi = bounds
        where = [
            f"epoch_us({TS}) < {int(as_of_us)}",
            f"{CUSTOMER_ID} IS NOT NULL",
            f"{EVENT_TYPE} IN {_in_list(self.event_types)}",
        ]
        if lo is not None:
            where.append(f"{CUSTOMER_ID} >= {_quote(lo)}")
        if hi is not None:
            where.append(f"{CUSTOMER_ID} < {_quote(hi)}")
        codes = ", ".join(
            f"CAST(COALESCE(list_position({_list(vocabulary)}, {column}), 0) AS USMALLINT) "
            f"AS {CODED_COLUMNS[column]}"
            for column, vocabulary in [
                (CHANNEL, self.channels),
                (EVENT_TYPE, self.event_types),
                (CATEGORY, self.categories),
            ]
        )
        return (
            f"SELECT {CUSTOMER_ID}, epoch_us({TS}) AS {TS}, {codes}, "
            f"CAST(COALESCE({AMOUNT}, 0.0) AS DOUBLE) AS {AMOUNT} "
            f"FROM {events} WHERE {' AND '.join(where)}"
        )


@dataclass(frozen=True)
class RowCodes:
    """How a scan's coded columns map to a plan: pair = pair_lut[channel_no, event_type_no],
    category = category_lut[category_no]; a row whose event type no aggregate uses
    (type_used[event_type_no] False) is skipped."""

    pair_lut: np.ndarray
    category_lut: np.ndarray
    type_used: np.ndarray

    @classmethod
    def of_plan(cls, plan: ScanPlan) -> RowCodes:
        """The codes `rows_sql` computes from strings: already the plan's positions."""
        n_types = len(plan.event_types) + 1
        channels = np.arange(len(plan.channels) + 1)
        return cls(
            pair_lut=channels[:, None] * n_types + np.arange(n_types)[None, :],
            category_lut=np.arange(len(plan.categories) + 1),
            type_used=np.arange(n_types) > 0,
        )

    @classmethod
    def of_store(cls, con: duckdb.DuckDBPyConnection, plan: ScanPlan) -> RowCodes:
        """The event store's codes (its `event_vocabulary`) mapped to the plan's positions."""
        vocabulary = con.sql(f"SELECT field, code, value FROM {EVENT_VOCABULARY}").fetchall()

        def positions(field: str, values: list[str]) -> np.ndarray:
            codes = {int(c): v for f, c, v in vocabulary if f == field}
            lut = np.zeros(max(codes, default=0) + 1, dtype=np.int64)
            for code, value in codes.items():
                lut[code] = values.index(value) + 1 if value in values else 0
            return lut

        channels = positions(CHANNEL, plan.channels)
        types = positions(EVENT_TYPE, plan.event_types)
        return cls(
            pair_lut=channels[:, None] * (len(plan.event_types) + 1) + types[None, :],
            category_lut=positions(CATEGORY, plan.categories),
            type_used=types > 0,
        )


def _moment(b: BaseAggregate, rates: list[float], windows: list[int]) -> int:
    """The row moment an aggregate adds, or _LAST/_FIRST. A row's moments, in order: one, the
    amount, a decay weight per rate, the amount times each weight, a 0/1 indicator per window."""
    n_rates = len(rates)
    if b.op == "count":
        return 0
    if b.op == "amount":
        return 1
    if b.op == "decayed_count":
        return 2 + rates.index(b.decay_rate_per_us)
    if b.op == "decayed_amount":
        return 2 + n_rates + rates.index(b.decay_rate_per_us)
    if b.op == "window_count":
        return 2 + 2 * n_rates + windows.index(_window_us(b))
    if b.op == "last":
        return _LAST
    if b.op == "first":
        return _FIRST
    raise ValueError(f"unknown aggregate operation {b.op}")


def _target_kind(moment: int) -> int:
    """0 for a sum of a moment, 1 for a last time, 2 for a first time."""
    return 0 if moment >= 0 else (1 if moment == _LAST else 2)


def _window_us(b: BaseAggregate) -> int:
    return int(round(float(b.param) * US_PER_DAY))


def _dim_value(b: BaseAggregate, categories: list[str]) -> tuple[int, int | None]:
    """An aggregate's dimension code and the row value it counts (None: no row can have it):
    hour 0-23, weekday 0-6 (0: Monday), or 1 + the category's position (0: other)."""
    if b.dim is None:
        return 0, 0
    if b.dim == "hour":
        return _HOUR, int(b.dim_value) if 0 <= int(b.dim_value) < 24 else None
    if b.dim == "dow":
        return _DOW, int(b.dim_value) if 0 <= int(b.dim_value) < 7 else None
    if b.dim == "category":
        return _CATEGORY, categories.index(str(b.dim_value)) + 1
    raise ValueError(f"unknown feature dimension {b.dim}")


def _channels_named(base: list[BaseAggregate]) -> list[str]:
    return [c for b in base for c in (b.channels or ())]


def _quote(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def _in_list(values: list[str]) -> str:
    return "(" + ", ".join(_quote(v) for v in values) + ")"


def _list(values: list[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]::VARCHAR[]"


def partition_bounds(
    con: duckdb.DuckDBPyConnection, events: str, partition_events: int
) -> list[tuple[str | None, str | None]]:
    """Ranges [lo, hi) of customer_id holding about `partition_events` events each (quantiles
    of a sample of the events' customer_ids); one range (no bounds) when the relation is small
    enough."""
    n_events = con.sql(f"SELECT count(*) FROM {events}").fetchall()[0][0]
    n_parts = max(1, math.ceil(n_events / max(partition_events, 1)))
    cuts: list[str] = []
    if n_parts > 1:
        sample = con.sql(
            f"SELECT {CUSTOMER_ID} FROM {events} WHERE {CUSTOMER_ID} IS NOT NULL "
            f"USING SAMPLE reservoir({_CUSTOMERS_SAMPLED} ROWS) REPEATABLE (7)"
        ).fetchall()
        keys = sorted(r[0] for r in sample)
        if keys:
            cuts = sorted({keys[len(keys) * k // n_parts] for k in range(1, n_parts)})
    edges = [None, *cuts, None]
    return list(zip(edges[:-1], edges[1:], strict=True))


@dataclass
class Partition:
    """Base aggregates of one customer range: sorted customer ids and a (customers x base)
    float64 matrix in `FeatureSet.base` order (NaN where no event matched)."""

    customer_ids: pa.Array
    base: np.ndarray
    customer_no: np.ndarray | None = None  # the store's numbers of the customers, if scanned there

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
    store: StoreFile | None = None,
) -> Iterator[Partition]:
    """Base aggregates of every customer with an event before `as_of_us`, a customer range at a
    time, ranges in customer_id order (so the partitions concatenate into a sorted table).
    `store`: the event store's file behind `events` (`StoreFile.of`), read by row groups;
    without it DuckDB scans the relation.

    Two cores at work: two threads reduce ranges (the compiled loop) while this one reads the
    next range and the caller derives the finished ones (the compiled loops, pyarrow and
    DuckDB release the GIL). At most `_IN_FLIGHT` ranges are read and not yet handed over.
    """
    plan = plan or ScanPlan.of(fs)
    if store is not None:
        codes = RowCodes.of_store(con, plan)
        ranges: list = store.ranges(partition_events)
    else:
        codes = RowCodes.of_plan(plan)
        ranges = partition_bounds(con, events, partition_events)
    with ThreadPoolExecutor(max_workers=_IN_FLIGHT, thread_name_prefix="nba-reduce") as pool:
        pending: deque[Future[Partition]] = deque()
        for bounds in ranges:
            if store is not None:
                lo, hi = bounds
                rows = store.read(lo, hi, _STORE_COLUMNS)
                ids = store.customer_ids.slice(lo, hi - lo)
                job = pool.submit(reduce_store_rows, plan, codes, rows, as_of_us, lo, ids)
            else:
                rows = con.sql(plan.rows_sql(events, as_of_us, bounds)).to_arrow_table()
                job = pool.submit(reduce_rows, plan, codes, rows, as_of_us)
            pending.append(job)
            del rows
            if len(pending) >= _IN_FLIGHT:
                yield from _non_empty(pending.popleft().result())
        while pending:
            yield from _non_empty(pending.popleft().result())


def _non_empty(part: Partition) -> Iterator[Partition]:
    if len(part.customer_ids):
        yield part


def _string_buffers(ids: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """The offsets and bytes of a string array without nulls (views, no copy)."""
    _, offsets, data = ids.buffers()
    width = np.int64 if pa.types.is_large_string(ids.type) else np.int32
    offsets = np.frombuffer(offsets, dtype=width)[ids.offset : ids.offset + len(ids) + 1]
    data = np.frombuffer(data, dtype=np.uint8) if data is not None else np.zeros(0, np.uint8)
    return offsets, data


@numba.njit(nogil=True, cache=True)
def _id_changes(offsets: np.ndarray, data: np.ndarray) -> np.ndarray:
    """changed[i]: string i + 1 differs from string i."""
    n = len(offsets) - 1
    changed = np.zeros(max(n - 1, 0), dtype=np.bool_)
    for i in range(n - 1):
        a, b, end = offsets[i], offsets[i + 1], offsets[i + 2]
        if b - a != end - b:
            changed[i] = True
            continue
        for k in range(b - a):
            if data[a + k] != data[b + k]:
                changed[i] = True
                break
    return changed


def _customer_index(ids: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array]:
    """Index of each row's customer among the sorted distinct customer ids, and those ids.

    The event store is sorted by customer_id, but a parallel scan may hand its row groups over
    out of order: the rows come as runs of one customer each. The runs are found by comparing
    neighbouring ids (compiled), and only the runs' ids, not every row's, are sorted when the
    runs are not already in order.
    """
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
        ids = ids.cast(pa.large_string())
    n = len(ids)
    if n == 0:
        return np.zeros(0, dtype=np.int64), ids
    changed = _id_changes(*_string_buffers(ids))
    run = np.zeros(n, dtype=np.int64)
    np.cumsum(changed, out=run[1:])
    run_ids = ids.take(pa.array(np.concatenate([[0], np.flatnonzero(changed) + 1])))
    m = len(run_ids)
    if m == 1 or pc.all(pc.less(run_ids.slice(0, m - 1), run_ids.slice(1))).as_py():
        return run, run_ids
    encoded = pc.dictionary_encode(run_ids)
    order = pc.sort_indices(encoded.dictionary).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    run_rank = rank[encoded.indices.to_numpy()]
    return run_rank[run], encoded.dictionary.take(pa.array(order))


@numba.njit(nogil=True, cache=True)
def _c_remainder(x: int, m: int) -> int:
    """x % m with C's sign (SQL's `%`): negative for negative x."""
    return x - int(x / m) * m


@numba.njit(nogil=True, cache=True, inline="always")
def _row_moment(
    m: int, a: float, t: int, i: int, decay: np.ndarray, as_of_us: int, windows_us: np.ndarray
) -> float:
    """Row i's moment m (the order of `_moment`): one, the amount, a decay weight per rate,
    the amount times each weight, a 0/1 indicator per window."""
    n_rates = decay.shape[0]
    if m == 0:
        return 1.0
    if m == 1:
        return a
    k = m - 2
    if k < n_rates:
        return decay[k, i]
    if k < 2 * n_rates:
        return a * decay[k - n_rates, i]
    return 1.0 if t >= as_of_us - windows_us[k - 2 * n_rates] else 0.0


@numba.njit(nogil=True, cache=True, inline="always")
def _fold(acc: np.ndarray, j: int, m: int, x: float) -> None:
    """Fold x into aggregate j as its target kind says: add it to a sum (m >= 0; a missing
    sum starts at x), or keep the later (_LAST) or the earlier (_FIRST) time."""
    old = acc[j]
    if m >= 0:
        acc[j] = x if math.isnan(old) else old + x
    elif m == _LAST:
        if not old >= x:  # NaN or earlier
            acc[j] = x
    elif not old <= x:  # _FIRST: NaN or later
        acc[j] = x


@numba.njit(nogil=True, cache=True)
def _feed_pairs(
    touched: np.ndarray,
    n_touched: int,
    ptr: np.ndarray,
    dim_start: np.ndarray,
    target_column: np.ndarray,
    target_moment: np.ndarray,
    pair_sum: np.ndarray,
    pair_last: np.ndarray,
    pair_first: np.ndarray,
    pair_open: np.ndarray,
    acc: np.ndarray,
) -> None:
    """Add a customer's per-pair sums to the aggregates without a dimension, and reset them."""
    for q_i in range(n_touched):
        q = touched[q_i]
        for e in range(ptr[q], dim_start[q]):
            m = target_moment[e]
            x = pair_sum[q, m] if m >= 0 else float(pair_last[q] if m == _LAST else pair_first[q])
            _fold(acc, target_column[e], m, x)
        pair_open[q] = False
        pair_sum[q, :] = 0.0
        pair_last[q] = _NO_TIME_LOW
        pair_first[q] = _NO_TIME_HIGH


@numba.njit(nogil=True, cache=True)
def _reduce_loop(
    cust: np.ndarray,
    cust_offset: int,
    ts_us: np.ndarray,
    channel_no: np.ndarray,
    event_type_no: np.ndarray,
    category_no: np.ndarray,
    amount: np.ndarray,
    as_of_us: int,
    pair_lut: np.ndarray,
    category_lut: np.ndarray,
    ptr: np.ndarray,
    dim_start: np.ndarray,
    target_column: np.ndarray,
    target_moment: np.ndarray,
    target_dim: np.ndarray,
    dim_columns: np.ndarray,
    decay: np.ndarray,
    windows_us: np.ndarray,
    type_used: np.ndarray,
    out: np.ndarray,
    seen: np.ndarray,
) -> None:
    """Add every row before `as_of_us` whose event type some aggregate uses to the aggregates
    it feeds, row i to out's row cust[i] - cust_offset (rows outside out are skipped), and
    mark that row seen (a row not seen before is not read: `out` may start uninitialised).

    A customer's rows come in runs (the file is in customer order). Within a run, each row's
    moments are summed per (channel, event type) pair, and at the run's end those sums feed
    the aggregates (`_feed_pairs`) into one row kept in cache, written out once. Aggregates
    split by hour, weekday or category take each row directly. `decay[k, i]` is row i's
    weight exp(-rate_k * age) (computed vectorised by numpy, a few times faster than here).
    """
    n_rates = decay.shape[0]
    n_moments = 2 + 2 * n_rates + len(windows_us)
    n_pairs = len(ptr) - 1
    pair_sum = np.zeros((n_pairs, n_moments))
    pair_last = np.full(n_pairs, _NO_TIME_LOW, dtype=np.int64)
    pair_first = np.full(n_pairs, _NO_TIME_HIGH, dtype=np.int64)
    pair_open = np.zeros(n_pairs, dtype=np.bool_)  # the pair has rows in the current run
    touched = np.empty(n_pairs, dtype=np.int64)
    n_touched = 0
    dim_value = np.zeros(4, dtype=np.int64)
    acc = np.empty(out.shape[1])
    current = -1
    n_out = out.shape[0]
    for i in range(len(ts_us) + 1):
        if i < len(ts_us):
            c = np.int64(cust[i]) - cust_offset
            t = ts_us[i]
            if c < 0 or c >= n_out or t >= as_of_us or not type_used[event_type_no[i]]:
                continue
        else:
            c = -1  # past the last row: close its run
        if c != current:
            if current >= 0:
                _feed_pairs(
                    touched,
                    n_touched,
                    ptr,
                    dim_start,
                    target_column,
                    target_moment,
                    pair_sum,
                    pair_last,
                    pair_first,
                    pair_open,
                    acc,
                )
                n_touched = 0
                out[current, :] = acc
                seen[current] = True
            current = c
            if c >= 0 and seen[c]:
                acc[:] = out[c, :]  # the customer's rows continue a run of an earlier batch
            else:
                acc[:] = np.nan
        if c < 0:
            break  # past the last row (no row at all passed when no run was open)
        p = pair_lut[channel_no[i], event_type_no[i]]
        if ptr[p] == ptr[p + 1]:
            continue
        if not pair_open[p]:
            pair_open[p] = True
            touched[n_touched] = p
            n_touched += 1
        a = amount[i]
        # the row's moments (see `_moment`) added to its pair's sums straight, without a branch
        # on the pair's first row: `_feed_pairs` leaves every pair's sums at zero
        pair_sum[p, 0] += 1.0
        pair_sum[p, 1] += a
        for k in range(n_rates):
            w = decay[k, i]
            pair_sum[p, 2 + k] += w
            pair_sum[p, 2 + n_rates + k] += a * w
        for k in range(len(windows_us)):
            if t >= as_of_us - windows_us[k]:
                pair_sum[p, 2 + 2 * n_rates + k] += 1.0
        pair_last[p] = max(pair_last[p], t)
        pair_first[p] = min(pair_first[p], t)
        if dim_start[p] == ptr[p + 1]:
            continue
        # as `base_aggregates_sql`: floor of the hours (days) since the epoch, C remainder;
        # integer floor division equals SQL's FLOOR(ts / 3.6e9) below 2^53 us
        if t >= 0:  # integer division by constants: multiplications
            dim_value[_HOUR] = (t // 3_600_000_000) % 24
            dim_value[_DOW] = (t // US_PER_DAY + 3) % 7
        else:
            dim_value[_HOUR] = _c_remainder(t // 3_600_000_000, 24)
            dim_value[_DOW] = _c_remainder(t // US_PER_DAY + 3, 7)
        dim_value[_CATEGORY] = category_lut[category_no[i]]
        for e in range(dim_start[p], ptr[p + 1]):
            v = dim_value[target_dim[e]]
            if v < 0:
                continue  # before 1970: SQL's remainder is negative, no hour matches
            j = dim_columns[target_column[e], v]
            if j < 0:
                continue
            m = target_moment[e]
            x = _row_moment(m, a, t, i, decay, as_of_us, windows_us) if m >= 0 else float(t)
            _fold(acc, j, m, x)


def reduce_rows(plan: ScanPlan, codes: RowCodes, rows: pa.Table, as_of_us: int) -> Partition:
    """Every base aggregate of the customers in `rows` (DuckDB's scan, by customer_id)."""
    cust, ids = _customer_index(rows.column(CUSTOMER_ID))
    base = np.empty((len(ids), plan.n_base))
    seen = np.zeros(len(ids), dtype=np.bool_)
    if len(cust):
        batch = rows.combine_chunks().to_batches()[0]
        _reduce_batch(plan, codes, batch, as_of_us, cust, 0, base, seen)
    return Partition(ids, base)


def reduce_store_rows(
    plan: ScanPlan,
    codes: RowCodes,
    rows: pa.Table,
    as_of_us: int,
    lo: int,
    ids: pa.Array,
) -> Partition:
    """Every base aggregate of the customers numbered lo .. lo + len(ids) - 1 in `rows` (row
    groups of the store file, which may hold neighbours too), where `ids` are their
    customer_ids; customers without a row before the as-of time are left out."""
    base = np.empty((len(ids), plan.n_base))
    seen = np.zeros(len(ids), dtype=np.bool_)
    # record batch by batch: their columns are numpy views, no copy
    for batch in rows.to_batches():
        if batch.num_rows:
            numbers = batch.column(CUSTOMER_NO).to_numpy()
            _reduce_batch(plan, codes, batch, as_of_us, numbers, lo, base, seen)
    if seen.all():
        return Partition(ids, base, np.arange(lo, lo + len(ids)))
    kept = np.flatnonzero(seen)
    return Partition(ids.take(pa.array(kept)), base[kept], kept + lo)


def _reduce_batch(
    plan: ScanPlan,
    codes: RowCodes,
    batch: pa.RecordBatch,
    as_of_us: int,
    cust: np.ndarray,
    cust_offset: int,
    out: np.ndarray,
    seen: np.ndarray,
) -> None:
    """Add a batch of scanned rows, row i belonging to out's row cust[i] - cust_offset."""
    channel, event_type, category = (
        batch.column(CODED_COLUMNS[c]).to_numpy() for c in (CHANNEL, EVENT_TYPE, CATEGORY)
    )
    # the lookups are not bounds-checked in the compiled loop
    if (
        channel.max() >= codes.pair_lut.shape[0]
        or event_type.max() >= codes.pair_lut.shape[1]
        or category.max() >= len(codes.category_lut)
    ):
        raise ValueError(
            f"a code outside {EVENT_VOCABULARY}: the event store is inconsistent; "
            "run `nba ingest` again"
        )
    ts = _microseconds(batch.column(TS))
    # one contiguous row of weights per rate: an outer product with the rates as its short
    # inner axis runs numpy's loops 3 elements at a time, several times slower
    decay = np.multiply.outer(-plan.rates, np.subtract(as_of_us, ts, dtype=np.float64))
    with np.errstate(over="ignore"):  # rows after the as-of time, which the loop skips
        np.exp(decay, out=decay)
    _reduce_loop(
        cust,
        int(cust_offset),
        ts,
        channel,
        event_type,
        category,
        pc.fill_null(batch.column(AMOUNT), 0.0).to_numpy(),
        int(as_of_us),
        codes.pair_lut,
        codes.category_lut,
        plan.ptr,
        plan.dim_start,
        plan.target_column,
        plan.target_moment,
        plan.target_dim,
        plan.dim_columns,
        decay,
        plan.windows_us,
        codes.type_used,
        out,
        seen,
    )


def _microseconds(times: pa.Array) -> np.ndarray:
    """int64 microseconds since the epoch of a timestamp (or already integer) column; a view
    when the timestamps are in microseconds, as DuckDB's are."""
    if pa.types.is_timestamp(times.type):
        if times.type.unit == "us":
            return times.view(pa.int64()).to_numpy()
        return times.cast(pa.timestamp("us", tz=times.type.tz)).view(pa.int64()).to_numpy()
    return times.to_numpy()
