"""The omnichannel maturity report's numbers: what recognition and consents are worth, in money.

Five parts, each from the event store and the champion policy (`nba maturity`):

1. recognition: resolved customers against identifiers, the events, purchases and revenue on
   identifiers linked to no other, customers seen on 1, 2, 3+ channels, what the guard cut;
2. consent coverage per outbound channel and month, from the event-sourced consent state (the
   `{channel}_consent` feature's rule: granted, and not revoked since), grants and revocations;
3. what a consent is worth: the policy's expected incremental profit with the channel's consent
   switched on (for those without it) or off (for those with it), its other channels untouched;
4. what recognition is worth: the policy's expected profit when fragments are seen together,
   on a re-resolution by the customers table's attributes and, for fragments without any, by
   splitting linked customers apart; on a synthetic world, merging by the true person beside it;
5. what data the last run used: channels of history behind each decision and its reasons.

Every money figure is the policy's own expected incremental profit of one decision (the real
`DecisionPolicy.decide`: eligibility, scoring, exploration), times `maturity.decisions_per_year`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from features.config import DataConfig
from features.errors import UserError
from features.ingest.contract import AMOUNT, CHANNEL, CUSTOMER_ID, CUSTOMER_KEY, DataDir
from features.store.batch import AS_OF, BatchEngine
from features.store.definitions import FeatureConfig
from serving.catalogue import NOTHING
from serving.config import MaturityConfig
from serving.contact_policy import consent_column
from serving.decision_log import DECISIONS_DIR
from serving.exploration import choice_probabilities, with_nothing
from serving.policy import DecisionPolicy, Decisions

SINGLE = "single"  # an identifier linked to no other


@dataclass
class MaturityInputs:
    """What every part reads: the data directory, its store, features and the champion policy."""

    data_dir: DataDir
    con: duckdb.DuckDBPyConnection
    engine: BatchEngine
    policy: DecisionPolicy
    data: DataConfig
    features_cfg: FeatureConfig
    cfg: MaturityConfig
    as_of: pd.Timestamp

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.cfg.seed)


def _in(values: list[str]) -> str:
    """A SQL list of string literals."""
    return (
        "(" + ", ".join("'" + v.replace("'", "''") + "'" for v in values) + ")"
        if values
        else "(NULL)"
    )


# --- 1. recognition ---------------------------------------------------------------------------


@dataclass
class Recognition:
    identifiers: int
    customers: int
    single_customers: int  # customers of one identifier linked to no other
    events: int
    purchases: int
    revenue: float
    single_events: int
    single_purchases: int
    single_revenue: float
    channels_seen: pd.DataFrame  # channels (0, 1, 2, 3+), customers, share
    shared: pd.DataFrame  # identifier_type, identifiers cut, their events
    by_type: pd.DataFrame  # identifier_type, identifiers, single (fragments of one identifier)

    @property
    def shares(self) -> dict[str, float]:
        def share(a: float, b: float) -> float:
            return a / b if b else 0.0

        return {
            "events": share(self.single_events, self.events),
            "purchases": share(self.single_purchases, self.purchases),
            "revenue": share(self.single_revenue, self.revenue),
        }


def _sizes(con: duckdb.DuckDBPyConnection) -> None:
    """Temp table _nba_sizes: customer_id, n (its identifiers)."""
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _nba_sizes AS SELECT customer_id, count(*) AS n "
        "FROM identity GROUP BY customer_id"
    )


def recognition(con: duckdb.DuckDBPyConnection, data: DataConfig) -> Recognition:
    """Counts of the identity graph and of the events on identifiers linked to no other."""
    purchase = _in(data.event_types.purchase)
    outbound = _in(data.event_types.outbound)
    _sizes(con)
    ids, customers, single = con.execute(
        "SELECT sum(n)::BIGINT, count(*), count(*) FILTER (WHERE n = 1) FROM _nba_sizes"
    ).fetchall()[0]
    row = con.execute(
        f"""SELECT count(*),
                   count(*) FILTER (WHERE s.n = 1),
                   count(*) FILTER (WHERE e.event_type IN {purchase}),
                   count(*) FILTER (WHERE e.event_type IN {purchase} AND s.n = 1),
                   coalesce(sum(e.{AMOUNT}) FILTER (WHERE e.event_type IN {purchase}), 0),
                   coalesce(sum(e.{AMOUNT}) FILTER (WHERE e.event_type IN {purchase}
                                                    AND s.n = 1), 0)
            FROM events e JOIN _nba_sizes s USING ({CUSTOMER_ID})"""
    ).fetchall()[0]
    seen = con.sql(
        f"""WITH c AS (
              SELECT s.customer_id, count(DISTINCT e.channel) FILTER (
                       WHERE e.event_type NOT IN {outbound}) AS k
              FROM _nba_sizes s LEFT JOIN events e USING ({CUSTOMER_ID}) GROUP BY 1)
            SELECT least(k, 3) AS channels, count(*) AS customers FROM c GROUP BY 1 ORDER BY 1"""
    ).df()
    seen = (
        seen.set_index("channels")
        .reindex(range(4), fill_value=0)
        .rename(index={3: "3+"})
        .rename_axis("channels")
        .reset_index()
    )
    seen["channels"] = seen["channels"].astype(str)
    seen["share"] = seen["customers"] / max(customers, 1)
    shared = con.sql(
        f"""SELECT s.identifier_type, count(DISTINCT s.identifier) AS identifiers,
                   count(e.{CUSTOMER_KEY}) AS events
            FROM shared_identifiers s LEFT JOIN events e
              ON e.{CUSTOMER_KEY} = s.identifier OR e.link_key = s.identifier
            GROUP BY 1 ORDER BY 2 DESC"""
    ).df()
    by_type = con.sql(
        """SELECT i.identifier_type, count(*) AS identifiers,
                  count(*) FILTER (WHERE s.n = 1) AS single
           FROM identity i JOIN _nba_sizes s USING (customer_id) GROUP BY 1 ORDER BY 2 DESC"""
    ).df()
    return Recognition(
        identifiers=int(ids or 0),
        customers=int(customers),
        single_customers=int(single),
        events=int(row[0]),
        single_events=int(row[1]),
        purchases=int(row[2]),
        single_purchases=int(row[3]),
        revenue=float(row[4]),
        single_revenue=float(row[5]),
        channels_seen=seen,
        shared=shared,
        by_type=by_type,
    )


# --- 2. consent coverage ----------------------------------------------------------------------


def consent_coverage(
    con: duckdb.DuckDBPyConnection, data: DataConfig, features_cfg: FeatureConfig
) -> pd.DataFrame:
    """Per outbound channel and month: customers known by the month's end, those with consent
    then (granted and not revoked since, as the consent feature says; a grant and a revocation
    at the same time leave it revoked), the coverage, and the grants and revocations in it."""
    channels = data.outbound_channels
    granted = data.event_types.consent_granted
    revoking = list(features_cfg.revoking_event_types)
    if not channels:
        return pd.DataFrame(
            columns=["month", CHANNEL, "known", "consented", "coverage", "grants", "revocations"]
        )
    changes = con.sql(
        f"""WITH c AS (
              SELECT customer_id, channel, ts,
                     CASE WHEN event_type = '{granted}' THEN 1 ELSE 0 END AS state
              FROM events
              WHERE channel IN {_in(channels)}
                AND event_type IN {_in([granted, *revoking])}),
            d AS (
              SELECT *, state - coalesce(lag(state) OVER (
                       PARTITION BY customer_id, channel ORDER BY ts, state DESC), 0) AS delta
              FROM c)
            SELECT date_trunc('month', ts)::DATE AS month, channel,
                   sum(delta)::BIGINT AS net, count(*) FILTER (WHERE state = 1) AS grants,
                   count(*) FILTER (WHERE state = 0) AS revocations
            FROM d GROUP BY ALL"""
    ).df()
    known = con.sql(
        """SELECT month, count(*) AS new FROM (
             SELECT date_trunc('month', min(ts))::DATE AS month FROM events GROUP BY customer_id)
           GROUP BY 1"""
    ).df()
    changes["month"] = pd.to_datetime(changes["month"])
    known["month"] = pd.to_datetime(known["month"])
    months = pd.date_range(known["month"].min(), known["month"].max(), freq="MS")
    months = months.union(pd.DatetimeIndex(changes["month"].unique())).sort_values()
    known_by = known.groupby("month")["new"].sum().reindex(months, fill_value=0).cumsum()
    rows = []
    for ch in channels:
        mine = changes[changes[CHANNEL] == ch].set_index("month").reindex(months)
        rows.append(
            pd.DataFrame(
                {
                    "month": months,
                    CHANNEL: ch,
                    "known": known_by.to_numpy(),
                    "consented": mine["net"].fillna(0).astype(int).cumsum().to_numpy(),
                    "grants": mine["grants"].fillna(0).astype(int).to_numpy(),
                    "revocations": mine["revocations"].fillna(0).astype(int).to_numpy(),
                }
            )
        )
    out = pd.concat(rows, ignore_index=True)
    out["coverage"] = out["consented"] / out["known"].where(out["known"] > 0)
    return out[["month", CHANNEL, "known", "consented", "coverage", "grants", "revocations"]]


# --- 3. what a consent is worth ---------------------------------------------------------------


def expected_profit(scores: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
    """Per customer: the expected incremental profit of the policy's choice (do nothing: 0)."""
    s = with_nothing(scores)
    return np.where(probabilities > 0, probabilities * np.where(np.isfinite(s), s, 0.0), 0.0).sum(
        axis=1
    )


