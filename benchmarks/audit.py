"""Speed of the consent and contact-policy audit (`nba audit`), against baselines in the same run.

    python -m benchmarks.audit                      # a fresh 20k-customer world (nba synth's default)
    python -m benchmarks.audit --data DIR --repeat 3

The audit replays every `sent` event of the event store against consent, every cap, the
cool-down and quiet hours at its own time. Baselines, on the same store and machine: (a) one
DuckDB scan of the events grouped by type (the floor any pass over the store costs), and (b) the
batch feature snapshot of every customer at one moment (the features the policy decides on:
one point in time, where the audit needs every contact's own). Also printed: what the audit
finds in the synthetic world's history, whose simulated campaigns were not run by our policy.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.peak_memory import PeakMemory
from benchmarks.world import prepared_world
from features.config import DataConfig
from features.ingest.event_store import open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from serving.audit import AuditRules, logged_contacts, replay
from serving.config import PolicyConfig
from training.datasets import data_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="An existing data directory.")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=2, help="Runs of each; the best counts.")
    args = parser.parse_args()

    data_dir = prepared_world(args.data, args.customers)
    con = open_store(data_dir)
    events = con.execute("SELECT count(*) FROM events").fetchone()[0]
    rules = AuditRules.of(DataConfig(), FeatureConfig(), PolicyConfig())
    logged = logged_contacts(data_dir.root)

    scan, snap, audit = [], [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        con.execute("SELECT event_type, count(*) FROM events GROUP BY ALL").fetchall()
        scan.append(time.perf_counter() - t0)
    engine = BatchEngine(FeatureSet(DataConfig(), FeatureConfig()), con, customers="customers")
    end = data_end(con)
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        n_customers = len(engine.snapshot(end))
        snap.append(time.perf_counter() - t0)
    with PeakMemory() as peak:
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            report = replay(con, logged, rules)
            audit.append(time.perf_counter() - t0)

    a, s, f = min(audit), min(scan), min(snap)  # the best run of each counts
    contacts = report.contacts
    print(f"\nstore: {events:,} events, {n_customers:,} customers, {contacts:,} contacts audited")
    print(f"{'step':<44}{'seconds':>10}{'ratio':>10}")
    print(f"{'(a) DuckDB scan of the events by type':<44}{s:>10.2f}{s / s:>10.2f}")
    print(f"{'(b) feature snapshot of every customer':<44}{f:>10.2f}{f / s:>10.2f}")
    print(f"{'audit of every contact':<44}{a:>10.2f}{a / s:>10.2f}")
    print(
        f"audit: {contacts / a:,.0f} contacts/s, {a / f:.2f}x one feature snapshot; "
        f"peak memory {peak.peak_gb:.2f} GB (process RSS)"
    )
    v = report.violations
    print(
        f"the synthetic history: {report.violating_contacts:,} of {contacts:,} contacts break a rule"
    )
    for (rule, reason), n in v.groupby(["rule", "reason"]).size().items():
        print(f"  {rule:<16}{n:>10,}  {reason}")


if __name__ == "__main__":
    main()
