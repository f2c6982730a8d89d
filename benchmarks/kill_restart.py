"""Crash and restart: `nba serve`, `nba campaign` and `nba train` killed with SIGKILL at random
moments, again and again, and what must hold after each kill.

    python -m benchmarks.kill_restart                     # a fresh 1,000-customer world
    python -m benchmarks.kill_restart --data DIR --kills 10 --campaign-kills 4 --train-kills 3

1. The service (--kills, default 10): each round starts `nba serve` on a scratch copy of the
   world, resends the batches whose answer never came (a channel's retry: same event ids), has
   two clients post event batches and kills the service and its workers at a random moment
   (--min-seconds..--max-seconds after it is ready) while they are sending. After each kill:
   every acknowledged event exactly once in the online store's event log, each unanswered batch
   there whole or not at all; then `ingest`: every acknowledged event exactly once in the event
   store, and the online features of every customer touched equal the batch engine's as of the
   same moment. (tests/test_serving/kill_under_load.py, shared with the default suite.)
2. `nba campaign` (--campaign-kills): a complete run first (the reference, and its duration T),
   then runs killed at random moments in (0, T): the folder holds the whole assignments table
   or none, the summary (written last) only beside the whole table; a rerun into each folder
   gives the reference's table and summary, decision ids included.
3. `nba train` (--train-kills): a complete run on a copy with an empty MLflow store first (the
   reference, duration T), then runs on another copy killed at random moments in (0.2 T, 1.1 T):
   after each, every alias points at a version whose files verify against the checksum recorded
   at registration; last, a rerun finishes and its champion predicts what the reference's does.
   (tests/test_training/killed_train.py, shared with the default suite.)

Every process started is stopped at exit; the scratch copies are removed.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.serving import _terminate, nba_command, ready_world

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tests" / "test_serving"), str(ROOT / "tests" / "test_training")]

CAMPAIGN = """name: kill_restart
actions: [email_discount, email_newin, email_loyalty, sms_flash, push_newin, dm_catalog,
          dm_winback, call_winback]
