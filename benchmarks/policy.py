"""Policy quality against the oracle, and decision throughput.

    python -m benchmarks.policy                         # a fresh 20k-customer world (nba synth's default)
    python -m benchmarks.policy --data DIR --throughput-customers 1000000
    python -m benchmarks.policy --worlds 3 --throughput-customers 0    # mean and range over seeds

Quality: at the end of the synthetic history, each person (the fragment of them identity
resolution knows best, i.e. with the most events) gets one decision from each policy, all under
the same hard rules (consent, caps, cool-down, eligibility), and the decision is valued with the
truth table: margin x (true P(buy | contacted) - true P(buy | not)) x true order value - cost.

  (a) oracle: the best action by true incremental profit, or nothing
  (a') the best any model could do: the oracle knowing every latent trait but not the random
       draw of the uplift type from them (persuadable, sleeping dog, ...), i.e. ranking by the
       true effect averaged over that draw
  (a'') the best a model of our features could do: LightGBM regressions of the true effect
       (given the latents) and the true order value on the decision-time features, cross-fitted
       over two halves of the persons, i.e. our features taught by labels without sampling noise
  (b) our uplift policy (champion bundle, scoring `uplift`)
  (c) our response-ranked policy (same bundle, scoring `response`)
  (d) the best single action for everyone allowed (chosen in hindsight by its true total profit)
  (e) random: a uniformly random allowed action for everyone
  (f) do nothing

Throughput: the vectorised policy (rules, scoring with every model, choice) on N customers drawn
from the world's feature table, without and with reasons. Latency: 200 of them decided one at a
time, as real-time requests, beside LightGBM's own prediction of the same candidates.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import stats

from benchmarks.peak_memory import PeakMemory
from benchmarks.world import prepared_world
from features.config import DataConfig
from features.ingest.contract import ACTION_ID, CHANNEL, CUSTOMER_ID, DataDir
from features.ingest.event_store import open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from serving.arbitration import ScoredActions
from serving.catalogue import NOTHING
from serving.config import PolicyConfig
from serving.policy import DecisionPolicy, load_policy
from training import registry
from training.config import TrainingConfig
from training.datasets import data_end
from training.encoding import FrameArrays, FrameEncoder
from training.oracle import persons_of_customers
from training.train import train

LATENCY_CUSTOMERS = 200


def primary_fragments(con, people: pd.DataFrame) -> pd.DataFrame:
    """customer_id -> person_id for each person's best-known fragment (most events), of the
    `people` map (`oracle.persons_of_customers`)."""
    events = con.sql(
        f"SELECT {CUSTOMER_ID}, count(*) AS events FROM events GROUP BY {CUSTOMER_ID}"
    ).df()
    fragments = people.merge(events, on=CUSTOMER_ID)
    fragments = fragments.sort_values(
        ["person_id", "events", CUSTOMER_ID], ascending=[True, False, True]
    ).drop_duplicates("person_id")
    return fragments[[CUSTOMER_ID, "person_id"]].reset_index(drop=True)


def true_matrices(
    truth_dir: Path, persons: np.ndarray, policy: DecisionPolicy, con
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """persons x actions: the true uplift, its mean over the uplift-type draw given every other
    latent (what latents can tell), and the true expected order value."""
    truth = con.sql(
        f"SELECT person_id, action_id, incremental, mean_incremental_given_latents, "
        f"expected_value FROM read_parquet('{truth_dir / 'customer_actions'}/*.parquet')"
    ).df()
    ids = policy.catalogue.ids

    def matrix(column: str) -> np.ndarray:
        wide = truth.pivot(index="person_id", columns="action_id", values=column)
        return wide.reindex(index=persons, columns=ids).to_numpy(dtype=float)

    return (
        matrix("incremental"),
        matrix("mean_incremental_given_latents"),
        matrix("expected_value"),
    )


def best_or_nothing(score: np.ndarray) -> np.ndarray:
    """Index of each row's best-scoring action, or -1 (do nothing) when none scores above 0."""
    best = np.argmax(score, axis=1)
    return np.where(score[np.arange(len(best)), best] > 0, best, -1)