def _decide(policy: DecisionPolicy, features: pd.DataFrame, seed: int) -> Decisions:
    """The policy's batch decision without reasons (a report needs the scores, not the words)."""
    return policy.decide(features, reasons=False, rng=np.random.default_rng(seed))


def _value_with(
    policy: DecisionPolicy, base: Decisions, switched: Decisions, rows: np.ndarray, cols: list[int]
) -> np.ndarray:
    """Expected profit of customers `rows` when actions `cols` are scored as in `switched` (the
    features with a consent changed) and the others as in `base` (the features as they are)."""
    scores = base.scored.score[rows].copy()
    scores[:, cols] = switched.scored.score[:, cols]
    return expected_profit(scores, choice_probabilities(scores, policy.cfg.exploration))


@dataclass
class ConsentValues:
    table: pd.DataFrame  # one row a channel
    per_customer: dict[str, pd.DataFrame]  # channel -> customer_id, has_consent, value (a year)
    note: str = ""


def consent_values(
    inputs: MaturityInputs, features: pd.DataFrame, base: Decisions | None = None
) -> ConsentValues:
    """What a consent on each outbound channel is worth a year: for customers without it, the
    policy's expected incremental profit with it minus without (its actions then eligible and
    the model fed consent = 1); for customers with it, what losing it would cost. `base`: the
    policy's decision on `features` when already made (decided here otherwise)."""
    policy, cfg = inputs.policy, inputs.cfg
    per_year = cfg.decisions_per_year
    columns = [
        CHANNEL,
        "actions",
        "without_consent",
        "value_mean",
        "value_top_decile",
        "value_total",
        "with_consent",
        "loss_mean",
        "loss_total",
    ]
    if not policy.cfg.contact_policy.require_consent:
        return ConsentValues(
            pd.DataFrame(columns=columns),
            {},
            "the contact policy does not require consent (policy.contact_policy.require_consent: "
            "false): a consent changes no decision's eligibility, so it is not valued",
        )
    if base is None:
        base = _decide(policy, features, cfg.seed)
    base_value = expected_profit(base.scored.score, base.probabilities)
    rows, per_customer = [], {}
    for ch in inputs.data.outbound_channels:
        column = consent_column(ch)
        if column not in features.columns:
            continue
        cols = [j for j, c in enumerate(base.scored.channels) if c == ch]
        has = features[column].to_numpy(dtype=float) > 0.5
        value = np.zeros(len(features))
        for rows_, to in ((np.flatnonzero(~has), 1.0), (np.flatnonzero(has), 0.0)):
            if not cols or not len(rows_):
                continue
            switched = features.iloc[rows_].copy()
            switched[column] = to
            dec = _decide(policy, switched, cfg.seed)
            with_it = _value_with(policy, base, dec, rows_, cols)
            gain = with_it - base_value[rows_] if to == 1.0 else base_value[rows_] - with_it
            value[rows_] = gain * per_year
        without = value[~has]
        top = (
            np.sort(without)[::-1][: max(1, int(np.ceil(len(without) / 10)))]
            if len(without)
            else without
        )
        rows.append(
            {
                CHANNEL: ch,
                "actions": len(cols),
                "without_consent": int((~has).sum()),
                "value_mean": float(without.mean()) if len(without) else 0.0,
                "value_top_decile": float(top.mean()) if len(top) else 0.0,
                "value_total": float(without.sum()),
                "with_consent": int(has.sum()),
                "loss_mean": float(value[has].mean()) if has.any() else 0.0,
                "loss_total": float(value[has].sum()),
            }
        )
        per_customer[ch] = pd.DataFrame(
            {CUSTOMER_ID: features[CUSTOMER_ID].to_numpy(), "has_consent": has, "value": value}
        )
    return ConsentValues(pd.DataFrame(rows, columns=columns), per_customer)


