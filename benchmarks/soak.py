"""Soak: the real `nba serve` under a mixed load for minutes, on loopback, bounded in time.

    python -m benchmarks.soak                      # a fresh 3,000-customer world, 10 minutes
    python -m benchmarks.soak --data DIR --minutes 3

Four wrk processes at once, one per endpoint, each paced to a fixed rate by
`benchmarks/wrk/soak.lua`: POST /recommend, POST /events (batches of fresh events), GET
/customers/{key} (the 360 view) and POST /score. Every wrk runs one minute at a time, so each
minute gives each endpoint its own p99 and its count of answers by HTTP status; a warm-up
(--warmup seconds, same load) comes first and is not counted. The resident memory of the
service's process tree (the `nba serve` process and every BentoML process under it, psutil) is
sampled after the warm-up and after every minute.

Reported: requests served per endpoint, answers that were not 200 by status (goal: no 5xx),
wrk's socket errors, events accepted / rejected, p99 per minute per endpoint with the slope of
a least-squares line (ms per minute) and last/first ratio (goal: no upward drift), memory after
warm-up vs at the end (goal: growth under 10%), and the tracebacks in the service's log. The
machine's load is printed at the start and the end: every figure is CPU-bound, and on a shared
machine the p99 follows the neighbours' load. wrk's latency is measured from each request's send
(paced requests that wait behind a slow one are not corrected for).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from benchmarks.serving import (
    TOKEN_VARIABLE,
    WRK_SCRIPTS,
    Service,
    _terminate,
    ensure_wrk,
    free_port,
    nba_command,
    ready_world,
    scratch_copy,
)

GOAL_MEMORY_GROWTH = 0.10
ENDPOINTS = ("recommend", "events", "view", "score")
LABELS = {
    "recommend": "POST /recommend",
    "events": "POST /events",
    "view": "GET /customers/{key}",
    "score": "POST /score",
}


@dataclass(frozen=True)
class Load:
    """One endpoint's share of the mixed load: its rate, connections and request size."""

    kind: str
    rate: float
    connections: int
    size: int = 1