def cross_fitted(features: pd.DataFrame, targets: np.ndarray, seed: int) -> np.ndarray:
    """Each column of `targets` regressed on the features, every row predicted by the model of
    the other half of the rows (NaN targets are left out of the fits)."""
    X = FrameEncoder().fit(features).transform(features)
    half = np.random.default_rng(seed).permutation(len(X)) % 2
    out = np.full(targets.shape, np.nan)
    for j in range(targets.shape[1]):
        for h in (0, 1):
            fit_rows = (half != h) & np.isfinite(targets[:, j])
            if not fit_rows.any():
                continue
            model = lgb.LGBMRegressor(
                n_estimators=300,
                learning_rate=0.05,
                num_leaves=15,
                min_child_samples=50,
                n_jobs=2,
                random_state=seed,
                verbose=-1,
            )
            model.fit(X[fit_rows], targets[fit_rows, j])
            out[half == h, j] = model.predict(X[half == h])
    return out


def value_of(choice: np.ndarray, profit: np.ndarray) -> float:
    """Mean true incremental profit per person of a choice (-1: do nothing)."""
    rows = np.arange(len(choice))
    gained = np.where(choice >= 0, profit[rows, np.maximum(choice, 0)], 0.0)
    return float(np.nanmean(gained))


def margins_and_costs(policy: DecisionPolicy) -> tuple[np.ndarray, np.ndarray]:
    """Each catalogue action's margin and cost, in catalogue order."""
    actions = policy.catalogue.actions
    return np.array([a.margin for a in actions]), np.array([a.cost for a in actions])


def chosen_actions(table: pd.DataFrame, policy: DecisionPolicy) -> np.ndarray:
    """Each decision's action as its catalogue index, -1 for do nothing."""
    index = {a: j for j, a in enumerate(policy.catalogue.ids)}
    return table["action_id"].map(index).fillna(-1).astype(int).to_numpy()


def share_table(
    rows: list[tuple[str, np.ndarray]], profit: np.ndarray, a_value: float, unit: str
) -> dict[str, float]:
    """Prints each policy's true profit, share of the oracle's and share contacted; returns the
    shares by label (up to a colon: (d)'s label names its action, which varies)."""
    print(f"  {'policy':44s} {unit:>14s} {'of oracle':>10s} {'contacted':>10s}")
    shares = {}
    for name, choice in rows:
        v = value_of(choice, profit)
        share = v / a_value if a_value else float("nan")
        print(f"  {name:44s} {v:14.5f} {share:10.1%} {np.mean(choice >= 0):10.1%}")
        shares[name.split(":")[0]] = share
    return shares