capacities: {direct_mail: 150, sms: 60, email: 300, call_centre: 10}
caps: {dm_winback: 30}
budget: 150
holdout: {fraction: 0.3, seed: 3}
"""


@dataclass
class ServiceKill:
    kill: int
    seconds: float
    ready_s: float
    batches: int
    acknowledged: int
    unanswered: int
    applied_whole: int
    resent_duplicates: int
    customers_compared: int


def service_kills(source: Path, scratch: Path, args, rng) -> tuple[list[ServiceKill], object]:
    """--kills rounds of load and SIGKILL on a copy of the world; the checks after each."""
    from kill_under_load import (
        Ledger,
        check_round,
        check_stores,
        load_then_kill,
        loyalty_keys,
        resend_unanswered,
    )
    from service_process import start_service

    from features.ingest.contract import DataDir

    root = scratch / "serve"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns("service-*.log", "decisions"))
    data_dir = DataDir(root)
    keys = loyalty_keys(data_dir, args.keys)
    ledger = Ledger()
    rows = []
    final = None
    for kill in range(1, args.kills + 1):
        t0 = time.perf_counter()
        svc = start_service(root)
        ready = time.perf_counter() - t0
        try:
            duplicates = resend_unanswered(svc, ledger)
            seconds = float(rng.uniform(args.min_seconds, args.max_seconds))
            sent = load_then_kill(svc, keys, seconds, seed=1000 * kill)
        finally:
            svc.kill()
        found = check_round(data_dir, sent, ledger)
        final = check_stores(data_dir, ledger)
        rows.append(
            ServiceKill(
                kill,
                seconds,
                ready,
                found.batches,
                found.acknowledged_events,
                found.unanswered_batches,
                found.unanswered_applied,
                duplicates,
                final.customers_compared,
            )
        )
        r = rows[-1]
        print(
            f"  kill {kill}: ready {ready:.0f} s, killed after {seconds:.1f} s of load; "
            f"{r.batches} batches, {r.acknowledged} events acknowledged, {r.unanswered} "
            f"unanswered ({r.applied_whole} applied whole); {final.acknowledged:,} acknowledged "
            f"so far, all exactly once in log and event store; features equal for "
            f"{final.customers_compared} customers"
        )
    return rows, final


def _run(cmd: list[str], log: Path) -> subprocess.Popen:
    from killed_train import embedded_env

    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env=embedded_env(),
            start_new_session=True,
        )


def campaign_kills(source: Path, scratch: Path, args, rng) -> list[str]:
    """A reference campaign run, --campaign-kills killed ones, a rerun into each folder."""
    from killed_train import embedded_env, kill_when

    from serving.campaign_job import ASSIGNMENTS, SUMMARY

    file = scratch / "campaign.yaml"
    file.write_text(CAMPAIGN)
    log = scratch / "campaign.log"
    base = [*nba_command(), "campaign", "--data", str(source), "--campaign", str(file)]
    base.append("--no-report")
    t0 = time.perf_counter()
    ref_dir = scratch / "campaign-ref"
    subprocess.run(
        [*base, "--out", str(ref_dir)],
        check=True,
        capture_output=True,
        cwd=ROOT,
        env=embedded_env(),
    )
    took = time.perf_counter() - t0
    reference = pd.read_parquet(ref_dir / ASSIGNMENTS)
    ref_summary = (ref_dir / SUMMARY).read_text()
    lines = [f"reference run {took:.1f} s, {len(reference):,} customers"]
    for i in range(args.campaign_kills):
        out = scratch / f"campaign-{i}"
        at = float(rng.uniform(0.05, 1.0)) * took
        proc = _run([*base, "--out", str(out)], log)
        kill_when(proc, lambda: False, at)
        table = out / ASSIGNMENTS
        whole = table.exists() and pd.read_parquet(table).equals(reference)
        assert not table.exists() or whole, f"kill {i}: an assignments table that is not whole"
        assert not (out / SUMMARY).exists() or whole, f"kill {i}: a summary without its table"
        leftovers = [p.name for p in out.glob(".*.tmp")] if out.exists() else []
        state = "finished" if (out / SUMMARY).exists() else "table only" if whole else "nothing"
        subprocess.run(
            [*base, "--out", str(out)],
            check=True,
            capture_output=True,
            cwd=ROOT,
            env=embedded_env(),
        )
        pd.testing.assert_frame_equal(pd.read_parquet(table), reference)
        assert (out / SUMMARY).read_text() == ref_summary, f"kill {i}: the rerun's summary differs"
        lines.append(
            f"kill {i + 1} at {at:.1f} s: left {state}"
            + (f" and {len(leftovers)} temporary file(s) {leftovers}" if leftovers else "")
            + "; the rerun equals the reference (table with decision ids, summary)"
        )
    return lines


def train_kills(source: Path, scratch: Path, args, rng) -> list[str]:
    """A reference training run, --train-kills killed ones on another copy, a rerun."""
    from killed_train import (
        aliases,
        bundle_run_started,
        check_aliases,
        kill_when,
        predictions,
        same_predictions,
        start_train,
        versions_registered,
    )

    from training import registry

    copies = {}
    for name in ("ref", "killed"):
        copies[name] = scratch / f"train-{name}"
        shutil.copytree(source, copies[name], ignore=shutil.ignore_patterns("mlflow", "decisions"))
    log = scratch / "train.log"
    t0 = time.perf_counter()
    assert start_train(copies["ref"], log).wait() == 0, log.read_text()[-3000:]
    took = time.perf_counter() - t0
    ref = aliases(copies["ref"])[registry.CHALLENGER]  # set by every finished run
    lines = [f"reference run {took:.0f} s"]
    root = copies["killed"]
    for i in range(args.train_kills):
        at = float(rng.uniform(0.2, 1.1)) * took
        versions, runs = versions_registered(root), bundle_run_started(root)
        proc = start_train(root, log)
        kill_when(proc, lambda: False, at)
        phase = (
            "it had finished"
            if proc.returncode == 0
            else "after registering its version"
            if versions_registered(root) > versions
            else "while logging the bundle"
            if bundle_run_started(root) > runs
            else "before the bundle run"
        )
        found = check_aliases(root)
        lines.append(
            f"kill {i + 1} at {at:.0f} s ({phase}): {versions_registered(root)} versions "
            f"registered, aliases {found or 'none'}, every alias on a verified version"
        )
    assert start_train(root, log).wait() == 0, log.read_text()[-3000:]
    found = check_aliases(root)
    rerun = found[registry.CHALLENGER]
    same = same_predictions(predictions(copies["ref"], ref), predictions(root, rerun))
    assert same, "the rerun's bundle predicts differently from the reference's"
    lines.append(
        f"rerun: v{rerun} verified (aliases {found}), its predictions equal the reference's "
        "for every customer"
    )
    return lines


def service_summary(source: Path, scratch: Path, args, rng) -> list[str]:
    """The service part's one closing line, after its rounds (each printed as it ends)."""
    rows, final = service_kills(source, scratch, args, rng)
    return [
        f"{len(rows)} kills; {final.acknowledged:,} events acknowledged, {final.in_log_once:,} "
        f"found exactly once in the event log, {final.in_store_once:,} test events in the event "
        f"store, each once; lost 0, duplicated 0; unanswered batches "
        f"{sum(r.unanswered for r in rows)}: {sum(r.applied_whole for r in rows)} applied "
        f"whole, the rest not at all, none half; median start "
        f"{np.median([r.ready_s for r in rows]):.0f} s"
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="data directory of a synthetic world")
    parser.add_argument("--customers", type=int, default=1_000, help="world size without --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kills", type=int, default=10, help="service kills")
    parser.add_argument("--min-seconds", type=float, default=0.5, help="load before a kill")
    parser.add_argument("--max-seconds", type=float, default=4.0)
    parser.add_argument("--keys", type=int, default=200, help="customers of the event load")
    parser.add_argument("--campaign-kills", type=int, default=4)
    parser.add_argument("--train-kills", type=int, default=3)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)
    rng = np.random.default_rng(args.seed)
    source = ready_world(args.data, args.customers, args.seed).root
    failed = []
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="nba-kill-restart-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        # (title, name, kills: 0 skips the part, run); training runs its reference and its
        # rerun whatever --train-kills says
        parts = [
            (
                f"1. nba serve: {args.kills} kills under event load ({source})",
                "service",
                args.kills,
                service_summary,
            ),
            (
                f"\n2. nba campaign: {args.campaign_kills} kills",
                "campaign",
                args.campaign_kills,
                campaign_kills,
            ),
            (f"\n3. nba train: {args.train_kills} kills", "train", 1, train_kills),
        ]
        for title, part, kills, run in parts:
            print(title)
            if kills < 1:
                print("  skipped")
                continue
            try:
                for line in run(source, scratch, args, rng):
                    print(f"  {line}")
            except AssertionError as exc:
                failed.append(f"{part}: {exc}")
                print(f"  FAILED: {exc}")
    print("\nall held" if not failed else f"\n{len(failed)} part(s) failed: {failed}")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