@dataclass
class Minute:
    """One wrk run of one endpoint: counts, statuses and latency (ms)."""

    requests: int
    ok: int
    statuses: dict[int, int]
    socket_errors: int
    p50: float
    p99: float
    max: float
    accepted: int
    rejected: int

    @classmethod
    def parse(cls, stdout: str) -> Minute:
        line = next((x for x in stdout.splitlines() if x.startswith("NBA_SOAK ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no NBA_SOAK line:\n{stdout[-2000:]}")
        r = json.loads(line.removeprefix("NBA_SOAK "))
        statuses: dict[int, int] = {}
        for part in r["statuses"]:
            for code, n in part.items():
                statuses[int(code)] = statuses.get(int(code), 0) + n
        return cls(
            requests=r["requests"],
            ok=r["ok"],
            statuses=statuses,
            socket_errors=sum(r[k] for k in ("connect", "read", "write", "timeout")),
            p50=r["p50_us"] / 1000,
            p99=r["p99_us"] / 1000,
            max=r["max_us"] / 1000,
            accepted=r["accepted"],
            rejected=r["rejected"],
        )


@dataclass
class Soak:
    """Everything measured: per endpoint, one Minute per measured minute; memory samples."""

    minutes: dict[str, list[Minute]] = field(default_factory=lambda: {k: [] for k in ENDPOINTS})
    memory_mb: list[float] = field(default_factory=list)  # after warm-up, then each minute
    processes: list[int] = field(default_factory=list)


def tree_memory_mb(pid: int) -> tuple[float, int]:
    """Resident memory (RSS, MB) summed over the process and all its descendants, and how many
    processes that is."""
    import psutil

    root = psutil.Process(pid)
    total, n = 0, 0
    for p in [root, *root.children(recursive=True)]:
        try:
            total += p.memory_info().rss
            n += 1
        except psutil.NoSuchProcess:
            pass
    return total / 2**20, n


def wrk_minute(url: str, load: Load, keys_file: Path, seconds: float, run: str, env) -> Minute:
    """One wrk process driving one endpoint for `seconds`."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{load.connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPTS / "soak.lua"),
        url,
        "--",
        str(keys_file),
        load.kind,
        str(load.rate),
        str(load.size),
        run,
    ]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    return Minute.parse(out.stdout)


def drive(
    url: str, loads: list[Load], keys_file: Path, seconds: float, run: str, env
) -> dict[str, Minute]:
    """All endpoints at once, each by its own wrk process, for `seconds`; `run` makes the event
    ids of this drive its own (each wrk counts its requests from 1)."""
    with ThreadPoolExecutor(len(loads)) as pool:
        futures = {
            load.kind: pool.submit(wrk_minute, url, load, keys_file, seconds, run, env)
            for load in loads
        }
        return {kind: f.result() for kind, f in futures.items()}


def soak_keys(data: Path, n: int, seed: int) -> list[str]:
    """One identifier of each of n random customers of the event store."""
    from features.ingest.event_store import open_store

    con = open_store(data)
    try:
        rows = con.execute(
            "SELECT min(identifier) FROM identity GROUP BY customer_id ORDER BY hash(customer_id, "
            f"{int(seed)}) LIMIT {int(n)}"
        ).fetchall()
    finally:
        con.close()
    return [r[0] for r in rows]


def slope_per_minute(values: list[float]) -> float:
    """Least-squares slope of `values` against their index (units per minute)."""
    if len(values) < 2:
        return 0.0
    return float(np.polyfit(np.arange(len(values)), values, 1)[0])


def print_report(soak: Soak, loads: list[Load], args, load_start: str, log: Path) -> bool:
    """The tables and the goals; True when every goal is met."""
    load_end = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"\nmachine load (1/5/15 min): {load_start} at the start, {load_end} at the end; "
        f"{os.cpu_count()} cores shared with whatever else runs"
    )
    n = len(soak.memory_mb) - 1
    print(
        f"{n} measured minutes after a {args.warmup:g} s warm-up; rates: "
        + ", ".join(f"{LABELS[x.kind]} {x.rate:g}/s" for x in loads)
    )

    print(
        f"\n{'endpoint':24s} {'requests':>9s} {'200':>9s} {'4xx':>5s} {'5xx':>5s} "
        f"{'sock.err':>8s} {'non-200 by status':s}"
    )
    total_5xx = 0
    for load in loads:
        ms = soak.minutes[load.kind]
        statuses: dict[int, int] = {}
        for m in ms:
            for code, c in m.statuses.items():
                statuses[code] = statuses.get(code, 0) + c
        n4 = sum(c for s, c in statuses.items() if 400 <= s < 500)
        n5 = sum(c for s, c in statuses.items() if s >= 500)
        total_5xx += n5
        by = ", ".join(f"{s}: {c}" for s, c in sorted(statuses.items())) or "-"
        print(
            f"{LABELS[load.kind]:24s} {sum(m.requests for m in ms):9,d} "
            f"{sum(m.ok for m in ms):9,d} {n4:5d} {n5:5d} "
            f"{sum(m.socket_errors for m in ms):8d} {by}"
        )
    ev = soak.minutes["events"]
    acc, rej = sum(m.accepted for m in ev), sum(m.rejected for m in ev)
    size = next(x.size for x in loads if x.kind == "events")
    print(
        f"events: {acc:,} accepted + {rej:,} rejected of {sum(m.ok for m in ev) * size:,} "
        "sent in answered batches"
    )

    print("\np99 per minute (ms)")
    print(
        f"{'minute':>6s} " + " ".join(f"{LABELS[x.kind]:>21s}" for x in loads) + f" {'RSS MB':>8s}"
    )
    for i in range(n):
        row = " ".join(f"{soak.minutes[x.kind][i].p99:21.1f}" for x in loads)
        print(f"{i + 1:6d} {row} {soak.memory_mb[i + 1]:8.0f}")
    drift_ok = True
    print(
        f"{'slope':>6s} "
        + " ".join(
            f"{slope_per_minute([m.p99 for m in soak.minutes[x.kind]]):+17.2f}/min" for x in loads
        )
    )
    ratios = []
    for x in loads:
        p = [m.p99 for m in soak.minutes[x.kind]]
        ratios.append(p[-1] / p[0] if p and p[0] > 0 else float("nan"))
    print(f"{'last/1st':>6s} " + " ".join(f"{r:21.2f}" for r in ratios))
    for x in loads:
        p = [m.p99 for m in soak.minutes[x.kind]]
        # upward drift: a rising line whose rise over the run exceeds half the median p99
        rise = slope_per_minute(p) * max(len(p) - 1, 1)
        if rise > 0.5 * float(np.median(p)):
            drift_ok = False

    grow = soak.memory_mb[-1] / soak.memory_mb[0] - 1
    print(
        f"\nresident memory of the service tree ({soak.processes[-1]} processes): "
        f"{soak.memory_mb[0]:.0f} MB after warm-up, {soak.memory_mb[-1]:.0f} MB at the end "
        f"({grow:+.1%})"
    )
    text = log.read_text(errors="replace")
    tracebacks = text.count("Traceback (most recent call last)")
    print(f"service log: {tracebacks} tracebacks ({log})")

    goals = [
        ("no 5xx answer", f"{total_5xx}", total_5xx == 0),
        ("p99 without upward drift (rise < half the median)", "see slopes", drift_ok),
        (f"memory growth < {GOAL_MEMORY_GROWTH:.0%}", f"{grow:+.1%}", grow < GOAL_MEMORY_GROWTH),
        ("no traceback in the service log", f"{tracebacks}", tracebacks == 0),
    ]
    print("\ngoals")
    for name, value, ok in goals:
        print(f"  {name:52s} {value:>10s}  {'met' if ok else 'NOT met'}")
    return all(ok for _, _, ok in goals)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="data directory of a synthetic world")
    parser.add_argument("--customers", type=int, default=3_000, help="world size without --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=int, default=10, help="measured minutes")
    parser.add_argument("--warmup", type=float, default=30.0, help="seconds before measuring")
    parser.add_argument("--keys", type=int, default=1_000, help="customer keys of the load")
    parser.add_argument("--recommend-rate", type=float, default=40.0)
    parser.add_argument("--event-rate", type=float, default=5.0, help="batches/s")
    parser.add_argument("--batch", type=int, default=20, help="events per POST /events")
    parser.add_argument("--view-rate", type=float, default=10.0)
    parser.add_argument("--score-rate", type=float, default=1.0)
    parser.add_argument("--score-size", type=int, default=20, help="customers per POST /score")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)

    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    source = ready_world(args.data, args.customers, args.seed)
    token = secrets.token_urlsafe(24)
    env = {**os.environ, TOKEN_VARIABLE: token}
    run = f"soak-{secrets.token_hex(4)}"
    loads = [
        Load("recommend", args.recommend_rate, 4),
        Load("events", args.event_rate, 1, args.batch),
        Load("view", args.view_rate, 2),
        Load("score", args.score_rate, 1, args.score_size),
    ]
    print(f"load generator: {ensure_wrk()}")
    soak = Soak()
    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="nba-soak-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        world = scratch_copy(source.root, scratch)
        keys = soak_keys(world, args.keys, args.seed)
        keys_file = scratch / "keys.txt"
        keys_file.write_text("".join(json.dumps(k) + "\n" for k in keys))
        port = free_port()
        cmd = [*nba_command(), "serve", "--data", str(world), "--port", str(port)]
        log = Path(tempfile.gettempdir()) / f"nba-soak-{port}.log"
        print(f"nba serve on 127.0.0.1:{port}, {len(keys):,} customer keys; log {log}")
        service = stack.enter_context(Service("nba serve", cmd, env, port, log))
        print(f"ready after {service.started_s:.1f} s; warm-up {args.warmup:g} s")
        drive(service.url, loads, keys_file, args.warmup, f"{run}-w", env)
        mb, n = tree_memory_mb(service.process.pid)
        soak.memory_mb.append(mb)
        soak.processes.append(n)
        for minute in range(args.minutes):
            t0 = time.monotonic()
            got = drive(service.url, loads, keys_file, 60, f"{run}-{minute}", env)
            for kind, m in got.items():
                soak.minutes[kind].append(m)
            mb, n = tree_memory_mb(service.process.pid)
            soak.memory_mb.append(mb)
            soak.processes.append(n)
            print(
                f"minute {minute + 1}/{args.minutes} ({time.monotonic() - t0:.0f} s): "
                + ", ".join(f"{k} {m.requests} req p99 {m.p99:.1f} ms" for k, m in got.items())
                + f"; RSS {mb:.0f} MB in {n} processes"
            )
        ok = print_report(soak, loads, args, load_start, log)
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