def quality(data_dir: DataDir, con, engine: BatchEngine, seed: int) -> dict[str, float]:
    """Prints the policy table of one world; returns each policy's share of the oracle."""
    truth_dir = data_dir.truth
    people = persons_of_customers(con, data_dir)
    end = data_end(con)
    snapshot = engine.snapshot(end)
    feats = snapshot.merge(primary_fragments(con, people), on=CUSTOMER_ID).reset_index(drop=True)
    uplift_policy = load_policy(data_dir.root, PolicyConfig(), DataConfig())
    response_policy = load_policy(data_dir.root, PolicyConfig(scoring="response"), DataConfig())
    persons = feats["person_id"].to_numpy()
    true_uplift, latent_uplift, true_value = true_matrices(truth_dir, persons, uplift_policy, con)
    margin, cost = margins_and_costs(uplift_policy)
    # margin x uplift x true order value - cost, with the true uplift and with its latent mean
    profit = margin * true_uplift * true_value - cost
    latent_profit = margin * latent_uplift * true_value - cost

    t0 = time.perf_counter()
    ours = uplift_policy.decide(feats, reasons=False)
    t_decide = time.perf_counter() - t0
    resp = response_policy.decide(feats, reasons=False)
    allowed = ours.eligibility.allowed

    def chosen(table: pd.DataFrame) -> np.ndarray:
        return chosen_actions(table, uplift_policy)

    oracle = best_or_nothing(np.where(allowed, profit, -np.inf))
    latent_oracle = best_or_nothing(np.where(allowed, latent_profit, -np.inf))
    columns = uplift_policy.bundle.customer_features
    taught_uplift, taught_value = np.split(
        cross_fitted(feats[columns], np.hstack([latent_uplift, true_value]), seed), 2, axis=1
    )
    taught = np.where(allowed, margin * taught_uplift * taught_value - cost, -np.inf)
    feature_oracle = best_or_nothing(np.nan_to_num(taught, nan=-np.inf))
    blanket = [np.where(allowed[:, j], j, -1) for j in range(allowed.shape[1])]
    blanket_values = [value_of(c, profit) for c in blanket]
    best_single = int(np.argmax(blanket_values))
    rng = np.random.default_rng(seed)
    noise = np.where(allowed, rng.random(allowed.shape), -1.0)
    random_pick = np.where(allowed.any(axis=1), np.argmax(noise, axis=1), -1)

    rows = [
        ("(a) oracle (true probabilities)", oracle),
        ("(a') latents but not the uplift-type draw", latent_oracle),
        ("(a'') our features taught by the true effect", feature_oracle),
        ("(b) uplift policy (ours)", chosen(ours.table)),
        ("(c) response-ranked policy", chosen(resp.table)),
        (
            f"(d) best single action: {uplift_policy.catalogue.ids[best_single]}",
            blanket[best_single],
        ),
        ("(e) random allowed action", random_pick),
        ("(f) do nothing", np.full(len(feats), -1)),
    ]
    a_value = value_of(oracle, profit)
    print(
        f"\npolicy quality: {len(feats):,} persons (best-known fragment), decisions at {end}, "
        f"true incremental profit per person"
    )
    shares = share_table(rows, profit, a_value, "profit/person")
    print(
        f"  decided {len(feats):,} persons in {t_decide:.2f} s "
        f"({len(feats) / t_decide:,.0f} decisions/s, features excluded)"
    )
    print(f"  share of persons with an allowed action: {allowed.any(axis=1).mean():.1%}")
    print(f"  (NOTHING = {NOTHING}; every policy obeys the same rules)")
    where_uplift_loses(ours.scored, allowed, profit, true_uplift, true_value, a_value)
    everyone = snapshot.merge(people, on=CUSTOMER_ID).reset_index(drop=True)
    shares.update(every_customer_valuation(data_dir, con, everyone, uplift_policy, response_policy))
    return shares


def every_customer_valuation(
    data_dir: DataDir,
    con,
    feats: pd.DataFrame,
    uplift_policy: DecisionPolicy,
    response_policy: DecisionPolicy,
) -> dict[str, float]:
    """The decisions `nba decide` makes for every customer (every fragment, not one per person),
    each valued with its person's truth for the chosen action, margin x true incremental x true
    order value - cost, every contacted customer paying its cost; the oracle is each customer's
    best allowed action or nothing. Independent of (a)-(f): no choice of fragment per person.
    `feats`: the decision-time features of every customer with its `person_id`."""
    true_uplift, _, true_value = true_matrices(
        data_dir.truth, feats["person_id"].to_numpy(), uplift_policy, con
    )
    margin, cost = margins_and_costs(uplift_policy)
    profit = margin * true_uplift * true_value - cost
    ours = uplift_policy.decide(feats, reasons=False)
    resp = response_policy.decide(feats, reasons=False)
    allowed = ours.eligibility.allowed

    def chosen(table: pd.DataFrame) -> np.ndarray:
        return chosen_actions(table, uplift_policy)

    oracle = best_or_nothing(np.where(allowed, profit, -np.inf))
    blanket = [np.where(allowed[:, j], j, -1) for j in range(allowed.shape[1])]
    best_single = int(np.argmax([value_of(c, profit) for c in blanket]))
    rows = [
        ("[a] oracle", oracle),
        ("[b] uplift policy (ours)", chosen(ours.table)),
        ("[c] response-ranked policy", chosen(resp.table)),
        (
            f"[d] best single action: {uplift_policy.catalogue.ids[best_single]}",
            blanket[best_single],
        ),
        ("[f] do nothing", np.full(len(feats), -1)),
    ]
    print(
        f"\nevery customer valued by its person's truth: {len(feats):,} customers "
        f"({feats['person_id'].nunique():,} persons)"
    )
    return share_table(rows, profit, value_of(oracle, profit), "profit/cust.")


