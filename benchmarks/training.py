"""Training speed: the full `nba train` run on about 1M contact rows, phase by phase.

    python -m benchmarks.training                       # generates a 30k-customer world
    python -m benchmarks.training --data DIR --rows 1000000

Prints the rows of each training set, the seconds of each phase (training sets, each model with
its calibration, evaluation, MLflow logging and registration) and the peak memory. Goal: the
model phases (fit, calibration, evaluation, MLflow) for 1M rows under 3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.peak_memory import PeakMemory
from benchmarks.world import prepared_world
from features.config import DataConfig
from features.ingest.event_store import open_store
from features.store.definitions import FeatureConfig
from training.config import TrainingConfig
from training.train import train


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="data directory of a world")
    parser.add_argument(
        "--customers", type=int, default=30_000, help="world size if --data is absent"
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="most recent contacts used")
    args = parser.parse_args()

    data_dir = prepared_world(args.data, args.customers, 0)
    con = open_store(data_dir)
    cfg = TrainingConfig.model_validate({"models": {"max_contact_rows": args.rows}})

    marks: list[tuple[str, float]] = []

    def say(message: str) -> None:
        marks.append((message, time.perf_counter()))
        print(f"  {message}", flush=True)

    with PeakMemory() as mem:
        start = time.perf_counter()
        result = train(data_dir, DataConfig(), FeatureConfig(), cfg, con, say=say)
        end = time.perf_counter()
    marks.append(("end", end))
    print("\nphase seconds:")
    for (name, t0), (_, t1) in zip(marks, marks[1:], strict=False):
        print(f"  {t1 - t0:8.1f}  {name}")
    td = result.data
    rows = {
        "contacts": sum(len(getattr(td.contacts, p)) for p in ("train", "calibration", "test")),
        "snapshots": sum(len(getattr(td.snapshots, p)) for p in ("train", "calibration", "test")),
    }
    model_start = next(
        t for name, t in marks if name.startswith("response") or name.startswith("uplift")
    )
    print(f"training rows: {rows}")
    print(
        f"total {end - start:.1f} s; models + calibration + evaluation + MLflow: {end - model_start:.1f} s"
    )
    print(f"peak memory {mem.peak_gb:.2f} GB")


if __name__ == "__main__":
    main()