# --- 4. what recognition is worth -------------------------------------------------------------


def group_values(inputs: MaturityInputs, mapping: pd.DataFrame) -> pd.Series:
    """Expected incremental profit of one decision per group when the events of each
    identifier in `mapping` (identifier, grp) are seen as the group's. Indexed by group."""
    found = group_decisions(inputs, mapping)
    if found is None:
        return pd.Series(dtype=float)
    groups, dec = found
    return pd.Series(expected_profit(dec.scored.score, dec.probabilities), index=groups)


def group_decisions(
    inputs: MaturityInputs, mapping: pd.DataFrame
) -> tuple[np.ndarray, Decisions] | None:
    """The policy's decision per group when the events of each identifier in `mapping`
    (identifier, grp) are seen as the group's: point-in-time features of the re-keyed events
    (the group takes the customers-table row of its first member that has one). None when no
    group has an event."""
    if mapping.empty:
        return None
    con = inputs.con
    con.register("_nba_map", mapping[["identifier", "grp"]])
    try:
        con.execute(
            f"""CREATE OR REPLACE TEMP VIEW _nba_map_events AS
                SELECT m.grp AS {CUSTOMER_ID}, e.* EXCLUDE ({CUSTOMER_ID})
                FROM events e JOIN _nba_map m ON e.{CUSTOMER_KEY} = m.identifier"""
        )
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE _nba_map_customers AS
                SELECT g.grp AS {CUSTOMER_ID}, c.* EXCLUDE ({CUSTOMER_ID})
                FROM (SELECT DISTINCT i.{CUSTOMER_ID}, m.grp
                      FROM identity i JOIN _nba_map m ON i.identifier = m.identifier) g
                JOIN customers c USING ({CUSTOMER_ID})
                QUALIFY row_number() OVER (PARTITION BY g.grp ORDER BY c.{CUSTOMER_ID}) = 1"""
        )
        engine = BatchEngine(
            inputs.engine.fs, con, events="_nba_map_events", customers="_nba_map_customers"
        )
        feats = engine.snapshot(inputs.as_of)
    finally:
        con.unregister("_nba_map")
    if feats.empty:
        return None
    return feats[CUSTOMER_ID].to_numpy(), _decide(inputs.policy, feats, inputs.cfg.seed)


@dataclass
class MergeValue:
    """What seeing fragments together is worth under one re-resolution."""

    method: str
    fragments: int  # current customers merged
    merged: int  # customers they become
    value_per_year: float  # sum over merged customers of V(merged) - sum V(fragments)
    note: str = ""
    # on a synthetic world: the same decisions' true incremental profit, merged minus apart
    true_value_per_year: float | None = None


def merge_value(
    inputs: MaturityInputs, parts: pd.DataFrame, method: str, note: str = ""
) -> MergeValue:
    """`parts`: identifier, customer_id (the current fragment), grp (the merged customer).
    The value of the merge: the merged customers' expected profit minus their fragments'."""
    if parts.empty:
        return MergeValue(method, 0, 0, 0.0, note)
    apart = group_values(inputs, parts.assign(grp=parts[CUSTOMER_ID])[["identifier", "grp"]])
    together = group_values(inputs, parts[["identifier", "grp"]])
    gain = float(together.sum() - apart.sum()) * inputs.cfg.decisions_per_year
    return MergeValue(
        method, int(parts[CUSTOMER_ID].nunique()), int(parts["grp"].nunique()), gain, note
    )


def truth_merge(inputs: MaturityInputs) -> MergeValue | None:
    """On a synthetic world: every person's customers merged into one (each current customer
    is the person most of its identifiers belong to); None without a truth table. Beside the
    model's figure, the true incremental profit of the same decisions, merged minus apart
    (the truth's profit per person and action; several fragments contacting one person each
    count in full)."""
    root = inputs.data_dir.truth / "identity"
    if not root.exists():
        return None
    parts = inputs.con.sql(
        f"""WITH p AS (
              SELECT i.{CUSTOMER_ID}, mode(t.person_id) AS person
              FROM identity i JOIN read_parquet('{root}/*.parquet') t USING (identifier)
              WHERE t.person_id IS NOT NULL GROUP BY 1),
            split AS (SELECT person FROM p GROUP BY 1 HAVING count(*) > 1)
            SELECT i.identifier, i.{CUSTOMER_ID}, 'p_' || p.person AS grp, p.person
            FROM identity i JOIN p USING ({CUSTOMER_ID}) JOIN split USING (person)"""
    ).df()
    method = "truth: merged by the true person"
    if parts.empty:
        return MergeValue(method, 0, 0, 0.0, true_value_per_year=0.0)
    apart = group_decisions(inputs, parts.assign(grp=parts[CUSTOMER_ID]))
    together = group_decisions(inputs, parts)
    person = parts.drop_duplicates("grp").set_index("grp")["person"]
    person_of_customer = parts.drop_duplicates(CUSTOMER_ID).set_index(CUSTOMER_ID)["person"]
    per_year = inputs.cfg.decisions_per_year
    expected, true = 0.0, 0.0
    for sign, found, persons in ((-1, apart, person_of_customer), (1, together, person)):
        if found is None:
            continue
        groups, dec = found
        expected += sign * float(expected_profit(dec.scored.score, dec.probabilities).sum())
        truth = true_profit_matrix(inputs, persons.reindex(groups).to_numpy(), dec)
        true += sign * float(np.nansum(dec.probabilities[:, 1:] * truth))
    return MergeValue(
        method,
        int(parts[CUSTOMER_ID].nunique()),
        int(parts["grp"].nunique()),
        expected * per_year,
        "true profit: the truth's, of the same decisions; a lower bound (each fragment's "
        "contact to one person counted in full)",
        true * per_year,
    )


def true_profit_matrix(inputs: MaturityInputs, persons: np.ndarray, dec: Decisions) -> np.ndarray:
    """persons x the decisions' actions: margin x true uplift x true order value - cost at the
    end of the history, from the synthetic world's truth/customer_actions (NaN if unknown)."""
    root = inputs.data_dir.truth / "customer_actions"
    table = inputs.con.sql(
        f"SELECT person_id, action_id, incremental * expected_value AS gain "
        f"FROM read_parquet('{root}/*.parquet')"
    ).df()
    wide = table.pivot(index="person_id", columns="action_id", values="gain")
    gain = wide.reindex(index=persons, columns=dec.scored.action_ids).to_numpy(dtype=float)
    return dec.scored.margin * gain - dec.scored.cost