def where_uplift_loses(
    scored: ScoredActions,
    allowed: np.ndarray,
    profit: np.ndarray,
    true_uplift: np.ndarray,
    true_value: np.ndarray,
    a_value: float,
) -> None:
    """(b) with one of its parts replaced by the truth: which part costs the profit."""
    ours_uplift, ours_value = scored.uplift, scored.value
    # each action's true effect averaged over the persons it is allowed for: a perfect
    # estimate of the per-action effect level, without any per-customer heterogeneity
    allowed_uplift = np.where(allowed, true_uplift, np.nan)
    level = np.broadcast_to(np.nanmean(allowed_uplift, axis=0), allowed.shape)
    our_level = np.broadcast_to(
        np.nanmean(np.where(allowed, ours_uplift, np.nan), axis=0), allowed.shape
    )
    lever_margin = scored.lever * scored.margin
    variants = [
        ("our uplift x true order value", ours_uplift, true_value),
        ("true uplift x our order value", true_uplift, ours_value),
        ("true per-action mean effect x our value", level, ours_value),
        ("our per-action mean effect x our value", our_level, ours_value),
    ]
    print("\n(b) with one part replaced by the truth (same rules, same persons):")
    for name, uplift, value in variants:
        score = np.where(allowed, lever_margin * uplift * value - scored.cost, -np.inf)
        choice = best_or_nothing(np.nan_to_num(score, nan=-np.inf))
        v = value_of(choice, profit)
        print(f"  {name:44s} {v:14.5f} {v / a_value:10.1%} {np.mean(choice >= 0):10.1%}")
    print("  mean effect on allowed pairs, ours vs true:")
    for j, action in enumerate(scored.action_ids):
        rows = allowed[:, j]
        if rows.any():
            print(
                f"    {action:18s} {np.nanmean(ours_uplift[rows, j]):9.5f} "
                f"{np.nanmean(true_uplift[rows, j]):9.5f}"
            )


def throughput(data_dir: DataDir, engine: BatchEngine, con, customers: int, seed: int) -> None:
    feats = engine.snapshot(data_end(con))
    big = feats.sample(customers, replace=True, random_state=seed).reset_index(drop=True)
    policy = load_policy(data_dir.root, PolicyConfig(), DataConfig())
    with PeakMemory() as mem:
        t0 = time.perf_counter()
        decisions = policy.decide(big, reasons=False)
        t1 = time.perf_counter()
    sample = big.iloc[: min(customers, 100_000)]
    t2 = time.perf_counter()
    policy.decide(sample, reasons=True)
    t3 = time.perf_counter()
    acted = (decisions.table["action_id"] != NOTHING).mean()
    print(f"\nthroughput on {customers:,} customers ({acted:.1%} get an action):")
    print(f"  without reasons: {t1 - t0:.1f} s, {customers / (t1 - t0):,.0f} decisions/s")
    print(
        f"  with reasons:    {t3 - t2:.1f} s for {len(sample):,}, "
        f"{len(sample) / (t3 - t2):,.0f} decisions/s"
    )
    print(f"  peak memory {mem.peak_gb:.2f} GB (features of {customers:,} customers included)")
    latency(policy, feats, LATENCY_CUSTOMERS, seed)


