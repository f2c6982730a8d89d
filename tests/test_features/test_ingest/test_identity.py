"""Identity resolution: transitive links, the shared-identifier guard, stable customer ids."""

from __future__ import annotations

import hashlib
import random

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from features.config import DataConfig, IdentityConfig
from features.ingest.identity import customer_id_of, customer_id_sql, resolve_identities

CFG = IdentityConfig()


def edges(*pairs: tuple[str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(pairs, columns=["customer_key", "link_key"])


def ids(result) -> dict[str, str]:
    return dict(zip(result.mapping["identifier"], result.mapping["customer_id"], strict=True))


def expected_id(smallest: str) -> str:
    return "c_" + hashlib.md5(smallest.encode()).hexdigest()[:16]


def groups(result) -> set[frozenset[str]]:
    g = result.mapping.groupby("customer_id")["identifier"].apply(frozenset)
    return set(g)


def test_transitive_links_make_one_customer():
    r = resolve_identities(edges(("email:a", "crm:1"), ("crm:1", "device:z")), CFG)
    assert groups(r) == {frozenset({"email:a", "crm:1", "device:z"})}
    assert set(ids(r).values()) == {expected_id("crm:1")}  # smallest identifier of the three


def test_separate_people_stay_separate():
    r = resolve_identities(
        edges(("email:a", "crm:1"), ("email:b", "crm:2"), ("phone:9", None)), CFG
    )
    assert groups(r) == {
        frozenset({"email:a", "crm:1"}),
        frozenset({"email:b", "crm:2"}),
        frozenset({"phone:9"}),
    }
    assert r.summary.customers == 3
    assert r.summary.identifiers == 5
    assert r.summary.links == 2
    assert r.summary.largest_component == 2


def test_identifiers_without_links_are_customers_of_their_own():
    r = resolve_identities(edges(("email:a", "crm:1")), CFG, identifiers=["loyalty:7", "crm:1"])
    assert ids(r)["loyalty:7"] == expected_id("loyalty:7")
    assert r.summary.identifiers == 3


def test_a_guest_card_does_not_merge_its_50_users():
    people = [(f"email:p{i:02d}", f"crm:{i:02d}") for i in range(50)]
    pairs = [*people, *((email, "card:guest") for email, _ in people)]
    pairs.append(("email:p00", "device:p00-phone"))  # a person with a few identifiers
    r = resolve_identities(edges(*pairs), CFG)
    m = ids(r)
    assert len({m[email] for email, _ in people}) == 50
    for email, crm in people:
        assert m[email] == m[crm]
    assert m["device:p00-phone"] == m["email:p00"]
    assert m["card:guest"] == expected_id("card:guest")  # keeps its own events, alone
    assert r.cut["identifier"].tolist() == ["card:guest"]
    row = r.cut.iloc[0]
    assert (row["identifier_type"], row["degree"], row["limit"]) == ("card", 50, 4)
    assert r.summary.cut_identifiers == 1
    assert r.summary.links_cut == 50
    assert r.summary.customers == 51


def test_a_person_with_a_normal_number_of_identifiers_is_not_cut():
    devices = [("email:a", f"device:{i}") for i in range(12)]  # default limit 12: not above
    r = resolve_identities(edges(*devices), CFG)
    assert r.cut.empty
    assert r.summary.customers == 1


def test_degree_counts_distinct_neighbours_not_events():
    pairs = [("card:c", "email:a")] * 20 + [("email:a", "card:c")] * 20 + [("card:c", "card:c")]
    r = resolve_identities(edges(*pairs), CFG)
    assert r.cut.empty
    assert r.summary.links == 1
    assert r.summary.customers == 1


def test_per_type_thresholds():
    nine = [(f"email:{i}", "loyalty:shop") for i in range(9)] + [
        (f"email:{i}", "device:tablet") for i in range(9)
    ]
    r = resolve_identities(edges(*nine), CFG)  # loyalty limit 8, default 12
    assert r.cut["identifier"].tolist() == ["loyalty:shop"]
    assert r.summary.customers == 2  # tablet merges the nine; the loyalty card alone
    strict = IdentityConfig(max_links_by_type={"device": 5})  # loyalty back to default 12
    r = resolve_identities(edges(*nine), DataConfig(identity=strict))
    assert r.cut["identifier"].tolist() == ["device:tablet"]
    assert r.cut["limit"].tolist() == [5]


def test_ids_are_stable_across_reruns_order_and_unrelated_data():
    pairs = [("email:a", "crm:1"), ("crm:1", "device:x"), ("email:b", None), ("phone:1", "crm:2")]
    first = ids(resolve_identities(edges(*pairs), CFG))
    shuffled = pairs[:]
    random.Random(3).shuffle(shuffled)
    assert ids(resolve_identities(edges(*shuffled), CFG)) == first
    more = pairs + [("email:c", "crm:0"), ("email:d", "device:y"), ("card:0", None)]
    grown = ids(resolve_identities(edges(*more), CFG))
    assert {k: grown[k] for k in first} == first


def test_merging_takes_the_smallest_identifier():
    before = ids(resolve_identities(edges(("email:b", "phone:1")), CFG))
    after = ids(resolve_identities(edges(("email:b", "phone:1"), ("phone:1", "crm:0")), CFG))
    assert before["email:b"] == expected_id("email:b")
    assert after["email:b"] == expected_id("crm:0")


def test_empty_input():
    r = resolve_identities(edges(), CFG)
    assert r.mapping.empty and r.cut.empty
    assert r.summary.customers == 0


def _reference_components(pairs: list[tuple[str, str]], nodes: set[str]) -> set[frozenset[str]]:
    parent = {n: n for n in nodes}

    def find(x: str) -> str:
        while parent[x] != x:
            x = parent[x]
        return x

    for a, b in pairs:
        parent[find(a)] = find(b)
    comps: dict[str, set[str]] = {}
    for n in nodes:
        comps.setdefault(find(n), set()).add(n)
    return {frozenset(c) for c in comps.values()}


node = st.sampled_from([f"{t}:{i}" for t in ("crm", "email", "card") for i in range(8)])


@settings(max_examples=60, deadline=None, database=None)
@given(st.lists(st.tuples(node, node), max_size=40), st.integers(1, 6))
def test_matches_a_reference_union_find_with_the_guard(pairs, limit):
    cfg = IdentityConfig(max_links_per_identifier=limit, max_links_by_type={})
    nodes = {x for p in pairs for x in p}
    neighbours: dict[str, set[str]] = {n: set() for n in nodes}
    for a, b in pairs:
        if a != b:
            neighbours[a].add(b)
            neighbours[b].add(a)
    shared = {n for n, s in neighbours.items() if len(s) > limit}
    kept = [(a, b) for a, b in pairs if a not in shared and b not in shared]
    r = resolve_identities(edges(*pairs), cfg)
    assert groups(r) == _reference_components(kept, nodes)
    assert set(r.cut["identifier"]) == shared
    for comp in groups(r):
        assert ids(r)[next(iter(comp))] == expected_id(min(comp))


@pytest.mark.parametrize("kind", ["pandas", "arrow"])
def test_accepts_pandas_and_arrow(kind):
    frame = edges(("email:a", "crm:1"))
    if kind == "arrow":
        import pyarrow as pa

        frame = pa.Table.from_pandas(frame)
    assert resolve_identities(frame, CFG).summary.customers == 1


def test_python_and_sql_customer_ids_agree():
    import duckdb

    keys = ["crm:1", "email:é-ü", "device:ab:cd"]
    con = duckdb.connect()
    got = [con.execute(f"SELECT {customer_id_sql('?')}", [k]).fetchall()[0][0] for k in keys]
    assert got == [customer_id_of(k) for k in keys] == [expected_id(k) for k in keys]