def attribute_merge(inputs: MaturityInputs) -> MergeValue:
    """Customers whose customers-table attributes (`maturity.match_columns`, all present) are
    equal merged into one."""
    cols = inputs.con.sql("SELECT * FROM customers LIMIT 0").columns
    wanted = inputs.cfg.match_columns
    if wanted is None:
        wanted = [c for c in cols if c not in (CUSTOMER_ID, CUSTOMER_KEY)]
    missing = [c for c in wanted if c not in cols]
    if missing:
        raise UserError(f"maturity.match_columns: {missing} not in the customers table {cols}")
    method = "estimate: merged by equal customer attributes"
    if not wanted:
        return MergeValue(method, 0, 0, 0.0, "no customers table attributes to match on")
    key = " || '\x1f' || ".join(f"coalesce(CAST(\"{c}\" AS VARCHAR), '')" for c in wanted)
    present = " AND ".join(f'"{c}" IS NOT NULL' for c in wanted)
    con = inputs.con
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE _nba_keys AS
            SELECT {CUSTOMER_ID}, {key} AS k, count(*) OVER (PARTITION BY {key}) AS same
            FROM customers WHERE {present}"""
    )
    rows, shared = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE same > 1) FROM _nba_keys"
    ).fetchall()[0]
    note = f"matched on {', '.join(wanted)}"
    share = shared / rows if rows else 0.0
    if share > inputs.cfg.match_max_shared_share:
        return MergeValue(
            method,
            0,
            0,
            0.0,
            f"{note}: no merge, the attributes do not identify people ({share:.1%} of the "
            f"customers table's rows share their values with another; "
            f"maturity.match_max_shared_share is {inputs.cfg.match_max_shared_share:g})",
        )
    parts = con.sql(
        f"""SELECT i.identifier, i.{CUSTOMER_ID}, 'a_' || md5(k.k) AS grp
            FROM _nba_keys k JOIN identity i USING ({CUSTOMER_ID}) WHERE k.same > 1"""
    ).df()
    precision = _same_person_share(inputs, parts)
    if precision is not None:
        note += f"; {precision:.0%} of the merged groups are one true person"
    return merge_value(inputs, parts, method, note)


def _same_person_share(inputs: MaturityInputs, parts: pd.DataFrame) -> float | None:
    """On a synthetic world: the share of merged groups whose identifiers are all one true
    person (None without truth or without a merge)."""
    root = inputs.data_dir.truth / "identity"
    if not root.exists() or parts.empty:
        return None
    inputs.con.register("_nba_parts", parts)
    try:
        return inputs.con.execute(
            f"""SELECT avg(CASE WHEN n = 1 THEN 1.0 ELSE 0.0 END) FROM (
                  SELECT p.grp, count(DISTINCT t.person_id) AS n
                  FROM _nba_parts p JOIN read_parquet('{root}/*.parquet') t USING (identifier)
                  GROUP BY 1)"""
        ).fetchall()[0][0]
    finally:
        inputs.con.unregister("_nba_parts")


def split_estimate(inputs: MaturityInputs) -> tuple[MergeValue, pd.DataFrame]:
    """For fragments of one identifier without customers-table attributes: linked customers
    holding an identifier of that type are split into the type's part and the rest, and the
    mean value of putting them back together, per type, is counted once per such fragment."""
    con, cfg = inputs.con, inputs.cfg
    _sizes(con)
    frags = con.sql(
        f"""SELECT i.identifier_type, count(*) AS fragments
            FROM identity i JOIN _nba_sizes s USING ({CUSTOMER_ID})
            WHERE s.n = 1 AND {CUSTOMER_ID} NOT IN (SELECT {CUSTOMER_ID} FROM customers)
            GROUP BY 1 ORDER BY 1"""
    ).df()
    rows, total, merged = [], 0.0, 0
    for kind, count in zip(frags["identifier_type"], frags["fragments"], strict=True):
        linked = con.sql(
            f"""SELECT {CUSTOMER_ID} FROM identity GROUP BY 1
                HAVING count(*) FILTER (WHERE identifier_type = '{kind}') > 0
                   AND count(*) FILTER (WHERE identifier_type <> '{kind}') > 0
                ORDER BY 1"""
        ).df()[CUSTOMER_ID]
        if linked.empty:
            rows.append(
                {
                    "identifier_type": kind,
                    "fragments": int(count),
                    "sampled": 0,
                    "value_each": np.nan,
                    "value_total": 0.0,
                }
            )
            continue
        take = np.sort(inputs.rng().permutation(len(linked))[: cfg.recognition_sample])
        chosen = pd.DataFrame({CUSTOMER_ID: linked.to_numpy()[take]})
        con.register("_nba_chosen", chosen)
        try:
            ids = con.sql(
                f"""SELECT identifier, identifier_type, {CUSTOMER_ID}
                    FROM identity JOIN _nba_chosen USING ({CUSTOMER_ID})"""
            ).df()
        finally:
            con.unregister("_nba_chosen")
        apart = ids.assign(
            grp=np.where(
                ids["identifier_type"] == kind, ids[CUSTOMER_ID] + "|" + kind, ids[CUSTOMER_ID]
            )
        )
        v_apart = group_values(inputs, apart[["identifier", "grp"]])
        v_whole = group_values(inputs, ids.assign(grp=ids[CUSTOMER_ID])[["identifier", "grp"]])
        each = float(v_whole.sum() - v_apart.sum()) / len(chosen) * cfg.decisions_per_year
        rows.append(
            {
                "identifier_type": kind,
                "fragments": int(count),
                "sampled": len(chosen),
                "value_each": each,
                "value_total": each * int(count),
            }
        )
        total += each * int(count)
        merged += int(count)
    table = pd.DataFrame(
        rows, columns=["identifier_type", "fragments", "sampled", "value_each", "value_total"]
    )
    truth = [_true_fragment_value(inputs, kind) for kind in table["identifier_type"]]
    if any(v is not None for v in truth):
        table["true_value_each"] = [np.nan if v is None else v for v in truth]
    return (
        MergeValue(
            "estimate: linked customers split apart, per fragment type",
            merged,
            0,
            total,
            "each fragment of one identifier without attributes valued as the mean gain of "
            "rejoining that type's part to linked customers",
        ),
        table,
    )


def _true_fragment_value(inputs: MaturityInputs, kind: str) -> float | None:
    """On a synthetic world, the split estimate's figure from the truth: each unlinked
    fragment of type `kind` without attributes joined to its person's largest customer, the
    mean gain a year (None without truth or such fragments)."""
    root = inputs.data_dir.truth / "identity"
    if not root.exists():
        return None
    parts = inputs.con.sql(
        f"""WITH p AS (
              SELECT i.{CUSTOMER_ID}, mode(t.person_id) AS person, count(*) AS n
              FROM identity i JOIN read_parquet('{root}/*.parquet') t USING (identifier)
              WHERE t.person_id IS NOT NULL GROUP BY 1),
            frag AS (
              SELECT p.{CUSTOMER_ID}, p.person FROM p JOIN identity i USING ({CUSTOMER_ID})
              WHERE p.n = 1 AND i.identifier_type = '{kind}'
                AND p.{CUSTOMER_ID} NOT IN (SELECT {CUSTOMER_ID} FROM customers)),
            main AS (
              SELECT person, arg_max({CUSTOMER_ID}, n) AS main FROM p
              WHERE {CUSTOMER_ID} NOT IN (SELECT {CUSTOMER_ID} FROM frag) GROUP BY 1),
            joined AS (
              SELECT f.{CUSTOMER_ID}, m.main FROM frag f JOIN main m USING (person)
              UNION SELECT DISTINCT m.main, m.main FROM frag f JOIN main m USING (person))
            SELECT i.identifier, j.{CUSTOMER_ID}, j.main AS grp
            FROM joined j JOIN identity i USING ({CUSTOMER_ID})"""
    ).df()
    fragments = int((parts[CUSTOMER_ID] != parts["grp"]).groupby(parts[CUSTOMER_ID]).any().sum())
    if not fragments:
        return None
    return merge_value(inputs, parts, "truth").value_per_year / fragments


@dataclass
class RecognitionValue:
    attribute: MergeValue
    split: MergeValue
    split_table: pd.DataFrame
    truth: MergeValue | None

    @property
    def estimate(self) -> float:
        return self.attribute.value_per_year + self.split.value_per_year


def recognition_value(inputs: MaturityInputs) -> RecognitionValue:
    """The estimate (attributes where the customers table has them, splitting otherwise) and,
    on a synthetic world, the truth beside it."""
    split, table = split_estimate(inputs)
    return RecognitionValue(attribute_merge(inputs), split, table, truth_merge(inputs))


# --- 5. what data is used ---------------------------------------------------------------------


def last_run(data_dir: DataDir) -> Path | None:
    """The newest batch run's decision record, DIR/decisions/<run>.parquet (None if none)."""
    folder = data_dir.root / DECISIONS_DIR
    runs = (
        sorted(folder.glob("*.parquet"), key=lambda p: p.stat().st_mtime) if folder.is_dir() else []
    )
    return runs[-1] if runs else None