def latency(policy: DecisionPolicy, feats: pd.DataFrame, customers: int, seed: int) -> None:
    """One customer per call, as a real-time request (quiet hours apply): median and p95 of a
    decision, beside LightGBM's own predictions for the same customer's candidates (every model
    the decision calls, from matrices built beforehand): the floor for a decision in Python."""
    b = policy.bundle
    models = [getattr(b.uplift, "baseline_", None), b.uplift, b.value]
    # the models with one booster each (a per-channel response dict is left out)
    models = [m for m in (b.response, *models) if hasattr(m, "encoder_")]
    sample = feats.sample(customers, random_state=seed)
    times: dict[str, list[float]] = {"no reasons": [], "with reasons": [], "LightGBM alone": []}
    for i in range(len(sample)):
        row = sample.iloc[[i]]
        t0 = time.perf_counter()
        decided = policy.decide(row, immediate=True, reasons=False)
        t1 = time.perf_counter()
        policy.decide(row, immediate=True)
        t2 = time.perf_counter()
        allowed = np.flatnonzero(decided.eligibility.allowed[0])
        customer = FrameArrays.of(row, b.customer_features)
        pairs = customer.take(np.zeros(len(allowed), dtype=np.int64)).with_columns(
            {
                CHANNEL: np.array(decided.scored.channels, dtype=object)[allowed],
                ACTION_ID: np.array(decided.scored.action_ids, dtype=object)[allowed],
            }
        )
        inputs = [
            (m.model_.booster_, m.encoder_.matrix(customer if m is b.value else pairs))
            for m in (models if len(allowed) else [])  # nothing allowed: no model is called
        ]
        t3 = time.perf_counter()
        for booster, matrix in inputs:
            booster.predict(matrix)
        t4 = time.perf_counter()
        for name, seconds in zip(times, (t1 - t0, t2 - t1, t4 - t3), strict=True):
            times[name].append(1000 * seconds)
    print(f"\none customer per request ({customers} customers, each decided alone, real time):")
    for name, ms in times.items():
        print(f"  {name:16s} median {np.median(ms):7.2f} ms, p95 {np.percentile(ms, 95):7.2f} ms")
    ratio = np.median(times["no reasons"]) / np.median(times["LightGBM alone"])
    print(f"  a decision takes {ratio:.0f}x LightGBM's own prediction of its candidates (medians)")


def paired_differences(table: pd.DataFrame, ours: str, baselines: list[str]) -> None:
    """Prints ours minus each baseline, paired by world: the mean, its standard error and a 95%
    t-interval, so "beats clearly" is judged against the spread between worlds."""
    print(f"\n{ours} minus each baseline, paired by world (points of the oracle's profit):")
    print(f"  {'baseline':44s} {'mean':>8s} {'SE':>8s} {'95% interval':>18s} {'wins':>6s}")
    for name in baselines:
        diff = 100 * (table[ours] - table[name])
        se = diff.std(ddof=1) / np.sqrt(len(diff))
        half = stats.t.ppf(0.975, len(diff) - 1) * se
        interval = f"{diff.mean() - half:+.1f} to {diff.mean() + half:+.1f}"
        wins = f"{int((diff > 0).sum())}/{len(diff)}"
        print(f"  {name:44s} {diff.mean():+8.1f} {se:8.1f} {interval:>18s} {wins:>6s}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="data directory of a synthetic world")
    parser.add_argument("--customers", type=int, default=20_000, help="world size without --data")
    parser.add_argument("--throughput-customers", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--worlds",
        type=int,
        default=1,
        help="without --data: the quality table on this many fresh worlds (seeds seed, seed+1, "
        "...) and each row's mean and range; one world's (b) moves by a few points with the seed",
    )
    args = parser.parse_args()
    if args.data is not None and args.worlds > 1:
        parser.error("--worlds generates its worlds: leave out --data")

    per_world = []
    for seed in range(args.seed, args.seed + args.worlds):
        data_dir = prepared_world(args.data, args.customers, seed)
        con = open_store(data_dir)
        registry.configure_tracking(data_dir.root)
        if registry.alias_version(registry.CHAMPION) is None:
            print("no champion bundle yet: training one")
            train(data_dir, DataConfig(), FeatureConfig(), TrainingConfig(), con)
        engine = BatchEngine(FeatureSet(DataConfig(), FeatureConfig()), con, customers="customers")
        per_world.append(quality(data_dir, con, engine, seed))
    if args.worlds > 1:
        table = pd.DataFrame(per_world)
        print(f"\nshare of the oracle over {args.worlds} worlds (seeds {args.seed}..{seed}):")
        print(f"  {'policy':44s} {'mean':>8s} {'min':>8s} {'max':>8s}")
        for name in table.columns:
            col = table[name]
            print(f"  {name:44s} {col.mean():8.1%} {col.min():8.1%} {col.max():8.1%}")
        paired_differences(
            table,
            "(b) uplift policy (ours)",
            ["(c) response-ranked policy", "(d) best single action"],
        )
        paired_differences(
            table,
            "[b] uplift policy (ours)",
            ["[c] response-ranked policy", "[d] best single action"],
        )
    if args.throughput_customers:
        throughput(data_dir, engine, con, args.throughput_customers, args.seed)


if __name__ == "__main__":
    main()
