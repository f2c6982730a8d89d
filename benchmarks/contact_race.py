"""Contact caps under a race: two replicas on one Redis online store, many simultaneous
POST /recommend for the same customers, with contacts recorded before the answer
(`service.reserve_contacts: true`, the default) and without (the channel reports them later).

    python -m benchmarks.contact_race --data /tmp/w --customers-raced 40 --requests 16

For each setting: a fresh copy of the world materialised into its own Redis namespace, two
`nba serve` processes, --requests requests at once per customer alternating between them (a
thread pool of --requests), then every contact answered is counted per customer and channel
against the 7-day caps and the counts the store held before. Without the record, the answers
themselves pass the caps (the channel would deliver them); with it, none may. Prints the counts
and the request latency of each setting.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

from benchmarks.serving import (
    TOKEN_VARIABLE,
    Service,
    free_port,
    local_redis,
    nba_command,
    quantiles,
    ready_world,
    scratch_copy,
)
from features.config import DataConfig, OnlineStoreConfig
from features.ingest.contract import CUSTOMER_ID
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.redis_online_store import RedisOnlineStore
from serving.config import PolicyConfig

WEEK_CAPS = {
    c.channel: c.max_contacts for c in PolicyConfig().contact_policy.caps if c.window_days == 7
}


def race(
    source: Path, scratch: Path, url: str, reserve: bool, args: argparse.Namespace
) -> dict[str, float]:
    """One setting: materialise, start two replicas, race, count contacts past a cap."""
    tag = "on" if reserve else "off"
    world = scratch_copy(source, scratch / f"reserve-{tag}")
    ns = f"race-{tag}-{secrets.token_hex(3)}"
    offset = (12 - pd.Timestamp.now(tz="UTC").hour + 12) % 24 - 12  # customers at midday
    config = world / "race.yaml"
    config.write_text(
        f"online_store:\n  backend: redis\n  url: {url}\n  namespace: {ns}\n"
        f"service:\n  reserve_contacts: {str(reserve).lower()}\n"
        f"policy:\n  contact_policy:\n    quiet_hours:\n      utc_offset_hours: {offset}\n"
    )
    subprocess.run(
        [*nba_command(), "features", "--data", str(world), "--config", str(config)]
        + ["--materialize"],
        check=True,
        capture_output=True,
    )
    cfg = OnlineStoreConfig(backend="redis", url=url, namespace=ns)
    fs = FeatureSet(DataConfig(), FeatureConfig())
    names = [f"{c or 'all'}_contact_count_7d" for c in WEEK_CAPS]
    with RedisOnlineStore(cfg, fs) as store:
        rng = np.random.default_rng(args.seed)
        ids = [str(c) for c in rng.choice(store.customer_ids(), args.customers_raced, False)]
        keys = [store.identifiers(c)[0] for c in ids]
        before = store.read_many(ids)[[CUSTOMER_ID, *names]].set_index(CUSTOMER_ID)
    env = {**os.environ}
    cmd = [*nba_command(), "serve", "--data", str(world), "--config", str(config)]
    ports = [free_port(), free_port()]
    with (
        Service("a", [*cmd, "--port", str(ports[0])], env, ports[0], scratch / f"{tag}-a.log") as a,
        Service("b", [*cmd, "--port", str(ports[1])], env, ports[1], scratch / f"{tag}-b.log") as b,
    ):
        jobs = [(k, (a, b)[i % 2].url) for k in keys for i in range(args.requests)]

        def ask(job: tuple[str, str]) -> tuple[dict, float]:
            t0 = time.perf_counter()
            r = httpx.post(
                f"{job[1]}/recommend",
                json={"customer": job[0], "channel": "web", "k": 3, "explain": False},
                timeout=60,
            )
            return r.json() if r.status_code == 200 else {"status": r.status_code}, 1000 * (
                time.perf_counter() - t0
            )

        with ThreadPoolExecutor(args.requests) as pool:
            answers = list(pool.map(ask, jobs))
    ms = [t for _, t in answers]
    ok = [x for x, _ in answers if "outcome" in x]
    contacts = pd.DataFrame(
        [
            {CUSTOMER_ID: x["customer"]["customer_id"], "channel": x["channel"]}
            for x in ok
            if x["outcome"] == "contact"
        ],
        columns=[CUSTOMER_ID, "channel"],
    )
    past = set()
    for channel, cap in WEEK_CAPS.items():
        name = f"{channel or 'all'}_contact_count_7d"
        mine = contacts if channel is None else contacts[contacts["channel"] == channel]
        got = mine.groupby(CUSTOMER_ID).size().reindex(ids, fill_value=0)
        prior = before[name].reindex(ids)
        past |= set(got.index[(prior + got > np.maximum(cap, prior)).to_numpy()])
    p50, p99 = quantiles(ms)
    return {
        "requests": len(jobs),
        "errors": len(jobs) - len(ok),
        "contacts": len(contacts),
        "customers past a cap": len(past),
        "p50 ms": p50,
        "p99 ms": p99,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="data directory of a synthetic world")
    parser.add_argument("--customers", type=int, default=3_000, help="world size without --data")
    parser.add_argument("--customers-raced", type=int, default=40)
    parser.add_argument("--requests", type=int, default=16, help="simultaneous per customer")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    source = ready_world(args.data, args.customers, args.seed)
    os.environ[TOKEN_VARIABLE] = secrets.token_urlsafe(24)
    scratch = Path(tempfile.mkdtemp(prefix="nba-race-"))
    try:
        with local_redis(scratch / "redis") as server:
            results = {
                "recorded (reserve_contacts: true)": race(
                    source.root, scratch, server.url, True, args
                ),
                "not recorded (false)": race(source.root, scratch, server.url, False, args),
            }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\nmachine load (1/5/15 min) at the start: {load}; {os.cpu_count()} cores")
    print(
        f"{args.customers_raced} customers x {args.requests} simultaneous POST /recommend, "
        "alternating between two replicas on one Redis"
    )
    cols = ["requests", "errors", "contacts", "customers past a cap", "p50 ms", "p99 ms"]
    print(f"  {'contacts':34s}" + "".join(f"{c:>22s}" for c in cols))
    for name, r in results.items():
        cells = "".join(f"{r[c]:22.1f}" if isinstance(r[c], float) else f"{r[c]:22d}" for c in cols)
        print(f"  {name:34s}{cells}")


if __name__ == "__main__":
    main()