def _channel_of_feature(name: str, channels: list[str]) -> str | None:
    """The channel a feature's history comes from (`{channel}_...`), None for a
    customer-level one (all channels, the profile)."""
    for ch in sorted(channels, key=len, reverse=True):
        if name.startswith(ch + "_"):
            return ch
    return None


@dataclass
class DataUse:
    source: str  # the run's file, or what was decided instead
    decisions: pd.DataFrame  # per decision: history_channels, reason_channels, cross_channel...
    summary: pd.DataFrame  # per group: decisions, acted, expected profit (and true profit)


def data_use(
    inputs: MaturityInputs,
    features: pd.DataFrame,
    true_values: pd.DataFrame | None,
    now: Decisions | None = None,
) -> DataUse:
    """For each decision of the last logged run: the channels with history before it (what its
    features could draw on), the channels its reasons cite, and whether it used another
    channel's history than its own; expected (and, on a synthetic world, true) profit of the
    decisions that could use cross-channel history against those that could not. `now`: the
    policy's decision on `features` when already made (used when no run was logged)."""
    path = last_run(inputs.data_dir)
    if path is not None:
        table = pd.read_parquet(path)
        source = f"the last logged run, {path.name}"
    else:
        if now is None:
            now = _decide(inputs.policy, features, inputs.cfg.seed)
        table = now.table
        source = "no logged run in decisions/ (nba decide --log): a run decided now"
    table = table[[CUSTOMER_ID, AS_OF, "action_id", CHANNEL, "score"]].copy()
    table[AS_OF] = pd.to_datetime(table[AS_OF], utc=True)
    con = inputs.con
    con.register("_nba_q", table[[CUSTOMER_ID, AS_OF]].drop_duplicates())
    try:
        hist = con.sql(
            f"""SELECT q.{CUSTOMER_ID}, q.{AS_OF},
                       list(DISTINCT e.channel) FILTER (WHERE e.channel IS NOT NULL) AS seen
                FROM _nba_q q LEFT JOIN events e
                  ON e.{CUSTOMER_ID} = q.{CUSTOMER_ID} AND e.ts < q.{AS_OF}
                GROUP BY ALL"""
        ).df()
    finally:
        con.unregister("_nba_q")
    hist[AS_OF] = pd.to_datetime(hist[AS_OF], utc=True)
    table = table.merge(hist, on=[CUSTOMER_ID, AS_OF], how="left")
    # channels with events before the decision (none: no row, or an empty list)
    table["seen"] = [set(v) if isinstance(v, list | np.ndarray) else set() for v in table["seen"]]
    table["history_channels"] = table["seen"].map(len)
    ids = table["action_id"]  # a catalogue action (never NOTHING, which no action may be named)
    acted = np.flatnonzero((ids.isin(inputs.policy.catalogue.ids) & (ids != "")).to_numpy())
    reason_channels = np.zeros(len(table), dtype=np.int64)
    cross = np.zeros(len(table), dtype=bool)
    if len(acted):
        q = table.iloc[acted][[CUSTOMER_ID, AS_OF]].reset_index(drop=True)
        feats = pd.concat([q, inputs.engine.at(q)], axis=1)
        found, _ = inputs.policy.explain(
            feats, np.arange(len(feats)), table["action_id"].to_numpy()[acted]
        )
        names = inputs.data.channel_names
        seen = table["seen"].to_numpy()
        for r, reasons, own in zip(acted, found, table[CHANNEL].to_numpy()[acted], strict=True):
            chans = {c for x in reasons if (c := _channel_of_feature(x.feature, names))}
            reason_channels[r] = len(chans)
            # another channel's history used: a cited channel the customer has events on (a
            # reason citing a channel without any, e.g. "never opened a push", uses none)
            cross[r] = bool((chans - {own}) & seen[r])
    table = table.drop(columns="seen")
    table["reason_channels"] = reason_channels
    table["cross_channel_reason"] = cross
    table["could_use_cross_channel"] = table["history_channels"] >= 2
    true_profit = np.full(len(table), np.nan)
    if true_values is not None:
        t = table[[CUSTOMER_ID, "action_id"]].merge(
            true_values, on=[CUSTOMER_ID, "action_id"], how="left"
        )
        true_profit = np.where(table["action_id"] == NOTHING, 0.0, t["true_profit"].to_numpy())
    table["true_profit"] = true_profit
    groups = {
        "history on 2+ channels (could use cross-channel)": table["could_use_cross_channel"],
        "history on 0-1 channel (could not)": ~table["could_use_cross_channel"],
        "reasons cite another channel (used it)": table["cross_channel_reason"],
    }
    rows = []
    for name, mask in groups.items():
        sub = table[mask.to_numpy()]
        act = sub["action_id"] != NOTHING
        rows.append(
            {
                "decisions": name,
                "count": len(sub),
                "acted": int(act.sum()),
                "expected_profit_mean": float(sub["score"].mean()) if len(sub) else np.nan,
                "true_profit_mean": float(sub["true_profit"].mean()) if len(sub) else np.nan,
            }
        )
    return DataUse(source, table, pd.DataFrame(rows))


