"""The campaign as a Spark job, for customer bases that outgrow one machine.

The same three steps as `serving.campaign_job`, distributed:

1. scoring: `mapInPandas` over partitions of the feature table, the policy (bundle, catalogue,
   rules) broadcast once; each partition runs the stage-4 batch scoring (`score_campaign`) and
   keeps one row per customer with every offered action's objective and components (cached);
2. prices: `serving.assignment.solve` itself, asking a backend whose every answer is a small
   per-partition aggregate collected and combined on the driver (per-action counts at candidate
   prices, each partition's top thresholds, the few customers near a threshold or tied). The answers
   equal the in-memory backend's, so the prices, hence the assignments, are the one-machine ones;
3. assignment: each partition takes its customers' actions at the prices (and the fill's few
   moves, broadcast), draws the holdouts from (seed, customer) and writes its part.

    spark-submit --master yarn serving/spark_campaign.py --features hdfs:///nba/features.parquet \\
        --campaign campaign.yaml --model-dir /shared/bundle --out hdfs:///nba/campaigns/x

Locally, `python -m serving.spark_campaign --data DIR --campaign FILE --out DIR` runs it on
`local[2]` with the champion from DIR's MLflow registry and DIR/features.parquet.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.ingest.contract import CUSTOMER_ID
from features.store.batch import AS_OF
from serving.arbitration import ScoredActions
from serving.assignment import (
    Solution,
    build_limits,
    choose,
    kth_of,
    partition_ambiguous,
    partition_candidates,
    partition_counts,
    partition_marginal,
    partition_max_ratio,
    solve,
    top_thresholds,
)
from serving.campaign import Campaign
from serving.campaign_job import (
    CampaignScores,
    assignment_columns,
    campaign_version,
    score_campaign,
)
from serving.catalogue import Catalogue
from serving.policy import DecisionPolicy

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PARTS = ("obj", "score", "presp", "p1", "p0", "value", "hour")
GRID = 63  # candidate budget prices per Spark job (the answer does not depend on it)


def _col(part: str, j: int) -> str:
    return f"{part}__{j}"


def _scored_schema(n_actions: int):
    from pyspark.sql import types as T

    fields = [T.StructField(CUSTOMER_ID, T.StringType())]
    fields += [
        T.StructField(_col(p, j), T.LongType() if p == "hour" else T.DoubleType())
        for p in PARTS
        for j in range(n_actions)
    ]
    return T.StructType(fields)


def scores_to_frame(sc: CampaignScores) -> pd.DataFrame:
    """One row per customer: every offered action's objective, score, components, send hour."""
    s = sc.scored
    parts = {
        "obj": sc.objective,
        "score": s.score,
        "presp": s.p_response,
        "p1": s.p_treated,
        "p0": s.p_control,
        "value": s.value,
        "hour": sc.send_hour,
    }
    cols = {CUSTOMER_ID: sc.customer_id}
    for p in PARTS:
        for j in range(len(s.action_ids)):
            cols[_col(p, j)] = parts[p][:, j]
    return pd.DataFrame(cols)


def frame_to_scores(frame: pd.DataFrame, offered: Catalogue, as_of: pd.Timestamp) -> CampaignScores:
    """The inverse of `scores_to_frame`, for a partition's rows."""
    a = len(offered.actions)

    def m(p: str) -> np.ndarray:
        if not len(frame):
            return np.empty((0, a), dtype=np.int64 if p == "hour" else float)
        return np.column_stack([frame[_col(p, j)].to_numpy() for j in range(a)])

    scored = ScoredActions(
        action_ids=offered.ids,
        channels=[x.channel for x in offered.actions],
        p_response=m("presp"),
        p_treated=m("p1"),
        p_control=m("p0"),
        value=m("value"),
        margin=np.array([x.margin for x in offered.actions]),
        cost=np.array([x.cost for x in offered.actions]),
        lever=np.array([x.lever for x in offered.actions]),
        score=m("score"),
    )
    return CampaignScores(
        customer_id=frame[CUSTOMER_ID].to_numpy(dtype=object),
        as_of=as_of,
        scored=scored,
        objective=m("obj"),
        send_hour=m("hour"),
    )


def _objective(frame: pd.DataFrame, n_actions: int) -> tuple[np.ndarray, np.ndarray]:
    """A partition's keys and objective matrix, only customers with some positive score (as
    the in-memory backend keeps)."""
    s = np.column_stack([frame[_col("obj", j)].to_numpy(float) for j in range(n_actions)])
    keep = (s > 0).any(axis=1)
    return frame[CUSTOMER_ID].to_numpy(dtype=object)[keep], s[keep]


