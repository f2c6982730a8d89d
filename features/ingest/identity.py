"""Identity resolution: the identifiers linked by events become one stable `customer_id`.

Nodes are identifiers (`type:value`), edges the (customer_key, link_key) pairs events prove.
The graph is solved with scipy's connected_components on integer codes; strings are touched
only by vectorised arrow kernels, so tens of millions of links take seconds, not a Python loop.

Shared-identifier guard: an identifier linked to more distinct other identifiers than
`IdentityConfig.limit_for(its type)` (a shop's guest card, a family tablet) would merge
strangers; all its links are cut and it becomes a customer of its own.

customer_id = "c_" + the first 16 hex digits of md5(the component's lexicographically smallest
identifier, by UTF-8 bytes). It depends on nothing but the component's own members, so re-runs
give the same ids and unrelated data never renumbers anyone; a customer id changes only when
its component gains a smaller identifier (a merge) or loses its smallest (a cut).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import cached_property

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from features.config import DataConfig, IdentityConfig
from features.ingest.contract import CUSTOMER_ID, CUSTOMER_KEY, KEY_SEPARATOR, LINK_KEY

IDENTIFIER = "identifier"
IDENTIFIER_TYPE = "identifier_type"
DEGREE = "degree"
LIMIT = "limit"


def customer_id_sql(expr: str) -> str:
    """SQL (DuckDB) of the customer_id of a component whose smallest identifier is `expr`."""
    return f"('c_' || left(md5({expr}), 16))"


def customer_id_of(identifier: str) -> str:
    """The same in Python, for one identifier (the streaming path, tests)."""
    return "c_" + hashlib.md5(identifier.encode("utf-8")).hexdigest()[:16]


def masked(identifier: str, personal_types: list[str]) -> str:
    """`type:value` with a personal value replaced by three hex digits of its hash and an
    ellipsis (`email:a3f…`): enough to tell two identifiers apart, nothing to contact."""
    kind, sep, value = identifier.partition(":")
    if not sep or kind not in personal_types:
        return identifier
    return f"{kind}:{hashlib.sha256(value.encode('utf-8')).hexdigest()[:3]}…"


@dataclass(frozen=True)
class IdentitySummary:
    """Size of the identity graph and what the shared-identifier guard cut."""

    identifiers: int
    links: int  # distinct links between two different identifiers
    links_cut: int
    customers: int
    cut_identifiers: int
    largest_component: int  # identifiers in the largest customer

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class IdentityResult:
    """`table`: identifier -> customer_id (arrow, no particular order); `mapping`: the same as
    pandas. `cut`: the shared identifiers (identifier, identifier_type, degree, limit,
    customer_id), highest degree first."""

    table: pa.Table
    cut: pd.DataFrame
    summary: IdentitySummary

    @cached_property
    def mapping(self) -> pd.DataFrame:
        return self.table.to_pandas()


def _strings(values: object) -> pa.ChunkedArray:
    """Any column of identifiers (arrow, pandas, an iterable) as an arrow string column."""
    if isinstance(values, pa.ChunkedArray | pa.Array):
        arr = values
    elif isinstance(values, pd.Series | pd.Index):
        arr = pa.array(values, from_pandas=True)
    else:
        arr = pa.array(list(values), type=pa.string())
    if isinstance(arr, pa.Array):
        arr = pa.chunked_array([arr])
    if arr.type == pa.null():
        return pa.chunked_array([pa.nulls(len(arr), pa.string())])
    return arr if arr.type == pa.string() else arr.cast(pa.string())


def _column(edges: pd.DataFrame | pa.Table, name: str) -> pa.ChunkedArray:
    if isinstance(edges, pa.Table):
        return _strings(edges.column(name))
    return _strings(edges[name])


def _arrow(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    out = rel.arrow()
    return out.read_all() if isinstance(out, pa.RecordBatchReader) else out


def resolve_identities(
    edges: pd.DataFrame | pa.Table,
    config: IdentityConfig | DataConfig,
    identifiers: Iterable[str] | pa.Array | pa.ChunkedArray | pd.Series | None = None,
) -> IdentityResult:
    """Resolve identifiers to customers.

    `edges` has columns customer_key and link_key (a null link_key contributes a node only);
    `identifiers` adds nodes without links. Duplicate and reversed pairs count once, self links
    not at all.
    """
    cfg = config.identity if isinstance(config, DataConfig) else config
    a, b = _column(edges, CUSTOMER_KEY), _column(edges, LINK_KEY)
    extra = _strings([] if identifiers is None else identifiers)
    endpoints = pa.chunked_array([*a.chunks, *b.chunks, *extra.chunks], type=pa.string())
    # one hash pass codes every endpoint; nulls get -1
    codes, uniques = pd.factorize(pd.array(endpoints, dtype="str"), use_na_sentinel=True)
    nodes = pa.array(uniques, type=pa.string())
    if isinstance(nodes, pa.ChunkedArray):
        nodes = nodes.combine_chunks()
    n = len(nodes)
    ua, ub = codes[: len(a)].astype(np.int64), codes[len(a) : len(a) + len(b)].astype(np.int64)
    del codes
    ok = (ua >= 0) & (ub >= 0) & (ua != ub)
    ua, ub = ua[ok], ub[ok]

    # undirected, distinct pairs (lo < hi) as one int64 key each
    width = np.int64(max(n, 1))
    keys = np.sort(np.minimum(ua, ub) * width + np.maximum(ua, ub))
    del ua, ub, ok
    if len(keys):
        keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
    lo, hi = keys // width, keys % width
    del keys
    degree = np.bincount(lo, minlength=n) + np.bincount(hi, minlength=n)
    types = pc.list_element(pc.split_pattern(nodes, KEY_SEPARATOR, max_splits=1), 0)
    encoded = pc.dictionary_encode(types)
    type_limits = np.array(
        [cfg.limit_for(t) for t in encoded.dictionary.to_pylist()], dtype=np.int64
    )
    limits = type_limits[encoded.indices.to_numpy(zero_copy_only=False)]
    shared = degree > limits
    keep = ~(shared[lo] | shared[hi])

    graph = coo_matrix(
        (np.ones(int(keep.sum()), dtype=np.int8), (lo[keep], hi[keep])), shape=(n, n)
    ).tocsr()
    n_comp, labels = connected_components(graph, directed=False)
    del graph
    labels = labels.astype(np.int64)

    # customer_id of each component from its smallest identifier (DuckDB: parallel min, md5)
    con = duckdb.connect()
    try:
        con.register("_l", pa.table({"k": nodes, "label": labels}))
        by_label = _arrow(
            con.sql(
                f"SELECT label, {customer_id_sql('min(k)')} AS c FROM _l GROUP BY label "
                "ORDER BY label"
            )
        )
    finally:
        con.close()
    comp_ids = by_label.column("c").combine_chunks()
    if len(pc.unique(comp_ids)) != n_comp:  # 64-bit hash: ~3e-6 odds at 10M customers
        raise RuntimeError("customer_id hash collision; widen customer_id_sql")
    node_ids = comp_ids.take(pa.array(labels))
    table = pa.table({IDENTIFIER: nodes, CUSTOMER_ID: node_ids})

    cut_codes = np.flatnonzero(shared)
    cut_codes = cut_codes[np.argsort(-degree[cut_codes], kind="stable")]
    take = pa.array(cut_codes, type=pa.int64())
    cut = pa.table(
        {
            IDENTIFIER: nodes.take(take),
            IDENTIFIER_TYPE: types.take(take),
            DEGREE: pa.array(degree[cut_codes], type=pa.int64()),
            LIMIT: pa.array(limits[cut_codes], type=pa.int64()),
            CUSTOMER_ID: node_ids.take(take),
        }
    ).to_pandas()
    cut = cut.sort_values([DEGREE, IDENTIFIER], ascending=[False, True], ignore_index=True)
    summary = IdentitySummary(
        identifiers=n,
        links=len(lo),
        links_cut=int((~keep).sum()),
        customers=int(n_comp),
        cut_identifiers=len(cut_codes),
        largest_component=int(np.bincount(labels).max()) if n else 0,
    )
    return IdentityResult(table=table, cut=cut, summary=summary)


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"