def true_action_values(inputs: MaturityInputs) -> pd.DataFrame | None:
    """customer_id, action_id, true_profit (margin x true uplift x true order value - cost, at
    the end of the history) on a synthetic world; None elsewhere."""
    root = inputs.data_dir.truth
    if not (root / "customer_actions").exists() or not (root / "identity").exists():
        return None
    acts = inputs.policy.catalogue.actions
    cat = pd.DataFrame(
        {
            "action_id": [a.id for a in acts],
            "margin": [a.margin for a in acts],
            "cost": [a.cost for a in acts],
        }
    )
    inputs.con.register("_nba_cat", cat)
    try:
        return inputs.con.sql(
            f"""WITH p AS (
                  SELECT i.{CUSTOMER_ID}, mode(t.person_id) AS person_id
                  FROM identity i JOIN read_parquet('{root / "identity"}/*.parquet') t
                    USING (identifier) GROUP BY 1)
                SELECT p.{CUSTOMER_ID}, a.action_id,
                       c.margin * a.incremental * a.expected_value - c.cost AS true_profit
                FROM p JOIN read_parquet('{root / "customer_actions"}/*.parquet') a
                  USING (person_id) JOIN _nba_cat c USING (action_id)"""
        ).df()
    finally:
        inputs.con.unregister("_nba_cat")