class SparkScores:
    """The price search's questions answered by per-partition aggregates (see ScoreBackend)."""

    def __init__(self, scored: DataFrame, n_actions: int) -> None:
        self.df = scored.select(CUSTOMER_ID, *[_col("obj", j) for j in range(n_actions)])
        self.a = n_actions
        self.jobs = 0

    def _collect(self, fn, schema: str) -> pd.DataFrame:
        a = self.a

        def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
            frames = list(batches)
            frame = pd.concat(frames, ignore_index=True) if frames else None
            if frame is None or frame.empty:
                return
            keys, s = _objective(frame, a)
            out = fn(keys, s)
            if out is not None and len(out):
                yield out

        self.jobs += 1
        return self.df.mapInPandas(run, schema).toPandas()

    def counts(self, penalties: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        penalties = np.atleast_2d(penalties)
        a = self.a

        def fn(keys, s):
            rows = []
            for p, pen in enumerate(penalties):
                c, d = partition_counts(s, pen)
                rows += [(p, j, float(c[j])) for j in range(a)] + [(p, -1, d)]
            return pd.DataFrame(rows, columns=["p", "j", "v"])

        got = self._collect(fn, "p long, j long, v double")
        counts = np.zeros((len(penalties), a), dtype=np.int64)
        dual = np.zeros(len(penalties))
        if len(got):
            c = got[got["j"] >= 0]
            np.add.at(counts, (c["p"].to_numpy(), c["j"].to_numpy()), c["v"].to_numpy(np.int64))
            d = got[got["j"] < 0]
            np.add.at(dual, d["p"].to_numpy(), d["v"].to_numpy())
        return counts, dual

    def kth_threshold(self, members: np.ndarray, penalty: np.ndarray, k: int) -> float:
        def fn(keys, s):
            return pd.DataFrame({"t": top_thresholds(s, members, penalty, k + 1)})

        got = self._collect(fn, "t double")
        return kth_of([got["t"].to_numpy()], k)

    def max_ratio(self, cost: np.ndarray) -> float:
        def fn(keys, s):
            return pd.DataFrame({"r": [partition_max_ratio(s, cost)]})

        got = self._collect(fn, "r double")
        return float(got["r"].max()) if len(got) else 0.0

    def _rows(self, got: pd.DataFrame) -> np.ndarray:
        if not len(got):
            return np.empty((0, self.a))
        return np.column_stack([got[f"s{j}"].to_numpy(float) for j in range(self.a)])

    def _row_schema(self, extra: str) -> str:
        return f"key string, cur long, {extra}" + "".join(f", s{j} double" for j in range(self.a))

    def candidates(
        self, penalty: np.ndarray, open_actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def fn(keys, s):
            rows, cur, sc = partition_candidates(s, penalty, open_actions)
            out = pd.DataFrame({"key": keys[rows], "cur": cur, "m": 0.0})
            for j in range(s.shape[1]):
                out[f"s{j}"] = sc[:, j]
            return out

        got = self._collect(fn, self._row_schema("m double"))
        return (
            got["key"].to_numpy(dtype=object),
            got["cur"].to_numpy(np.int64),
            self._rows(got),
        )

    def ambiguous(
        self, penalty: np.ndarray, eps: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        def fn(keys, s):
            rows, cur = partition_ambiguous(s, penalty, eps)
            out = pd.DataFrame({"key": keys[rows], "cur": cur, "m": 0.0})
            for j in range(s.shape[1]):
                out[f"s{j}"] = s[rows, j]
            return out

        got = self._collect(fn, self._row_schema("m double"))
        return (
            got["key"].to_numpy(dtype=object),
            got["cur"].to_numpy(np.int64),
            self._rows(got),
        )

    def marginal(
        self, penalty: np.ndarray, actions: np.ndarray, m: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        def fn(keys, s):
            rows, cur, margin = partition_marginal(s, penalty, actions, m)
            out = pd.DataFrame({"key": keys[rows], "cur": cur, "m": margin})
            for j in range(s.shape[1]):
                out[f"s{j}"] = s[rows, j]
            return out

        got = self._collect(fn, self._row_schema("m double"))
        keys = got["key"].to_numpy(dtype=object)
        margin = got["m"].to_numpy(float)
        keep = np.lexsort((keys, margin))[:m]
        return keys[keep], got["cur"].to_numpy(np.int64)[keep], margin[keep], self._rows(got)[keep]


def assignment_schema():
    from pyspark.sql import types as T

    s, d, lg, b = T.StringType(), T.DoubleType(), T.LongType(), T.BooleanType()
    names = [
        ("decision_id", s), (CUSTOMER_ID, s), (AS_OF, T.TimestampType()), ("campaign", s),
        ("action_id", s), ("channel", s), ("score", d), ("objective_score", d),
        ("p_response", d), ("p_purchase_treated", d), ("p_purchase_control", d), ("uplift", d),
        ("value", d), ("margin", d), ("cost", d), ("lever", d), ("send_hour", lg),
        ("holdout", b), ("propensity", d), ("logged_as", s), ("logged_propensity", d),
        ("eligible_actions", lg), ("model_version", s), ("policy_version", s),
        ("campaign_version", s),
    ]  # fmt: skip
    return T.StructType([T.StructField(n, t) for n, t in names])


def run_campaign_spark(
    spark: SparkSession,
    policy: DecisionPolicy,
    campaign: Campaign,
    features: DataFrame,
    as_of: pd.Timestamp,
    text: str = "",
    run: str = "spark",
    say=None,
) -> tuple[DataFrame, Solution, dict[str, int]]:
    """The campaign on Spark: the assignments as a (lazy) DataFrame, the solution (prices,
    bound) and how many Spark jobs the price search took."""
    offered = campaign.offered(policy.catalogue)
    limits = build_limits(campaign, offered)
    a = len(offered.actions)
    sc = spark.sparkContext
    shared = sc.broadcast((policy, offered, campaign.objective))
    as_of = pd.Timestamp(as_of)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        pol, off, objective = shared.value
        for batch in batches:
            if len(batch):
                yield scores_to_frame(score_campaign(pol, off, batch, as_of, objective))

    scored = features.mapInPandas(score, _scored_schema(a)).persist()
    backend = SparkScores(scored, a)
    solution = solve(backend, limits, a, grid=GRID, say=say)
    version = campaign_version(campaign, text)
    versions = {
        "model_version": policy.model_version,
        "policy_version": policy.version,
        "campaign_version": version,
    }
    final = sc.broadcast((offered, campaign, solution.penalty, solution.moves, versions))
    schema = assignment_schema()

    def assign(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        off, camp, penalty, moves, vers = final.value
        for batch in batches:
            if not len(batch):
                continue
            cs = frame_to_scores(batch, off, as_of)
            choice = choose(cs.objective, penalty)
            if moves:  # the fill's few moves
                where = pd.Index(cs.customer_id).get_indexer(list(moves))
                found = where >= 0
                choice[where[found]] = np.array(list(moves.values()))[found]
            cols = assignment_columns(cs, choice, camp, off, vers, run)
            frame = pd.DataFrame(cols)
            frame[AS_OF] = pd.to_datetime(frame[AS_OF])
            frame["send_hour"] = frame["send_hour"].astype(np.int64)
            frame["eligible_actions"] = frame["eligible_actions"].astype(np.int64)
            yield frame[[f.name for f in schema.fields]]

    table = scored.mapInPandas(assign, schema)
    solution.objective = float(table.agg({"objective_score": "sum"}).collect()[0][0] or 0.0)
    return table, solution, {"price_search_jobs": backend.jobs}


def write_spark(table: DataFrame, out: Path) -> Path:
    """Parquet parts under out/assignments.parquet, written to a temporary folder and renamed
    when complete (Spark's _SUCCESS marker says the same on a cluster's object store)."""
    import os
    import shutil
    import uuid

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "assignments.parquet"
    tmp = out / f".assignments.{uuid.uuid4().hex[:6]}.tmp"
    table.write.mode("overwrite").parquet(str(tmp))
    if target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    os.replace(tmp, target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="data directory (registry, features.parquet)")
    parser.add_argument("--features", help="feature table parquet; default DATA/features.parquet")
    parser.add_argument("--campaign", type=Path, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--alias", default="champion")
    parser.add_argument("--master", default=None, help="default local[2] (spark-submit's own)")
    parser.add_argument("--config", type=Path, default=None)
    args = parser.parse_args(argv)

    from features.config import load_data_config
    from features.store.spark_engine import local_spark
    from serving.campaign import load_campaign
    from serving.config import load_policy_config
    from serving.policy import load_policy

    if args.master:
        spark = local_spark("nba-campaign", master=args.master)
    else:
        from pyspark.sql import SparkSession

        active = SparkSession.getActiveSession()
        spark = active or local_spark("nba-campaign")
    data_cfg = load_data_config(args.config)
    policy = load_policy(args.data, load_policy_config(args.config), data_cfg, alias=args.alias)
    plan, text = load_campaign(args.campaign, policy.catalogue, data_cfg)
    path = args.features or str(Path(args.data) / "features.parquet")
    features = spark.read.parquet(path)
    as_of = plan.decision_time()
    if as_of is None:
        as_of = pd.Timestamp(features.agg({AS_OF: "max"}).collect()[0][0], tz="UTC")
    import uuid

    run = uuid.uuid4().hex[:12]
    table, sol, jobs = run_campaign_spark(
        spark, policy, plan, features, as_of, text, run=run, say=print
    )
    target = write_spark(table, Path(args.out))
    names = build_limits(plan, plan.offered(policy.catalogue)).names
    prices = ", ".join(f"{n} {p:.4f}" for n, p in zip(names, sol.prices, strict=True))
    print(f"wrote {target}; shadow prices: {prices}; {jobs}")


if __name__ == "__main__":
    main()
