"""`nba train` killed with SIGKILL mid-run, and what must hold after: no alias points at a version
whose files are not whole and as registered, and a rerun registers the same models.

Shared by the default suite (tests/test_training/test_train_killed.py) and the repeated run
(benchmarks/kill_restart.py).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

NBA = str(Path(sys.executable).parent / "nba")
ROOT = Path(__file__).resolve().parents[2]


def embedded_env() -> dict[str, str]:
    """This environment without the MLflow URIs: mlflow.set_tracking_uri exports the last data
    directory's store as MLFLOW_TRACKING_URI, which a child `nba` would take for the user's
    server and register into instead of its own DATA/mlflow."""
    drop = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    return {k: v for k, v in os.environ.items() if k not in drop}


def start_train(data: Path, log: Path) -> subprocess.Popen:
    """`nba train --data DATA` (its own embedded MLflow store) in a session of its own, output
    to `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [NBA, "train", "--data", str(data)],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=embedded_env(),
            start_new_session=True,
        )


def _count(data: Path, sql: str) -> int:
    """One number from the embedded MLflow store, read-only (0 while it does not exist)."""
    db = Path(data) / "mlflow" / "mlflow.db"
    if not db.is_file():
        return 0
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            return int(con.execute(sql).fetchone()[0])
    except sqlite3.Error:
        return 0  # tables not created yet, or locked for a moment


def versions_registered(data: Path) -> int:
    return _count(data, "SELECT count(*) FROM model_versions")


def bundle_run_started(data: Path) -> int:
    """Runs of the nba-bundle experiment (its artifacts are logged while it runs)."""
    return _count(
        data,
        "SELECT count(*) FROM runs r JOIN experiments e ON r.experiment_id = e.experiment_id "
        "WHERE e.name = 'nba-bundle'",
    )


def kill_when(
    proc: subprocess.Popen, moment: Callable[[], bool], deadline_s: float, poll_s: float = 0.02
) -> bool:
    """SIGKILL `proc` as soon as `moment()` is true, or at the deadline; True if the moment came
    while it ran. A process that finished first is left as it is."""
    end = time.monotonic() + deadline_s
    came = False
    while time.monotonic() < end and proc.poll() is None:
        if moment():
            came = True
            break
        time.sleep(poll_s)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return came


def aliases(data: Path) -> dict[str, str]:
    """Each alias of the bundle model that is set, with its version."""
    from training import registry

    registry.configure_tracking(data)
    found = {a: registry.alias_version(a) for a in (registry.CHAMPION, registry.CHALLENGER)}
    return {a: v for a, v in found.items() if v is not None}


def check_aliases(data: Path) -> dict[str, str]:
    """Every alias points at a version whose files are whole and the ones registered (the check
    the service makes before serving it); returns the aliases."""
    from training.model_safety import load_verified

    found = aliases(data)
    for version in set(found.values()):
        load_verified(version)  # raises on missing files, a missing or different checksum
    return found


def predictions(data: Path, version: str) -> pd.DataFrame:
    """Version `version`'s predictions for every customer as of the end of the history, each
    with an e-mail discount (response, purchase, value and uplift models all called)."""
    from features.config import DataConfig
    from features.ingest.event_store import open_store
    from features.store.batch import BatchEngine
    from features.store.definitions import FeatureConfig, FeatureSet
    from training import registry
    from training.datasets import data_end
    from training.model_safety import load_verified

    registry.configure_tracking(data)
    bundle = load_verified(version)
    con = open_store(data)
    try:
        engine = BatchEngine(FeatureSet(DataConfig(), FeatureConfig()), con, customers="customers")
        feats = engine.snapshot(data_end(con))
    finally:
        con.close()
    frame = feats.reindex(columns=bundle.customer_features).assign(
        channel="email", action_id="email_discount"
    )
    return bundle.predict(frame).reset_index(drop=True)


def same_predictions(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Equal to float precision, NaN where the other is NaN."""
    return bool(
        np.allclose(a.to_numpy(float), b.to_numpy(float), rtol=1e-9, atol=1e-12, equal_nan=True)
    )