# --- the whole report -------------------------------------------------------------------------


@dataclass
class NextStep:
    text: str
    value_per_year: float


@dataclass
class Maturity:
    as_of: pd.Timestamp
    model_version: str
    policy_version: str
    decisions_per_year: float
    customers_scored: int
    policy_value_per_year: float  # the policy's expected incremental profit, all customers
    recognition: Recognition
    coverage: pd.DataFrame
    consent: ConsentValues
    recognition_value: RecognitionValue
    data_use: DataUse
    steps: list[NextStep] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """The headline numbers, flat, for MLflow."""
        r = self.recognition
        m: dict[str, float] = {
            "policy_value_per_year": self.policy_value_per_year,
            "identifiers": r.identifiers,
            "customers": r.customers,
            "single_identifier_customers": r.single_customers,
            "single_share_events": r.shares["events"],
            "single_share_purchases": r.shares["purchases"],
            "single_share_revenue": r.shares["revenue"],
            "shared_identifiers_cut": float(r.shared["identifiers"].sum()) if len(r.shared) else 0,
        }
        for _, row in r.channels_seen.iterrows():
            m[f"share_seen_on_{row['channels'].replace('+', 'plus')}_channels"] = row["share"]
        if len(self.coverage):
            last = self.coverage.sort_values("month").groupby(CHANNEL).tail(1)
            for _, row in last.iterrows():
                m[f"consent_coverage.{row[CHANNEL]}"] = float(np.nan_to_num(row["coverage"]))
        for _, row in self.consent.table.iterrows():
            ch = row[CHANNEL]
            m[f"consent_value_mean.{ch}"] = row["value_mean"]
            m[f"consent_value_top_decile.{ch}"] = row["value_top_decile"]
            m[f"consent_value_total.{ch}"] = row["value_total"]
            m[f"consent_loss_mean.{ch}"] = row["loss_mean"]
        rv = self.recognition_value
        m["recognition_value_estimate"] = rv.estimate
        m["recognition_value_attributes"] = rv.attribute.value_per_year
        m["recognition_value_split"] = rv.split.value_per_year
        if rv.truth is not None:
            m["recognition_value_truth"] = rv.truth.value_per_year
            if rv.truth.true_value_per_year is not None:
                m["recognition_true_profit_truth"] = rv.truth.true_value_per_year
        for i, row in self.data_use.summary.iterrows():
            m[f"data_use.group{i}.expected_profit_mean"] = float(
                np.nan_to_num(row["expected_profit_mean"])
            )
        return m


