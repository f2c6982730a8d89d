"""A campaign over a million customers x every action of the default catalogue, on this machine.

    python -m benchmarks.campaign --data DIR                      # a world with a champion
    python -m benchmarks.campaign --customers 1000000 --world-customers 20000

End to end from the feature table to the written assignments: the stage-4 scoring of every
eligible pair, the Lagrangian assignment under channel capacities, an action cap and a budget
(at half of what the unconstrained plan would use, so that they bind), the holdouts, and assignments.parquet and
campaign.json written and renamed. Reports time and peak memory (process RSS, sampled), and,
timed in the same run on the same eligible pairs, LightGBM's own prediction with every model the
scoring calls (booster.predict on matrices built beforehand, chunk by chunk): the floor for
scoring in Python. The customers are the world's feature rows drawn with replacement, each
under a new id.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.peak_memory import PeakMemory
from benchmarks.world import prepared_world
from features.config import DataConfig
from features.ingest.contract import ACTION_ID, CHANNEL, CUSTOMER_ID
from features.ingest.event_store import open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from serving.arbitration import CUSTOMERS_PER_CHUNK, customer_arrays
from serving.campaign import parse_campaign
from serving.campaign_job import run_campaign, write_run
from serving.catalogue import NOTHING
from serving.config import PolicyConfig
from serving.policy import DecisionPolicy, load_policy
from training import registry
from training.config import TrainingConfig
from training.datasets import data_end
from training.train import train


def campaign_for(policy: DecisionPolicy, n: int, base: pd.DataFrame, at: pd.Timestamp):
    """Every catalogue action on offer, under limits that bind: each channel's capacity and the
    budget at half of what the unconstrained plan of the base would use (scaled to n), and the
    most used action capped at a third of its use."""
    free = parse_campaign(
        {"name": "unconstrained", "actions": policy.catalogue.ids}, policy.catalogue, policy.data
    )
    plan = run_campaign(policy, free, base, at).table
    acted = plan[plan["action_id"] != NOTHING]
    scale = n / len(base)
    per_channel = acted["channel"].value_counts()
    top = acted["action_id"].value_counts()
    raw = {
        "name": "benchmark",
        "actions": policy.catalogue.ids,
        "capacities": {c: int(0.5 * k * scale) for c, k in per_channel.items()},
        "caps": {top.index[0]: int(top.iloc[0] * scale / 3)} if len(top) else {},
        "budget": round(0.5 * float(acted["cost"].sum()) * scale, 2),
        "holdout": {"fraction": 0.1, "seed": 1},
    }
    return parse_campaign(raw, policy.catalogue, policy.data, source="benchmark")


def bare_prediction(policy: DecisionPolicy, feats: pd.DataFrame, allowed: np.ndarray) -> float:
    """Seconds LightGBM takes to predict the eligible pairs with every model the scoring calls
    (matrices built outside the timing)."""
    b = policy.bundle
    uplift_base = getattr(b.uplift, "baseline_", None)
    models = [m for m in (b.response, uplift_base, b.uplift) if hasattr(m, "encoder_")]
    value = b.value if hasattr(b.value, "encoder_") else None
    ids = np.array(policy.catalogue.ids, dtype=object)
    channels = np.array([a.channel for a in policy.catalogue.actions], dtype=object)
    seconds = 0.0
    for start in range(0, len(feats), CUSTOMERS_PER_CHUNK):
        chunk = slice(start, start + CUSTOMERS_PER_CHUNK)
        rows, cols = np.nonzero(allowed[chunk])
        customers = customer_arrays(feats, chunk, b.customer_features)
        pairs = customers.take(rows).with_columns({CHANNEL: channels[cols], ACTION_ID: ids[cols]})
        inputs = [(m.model_.booster_, m.encoder_.matrix(pairs)) for m in models]
        if value is not None:
            inputs.append((value.model_.booster_, value.encoder_.matrix(customers)))
        t0 = time.perf_counter()
        for booster, matrix in inputs:
            booster.predict(matrix)
        seconds += time.perf_counter() - t0
        del inputs
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="data directory of a synthetic world")
    parser.add_argument("--world-customers", type=int, default=20_000)
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    data_dir = prepared_world(args.data, args.world_customers, args.seed)
    con = open_store(data_dir)
    registry.configure_tracking(data_dir.root)
    if registry.alias_version(registry.CHAMPION) is None:
        print("no champion bundle yet: training one")
        train(data_dir, DataConfig(), FeatureConfig(), TrainingConfig(), con)
    engine = BatchEngine(FeatureSet(DataConfig(), FeatureConfig()), con, customers="customers")
    end = data_end(con)
    base = engine.snapshot(end)
    big = base.sample(args.customers, replace=True, random_state=args.seed).reset_index(drop=True)
    big[CUSTOMER_ID] = big[CUSTOMER_ID].astype(str) + "_r" + pd.RangeIndex(len(big)).astype(str)
    policy = load_policy(data_dir.root, PolicyConfig(), DataConfig())
    campaign = campaign_for(policy, len(big), base, end)
    out = args.out or Path(tempfile.mkdtemp(prefix="nba-campaign-bench-"))
    print(
        f"{len(big):,} customers (drawn from {len(base):,}) x {len(policy.catalogue.ids)} "
        f"actions; limits {campaign.capacities}, caps {campaign.caps}, budget {campaign.budget:,.0f}"
    )

    with PeakMemory() as mem:
        t0 = time.perf_counter()
        run = run_campaign(policy, campaign, big, end)
        t1 = time.perf_counter()
        write_run(run, out)
        t2 = time.perf_counter()
    allowed = np.isfinite(run.scores.scored.score)
    pairs = int(allowed.sum())
    sol = run.solution
    del run
    bare = bare_prediction(policy, big, allowed)
    total = t2 - t0
    print(f"\ncampaign end to end (feature table -> written assignments): {total:.1f} s")
    print(f"  scoring, assignment and holdouts {t1 - t0:.1f} s; writing {t2 - t1:.1f} s")
    print(f"  peak memory {mem.peak_gb:.2f} GB (the feature table of {len(big):,} included)")
    print(
        f"  {pairs:,} eligible pairs; price rounds {sol.rounds}; shadow prices {np.round(sol.shadow_prices, 4)}"
    )
    print(f"  expected profit {sol.objective:,.2f}, at most {sol.gap_bound:.4%} below the optimum")
    print(f"LightGBM alone on the same pairs (every model the scoring calls): {bare:.1f} s")
    print(f"  the campaign takes {total / bare:.2f}x the bare prediction")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