def next_steps(
    consent: ConsentValues, coverage: pd.DataFrame, rv: RecognitionValue, as_of: pd.Timestamp
) -> list[NextStep]:
    """Candidate steps, each with the money a year it is worth, best first (the top three)."""
    steps = []
    for _, row in consent.table.iterrows():
        if row["without_consent"] and row["value_total"] > 0:
            steps.append(
                NextStep(
                    f"Ask the {row['without_consent']:,} customers without {row[CHANNEL]} "
                    f"consent for it: {row['value_mean']:,.2f} a year each on average, "
                    f"{row['value_top_decile']:,.2f} in the top decile",
                    float(row["value_total"]),
                )
            )
        year = coverage[
            (coverage[CHANNEL] == row[CHANNEL])
            & (
                pd.to_datetime(coverage["month"])
                >= (as_of.tz_convert(None) - pd.DateOffset(years=1))
            )
        ]
        revoked = int(year["revocations"].sum()) if len(year) else 0
        if revoked and row["loss_mean"] > 0:
            steps.append(
                NextStep(
                    f"Keep {row[CHANNEL]} consents: {revoked:,} revocations in the last year, "
                    f"each costing {row['loss_mean']:,.2f} a year (fewer, more relevant contacts)",
                    revoked * float(row["loss_mean"]),
                )
            )
    best = rv.truth.value_per_year if rv.truth is not None else rv.estimate
    if rv.split.fragments + rv.attribute.fragments and rv.estimate > 0:
        steps.append(
            NextStep(
                f"Recognise the {rv.split.fragments + rv.attribute.fragments:,} unlinked "
                "fragments (logins, loyalty cards at the till, e-receipts): "
                f"{rv.estimate:,.2f} a year estimated"
                + (f" ({best:,.2f} from the truth)" if rv.truth is not None else ""),
                rv.estimate,
            )
        )
    return sorted(steps, key=lambda s: -s.value_per_year)[:3]


def build(inputs: MaturityInputs) -> Maturity:
    """Every part of the report, from the store, the features now and the champion policy."""
    features = inputs.engine.snapshot(inputs.as_of)
    now = _decide(inputs.policy, features, inputs.cfg.seed)
    total = float(expected_profit(now.scored.score, now.probabilities).sum())
    rec = recognition(inputs.con, inputs.data)
    coverage = consent_coverage(inputs.con, inputs.data, inputs.features_cfg)
    consent = consent_values(inputs, features, now)
    rv = recognition_value(inputs)
    use = data_use(inputs, features, true_action_values(inputs), now)
    return Maturity(
        as_of=inputs.as_of,
        model_version=inputs.policy.model_version,
        policy_version=inputs.policy.version,
        decisions_per_year=inputs.cfg.decisions_per_year,
        customers_scored=len(features),
        policy_value_per_year=total * inputs.cfg.decisions_per_year,
        recognition=rec,
        coverage=coverage,
        consent=consent,
        recognition_value=rv,
        data_use=use,
        steps=next_steps(consent, coverage, rv, inputs.as_of),
    )
