"""Real-time serving speed: one decision in-process, POST /recommend and POST /events over HTTP
beside a no-op BentoML service measured in the same run, and where a request's time goes.

    python -m benchmarks.serving --data /tmp/w          # an existing trained world (a copy is served)
    python -m benchmarks.serving                        # a fresh 3,000-customer world, trained
    python -m benchmarks.serving --data DIR --seconds 8 --rate 100 --connections 4

1. In-process (`ServingRuntime` over a copy of the world): `decider.recommend(key, "web", k=3)`
   without and with reasons, one customer at a time, beside LightGBM's own prediction of the
   same decision's candidates (every model the decision calls, matrices built beforehand), and
   the online store's `read_row` of one customer.
2. HTTP on loopback: the no-op service (`benchmarks/serving_noop.py`: the same worker settings
   and request fields, a constant answer of a real answer's bytes) and then `nba serve`, each
   started as a process and driven alone by the same load generator, wrk (installed with apt-get
   when missing), with `benchmarks/wrk/recommend.lua`: a random key of --keys real identifiers
   per request; p50/p99 at --rate requests/s (Debian's wrk has no -R: the script paces itself
   with wrk's `delay()` on an absolute schedule, so the rate is fixed while a request takes less
   than the interval; the achieved rate is printed) and the closed-loop maximum on
   --connections connections.
3. Events: batches of --batch events through POST /events (`benchmarks/wrk/events.lua`, fresh ids
   every batch), closed loop; then --trials times an e-mail `consent_revoked` for a customer
   whose recommendation holds e-mail actions and, right after its answer, POST /recommend until
   one comes back without them: the delay from the acknowledgement to that answer.
3c. The Redis online store: a redis-server started here (appendfsync always, the durability of
   the SQLite store's FULL), a second copy of the world materialised into it with `nba features
   --materialize`, read_row timed in-process, and `nba serve` on it driven as in 2, beside the
   SQLite figures of the same run; then two replicas on that Redis, each driven by its own
   closed loop at once: their total beside one replica's.
4. Where the time goes: the in-process path with its stages timed inside real calls (key
   resolution, feature read, arrays, rules, scoring, reasons, the rest of the decision, the
   decision log, building the response, JSON), and the framework as HTTP minus in-process.

The services serve a scratch copy of the data directory (events and decision logs land there),
removed at the end; every process started is stopped at exit, also on error or Ctrl-C. The
machine's load is printed first: every figure is CPU-bound and the machine may be shared.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.world import prepared_world
from features.ingest.contract import ACTION_ID, CHANNEL, DataDir

ROOT = Path(__file__).resolve().parent.parent
WRK_SCRIPTS = Path(__file__).resolve().parent / "wrk"
TOKEN_VARIABLE = "NBA_API_TOKEN"
NOOP_RESPONSE_VARIABLE = "NBA_NOOP_RESPONSE"
START_SECONDS = 240.0

# goals of issue #20 (items 2 and 4)
GOAL_DECISION_MS = 1.0
GOAL_LIGHTGBM_RATIO = 4.0
GOAL_READ_P99_MS = 0.1
GOAL_P99_RATIO = 2.0
GOAL_THROUGHPUT_RATIO = 0.7
GOAL_DECISIONS_PER_S = 500.0
GOAL_EVENTS_PER_S = 5_000.0
GOAL_REFLECT_MS = 50.0


# --------------------------------------------------------------------------- the world


def nba_command() -> list[str]:
    """The `nba` entry point of this interpreter's environment."""
    found = shutil.which("nba", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "serving.cli"]


def ready_world(data: Path | None, customers: int, seed: int) -> DataDir:
    """`data` (or a fresh world) with a champion bundle and a materialised online store."""
    from training import registry

    data_dir = prepared_world(data, customers, seed)
    registry.configure_tracking(data_dir.root)
    if registry.alias_version(registry.CHAMPION) is None:
        print("no champion bundle yet: nba train")
        subprocess.run([*nba_command(), "train", "--data", str(data_dir.root)], check=True)
    if not data_dir.online_store.is_file():
        print("no online store yet: nba features --materialize")
        subprocess.run(
            [*nba_command(), "features", "--data", str(data_dir.root), "--materialize"],
            check=True,
        )
    return data_dir


def scratch_copy(source: Path, into: Path) -> Path:
    """A copy of the data directory for the services to write into (the original stays as it
    was); the MLflow store's absolute artifact paths still point into the original, read-only."""
    target = into / "world"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("realtime-*.jsonl"))
    return target


# --------------------------------------------------------------------------- in-process


def quantiles(ms: list[float] | np.ndarray) -> tuple[float, float]:
    """Median and p99."""
    a = np.asarray(ms, dtype=float)
    return float(np.median(a)), float(np.percentile(a, 99))


def pick_keys(runtime: Any, n: int, rng: np.random.Generator) -> list[str]:
    """One identifier (type:value, of a random type) of each of n random customers."""
    store = runtime.store
    ids = store.customer_ids()
    keys = []
    for cid in rng.permutation(ids):
        found = store.identifiers(str(cid))
        if found:
            keys.append(str(found[rng.integers(len(found))]))
        if len(keys) == n:
            break
    return keys


def lightgbm_inputs(policy: Any, decided: Any, arrays: Any) -> list[tuple[Any, Any]]:
    """(booster, matrix) of every single-booster model the decision called, on its candidates:
    the pairs for response and uplift models, the customer for the value model (as in
    benchmarks/policy.py; a per-channel response dict is left out)."""
    b = policy.bundle
    allowed = np.flatnonzero(decided.eligibility.allowed[0])
    if len(allowed) == 0:
        return []  # nothing allowed: no model is called
    models = [b.response, getattr(b.uplift, "baseline_", None), b.uplift, b.value]
    pairs = arrays.take(np.zeros(len(allowed), dtype=np.int64)).with_columns(
        {
            CHANNEL: np.array(decided.scored.channels, dtype=object)[allowed],
            ACTION_ID: np.array(decided.scored.action_ids, dtype=object)[allowed],
        }
    )
    return [
        (m.model_.booster_, m.encoder_.matrix(arrays if m is b.value else pairs))
        for m in models
        if hasattr(m, "encoder_")
    ]


def time_decisions(runtime: Any, keys: list[str]) -> dict[str, list[float]]:
    """ms per call, one customer at a time: the decision without and with reasons, and
    LightGBM's own prediction of the same decision's candidates."""
    decider = runtime.decider
    times: dict[str, list[float]] = {"no reasons": [], "with reasons": [], "LightGBM alone": []}
    for key in keys[:10]:  # warm-up
        decider.recommend(key, "web", k=3, explain=True)
    for key in keys:
        t0 = time.perf_counter()
        decider.recommend(key, "web", k=3, explain=False)
        t1 = time.perf_counter()
        decider.recommend(key, "web", k=3, explain=True)
        t2 = time.perf_counter()
        row = decider.row(decider.customer(key))
        arrays = decider.arrays(row)
        decided = decider.decide(arrays, row.as_of_us, reasons=False)
        inputs = lightgbm_inputs(runtime.policy, decided, arrays)
        t3 = time.perf_counter()
        for booster, matrix in inputs:
            booster.predict(matrix)
        t4 = time.perf_counter()
        for name, seconds in zip(times, (t1 - t0, t2 - t1, t4 - t3), strict=True):
            times[name].append(1000 * seconds)
    return times


def time_reads(store: Any, n: int, rng: np.random.Generator) -> list[float]:
    """ms per `read_row` of one random customer."""
    ids = store.customer_ids()
    picked = [str(ids[i]) for i in rng.integers(0, len(ids), n)]
    for cid in picked[:50]:
        store.read_row(cid)
    out = []
    for cid in picked:
        t0 = time.perf_counter()
        store.read_row(cid)
        out.append(1000 * (time.perf_counter() - t0))
    return out


@contextmanager
def timed_stages(runtime: Any) -> Iterator[dict[str, float]]:
    """The recommend path's stages timed inside real calls: each stage's function wrapped for
    the duration of the block (the module's and instances' own attributes restored after).
    Yields the dict the wrappers add their seconds to; the caller clears it per request."""
    import serving.policy as policy_module

    spent: dict[str, float] = {}

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] = spent.get(name, 0.0) + time.perf_counter() - t0

        return wrapper

    targets = [
        (runtime.decider, "customer", "key resolution"),
        (runtime.store, "read_row", "feature read"),
        (runtime.decider, "arrays", "arrays"),
        (policy_module, "eligibility", "rules"),
        (policy_module, "score_actions", "scoring"),
        (runtime.policy, "_add_reasons", "reasons"),
        (runtime.decider, "_add_reasons", "reasons"),
        (runtime.decider, "recommend", "decision"),
        (runtime, "_record", "sent/holdout event"),
        (runtime.decisions, "append", "decision log"),
    ]
    saved = [(obj, attr, attr in vars(obj), getattr(obj, attr)) for obj, attr, _ in targets]
    try:
        for obj, attr, name in targets:
            setattr(obj, attr, timed(name, getattr(obj, attr)))
        yield spent
    finally:
        for obj, attr, own, original in saved:
            if own:
                setattr(obj, attr, original)
            else:
                delattr(obj, attr)


INNER_STAGES = ["key resolution", "feature read", "arrays", "rules", "scoring", "reasons"]


def profile_stages(runtime: Any, keys: list[str]) -> dict[str, np.ndarray]:
    """ms of each stage of `runtime.recommend(key, "web", k=3, explain=True)` and its JSON, one
    customer at a time; the parts not timed on their own are the residuals of the totals."""
    rows: dict[str, list[float]] = {}
    for key in keys[:10]:
        runtime.recommend(key, "web", k=3, explain=True).model_dump_json()
    with timed_stages(runtime) as spent:
        for key in keys:
            spent.clear()
            t0 = time.perf_counter()
            answer = runtime.recommend(key, "web", k=3, explain=True)
            t1 = time.perf_counter()
            answer.model_dump_json()
            t2 = time.perf_counter()
            ms = {name: 1000 * s for name, s in spent.items()}
            inner = {name: ms.get(name, 0.0) for name in INNER_STAGES}
            stage = {
                **inner,
                "rest of the decision": ms["decision"] - sum(inner.values()),
                "sent/holdout event": ms.get("sent/holdout event", 0.0),
                "decision log": ms.get("decision log", 0.0),
                "response model": 1000 * (t1 - t0)
                - ms["decision"]
                - ms.get("sent/holdout event", 0.0)
                - ms.get("decision log", 0.0),
                "JSON": 1000 * (t2 - t1),
                "in-process total": 1000 * (t2 - t0),
            }
            for name, value in stage.items():
                rows.setdefault(name, []).append(value)
    return {name: np.array(v) for name, v in rows.items()}


def consent_candidates(runtime: Any, keys: list[str], n: int) -> list[str]:
    """Keys whose recommendation (k=20, no side effects) holds an e-mail action."""
    out = []
    for key in keys:
        rec = runtime.decider.recommend(key, "web", k=20, explain=False)
        if any(a["channel"] == "email" for a in rec.actions):
            out.append(key)
        if len(out) == n:
            break
    return out


def real_answer(runtime: Any, keys: list[str]) -> str:
    """The JSON of a real recommendation (k=3, reasons) of median size among a few customers."""
    answers = sorted(
        (runtime.recommend(k, "web", k=3, explain=True).model_dump_json() for k in keys[:21]),
        key=len,
    )
    return answers[len(answers) // 2]


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Service:
    """A service process on loopback: started in its own session, ready when GET /readyz is
    200; stopped with SIGTERM to its process group, then SIGKILL to whatever it had started
    (BentoML's workers run in process groups of their own) by their ids."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], port: int, log: Path):
        self.name, self.cmd, self.env, self.port, self.log = name, cmd, env, port, log
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_s = math.nan
        self.children: list[Any] = []

    def __enter__(self) -> Service:
        t0 = time.perf_counter()
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                self.cmd,
                env=self.env,
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - t0
        self.children = self._children()
        return self

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{tail}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.name} not ready after {START_SECONDS:.0f} s (log {self.log})")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _children(self) -> list[Any]:
        import psutil

        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except (psutil.Error, AttributeError):
            return []

    def stop(self) -> None:
        import psutil

        p = self.process
        if p is None:
            return
        children = {c.pid: c for c in [*self.children, *self._children()]}
        if p.poll() is None:
            with suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=10)
        _, alive = psutil.wait_procs(list(children.values()), timeout=10)
        for child in alive:
            with suppress(psutil.Error):
                child.kill()
        self.process = None


def ensure_wrk() -> str:
    """The wrk binary, installed from Debian's packages (apt-get) when it is missing."""
    found = shutil.which("wrk")
    if found:
        return f"{found} (already installed)"
    print("wrk not found: apt-get update && apt-get install -y wrk")
    subprocess.run(["apt-get", "update", "-qq"], check=True)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "wrk"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    found = shutil.which("wrk")
    if not found:
        raise RuntimeError("apt-get install wrk did not give a wrk binary")
    return f"{found} (installed now with apt-get)"


@dataclass(frozen=True)
class WrkRun:
    """One wrk run's counts and its latency percentiles (ms)."""

    requests: int
    seconds: float
    bytes: int
    errors: int
    p50: float
    p90: float
    p99: float
    max: float
    mean: float
    accepted: int

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @classmethod
    def parse(cls, stdout: str) -> WrkRun:
        line = next((x for x in stdout.splitlines() if x.startswith("NBA_WRK ")), None)
        if line is None:
            raise RuntimeError(f"wrk printed no NBA_WRK line:\n{stdout[-2000:]}")
        r = json.loads(line.removeprefix("NBA_WRK "))
        errors = sum(r[k] for k in ("connect", "read", "write", "status", "timeout"))
        return cls(
            requests=r["requests"],
            seconds=r["duration_us"] / 1e6,
            bytes=r["bytes"],
            errors=errors,
            p50=r["p50_us"] / 1000,
            p90=r["p90_us"] / 1000,
            p99=r["p99_us"] / 1000,
            max=r["max_us"] / 1000,
            mean=r["mean_us"] / 1000,
            accepted=r["accepted"],
        )


def run_wrk(
    url: str, script: str, args: list[str], seconds: float, connections: int, env: dict[str, str]
) -> WrkRun:
    """One thread of wrk for `seconds` on `connections` connections (leaving the other core to
    the service), bounded by a timeout of its own."""
    cmd = [
        "wrk",
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPTS / script),
        url,
        "--",
        *args,
    ]
    out = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=seconds + 60, check=True
    )
    return WrkRun.parse(out.stdout)


@dataclass
class HttpFigures:
    name: str
    started_s: float
    answer_bytes: int
    fixed: WrkRun
    closed: WrkRun


def drive_recommend(
    service: Service, keys_file: Path, args: argparse.Namespace, env: dict[str, str]
) -> HttpFigures:
    """Warm-up, then the fixed rate, then the closed-loop maximum, all on POST /recommend."""
    import httpx

    first = keys_file.read_text().splitlines()[0]
    body = {"customer": json.loads(first), "channel": "web", "k": 3, "explain": True}
    answer = httpx.post(f"{service.url}/recommend", json=body, timeout=30)
    answer.raise_for_status()
    url = f"{service.url}/recommend"
    keys = [str(keys_file), "0", "3", "true"]
    run_wrk(url, "recommend.lua", keys, min(3.0, args.seconds), args.connections, env)
    paced = [str(keys_file), str(args.rate), "3", "true"]
    fixed = run_wrk(url, "recommend.lua", paced, args.seconds, args.rate_connections, env)
    closed = run_wrk(url, "recommend.lua", keys, args.seconds, args.connections, env)
    return HttpFigures(service.name, service.started_s, len(answer.content), fixed, closed)


def drive_replicas(
    services: list[Service], keys_file: Path, args: argparse.Namespace, env: dict[str, str]
) -> list[WrkRun]:
    """A closed loop on each replica at once (a wrk each, --connections connections)."""
    from concurrent.futures import ThreadPoolExecutor

    keys = [str(keys_file), "0", "3", "true"]
    with ThreadPoolExecutor(len(services)) as pool:
        runs = [
            pool.submit(
                run_wrk,
                f"{s.url}/recommend",
                "recommend.lua",
                keys,
                args.seconds,
                args.connections,
                env,
            )
            for s in services
        ]
        return [r.result() for r in runs]


@contextmanager
def local_redis(where: Path) -> Iterator[Any]:
    """Debian's redis-server on a free loopback port, AOF with fsync on every write (the tests'
    helper, tests/redis_server.py), stopped at the end."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "redis_server", ROOT / "tests" / "redis_server.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up there
    spec.loader.exec_module(module)
    server = module.RedisServer(where).start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class RedisFigures:
    reads: list[float]
    single: HttpFigures
    pair: list[WrkRun]


def drive_customers(
    service: Service, keys_file: Path, args: argparse.Namespace, env: dict[str, str]
) -> tuple[WrkRun, WrkRun]:
    """POST /customers (the 360 view, a timeline of 20) at a fixed rate and closed loop."""
    url = f"{service.url}/customers"
    paced = [str(keys_file), str(args.view_rate), "20", "-", "360"]
    fixed = run_wrk(url, "recommend.lua", paced, args.seconds, 2, env)
    closed = run_wrk(url, "recommend.lua", [*paced[:1], "0", *paced[2:]], args.seconds, 2, env)
    return fixed, closed


@dataclass
class Reflection:
    delays_ms: list[float]
    requests_needed: list[int]
    skipped: int
    not_reflected: int


def email_actions(client: Any, key: str) -> list[str]:
    """The e-mail actions of the customer's recommendation (k=20) over HTTP."""
    body = {"customer": key, "channel": "web", "k": 20, "explain": False}
    r = client.post("/recommend", json=body)
    r.raise_for_status()
    return [a["action_id"] for a in r.json()["actions"] if a["channel"] == "email"]


def reflection_trials(url: str, token: str, keys: list[str], run: str) -> Reflection:
    """Per key: a recommendation with e-mail actions, an e-mail consent_revoked, and then
    POST /recommend until an answer has no e-mail action: ms from the events answer to it."""
    import httpx

    out = Reflection([], [], 0, 0)
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=url, timeout=30) as client:
        for i, key in enumerate(keys):
            if not email_actions(client, key):
                out.skipped += 1
                continue
            event = {
                "event_id": f"{run}-consent-{i}",
                "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "customer_key": key,
                "channel": "email",
                "event_type": "consent_revoked",
            }
            r = client.post("/events", json={"events": [event]}, headers=headers)
            r.raise_for_status()
            acked = time.perf_counter()
            if r.json()["accepted"] != 1:
                raise RuntimeError(f"consent event not accepted: {r.text}")
            for n in range(1, 101):
                if not email_actions(client, key):
                    out.delays_ms.append(1000 * (time.perf_counter() - acked))
                    out.requests_needed.append(n)
                    break
            else:
                out.not_reflected += 1
    return out


def redis_figures(
    source: Path,
    scratch: Path,
    keys_file: Path,
    args: argparse.Namespace,
    env: dict[str, str],
    rng: np.random.Generator,
) -> RedisFigures:
    """Section 3c: a copy of the world on a Redis online store, one replica, then two."""
    from features.config import load_data_config, load_online_store_config, load_section
    from features.store.definitions import FeatureConfig, FeatureSet
    from features.store.redis_online_store import RedisOnlineStore

    with local_redis(scratch / "redis") as server:
        world = scratch_copy(source, scratch / "on-redis")
        config = world / "redis.yaml"
        config.write_text(f"online_store:\n  backend: redis\n  url: {server.url}\n")
        print(f"redis-server on {server.url}: nba features --materialize into it")
        subprocess.run(
            [*nba_command(), "features", "--data", str(world), "--config", str(config)]
            + ["--materialize"],
            check=True,
            capture_output=True,
        )
        fs = FeatureSet(load_data_config(config), load_section(config, "features", FeatureConfig))
        with RedisOnlineStore(load_online_store_config(config), fs) as store:
            reads = time_reads(store, args.reads, rng)
        cmd = [*nba_command(), "serve", "--data", str(world), "--config", str(config)]
        port = free_port()
        print(f"nba serve on the Redis, 127.0.0.1:{port}")
        log = scratch / "redis-1.log"
        with Service("redis", [*cmd, "--port", str(port)], env, port, log) as one:
            single = drive_recommend(one, keys_file, args, env)
            port2 = free_port()
            print(f"a second replica on 127.0.0.1:{port2}; a closed loop on each at once")
            log2 = scratch / "redis-2.log"
            with Service("redis-2", [*cmd, "--port", str(port2)], env, port2, log2) as two:
                pair = drive_replicas([one, two], keys_file, args, env)
    return RedisFigures(reads, single, pair)


# --------------------------------------------------------------------------- report


def mark(ok: bool) -> str:
    return "met" if ok else "NOT met"


def print_report(
    load: str,
    wrk: str,
    args: argparse.Namespace,
    n_keys: int,
    decisions: dict[str, list[float]],
    reads: list[float],
    stages: dict[str, np.ndarray],
    noop: HttpFigures,
    real: HttpFigures,
    events: WrkRun,
    reflection: Reflection,
    views: tuple[WrkRun, WrkRun],
    on_redis: RedisFigures,
) -> None:
    goals: list[tuple[str, str, bool]] = []
    print(f"\nmachine load (1/5/15 min) at the start: {load}; {os.cpu_count()} cores")
    print(f"load generator: {wrk}; one wrk thread")

    print(f"\n1. in-process, one customer per call ({len(decisions['no reasons'])} customers)")
    lgb50, _ = quantiles(decisions["LightGBM alone"])
    print(f"  {'':32s} {'median ms':>10s} {'p99 ms':>10s} {'x LightGBM':>11s}")
    for name, ms in decisions.items():
        p50, p99 = quantiles(ms)
        ratio = "" if name == "LightGBM alone" else f"{p50 / lgb50:10.1f}x"
        label = {
            "no reasons": "decision (explain=False)",
            "with reasons": "decision (explain=True)",
            "LightGBM alone": "LightGBM alone, same candidates",
        }[name]
        print(f"  {label:32s} {p50:10.3f} {p99:10.3f} {ratio:>11s}")
    r50, r99 = quantiles(reads)
    print(f"  {'online store read_row':32s} {r50:10.4f} {r99:10.4f}   ({len(reads):,} reads)")
    for name, label in (("no reasons", "explain=False"), ("with reasons", "explain=True")):
        p50, _ = quantiles(decisions[name])
        goals.append(
            (
                f"decision median <= {GOAL_DECISION_MS:g} ms ({label})",
                f"{p50:.3f} ms",
                p50 <= GOAL_DECISION_MS,
            )
        )
        goals.append(
            (
                f"decision <= {GOAL_LIGHTGBM_RATIO:g}x LightGBM ({label})",
                f"{p50 / lgb50:.1f}x",
                p50 / lgb50 <= GOAL_LIGHTGBM_RATIO,
            )
        )
    goals.append(
        (f"store read p99 <= {GOAL_READ_P99_MS:g} ms", f"{r99:.4f} ms", r99 <= GOAL_READ_P99_MS)
    )

    print(
        f"\n2. POST /recommend over HTTP (loopback, {n_keys} customer keys at random, k=3, "
        f"explain=true; {args.seconds:g} s a run)"
    )
    print(
        f"  fixed rate {args.rate:g} req/s ({args.rate_connections} connections, paced by wrk's "
        f"Lua delay()); maximum: closed loop on {args.connections} connections"
    )
    head = (
        f"  {'service':8s} {'ready s':>8s} {'bytes':>6s} | {'rate/s':>7s} {'p50 ms':>7s} "
        f"{'p90 ms':>7s} {'p99 ms':>7s} {'max ms':>7s} | {'max req/s':>9s} {'p50 ms':>7s} "
        f"{'p99 ms':>7s} | {'errors':>6s}"
    )
    print(head)
    for f in (noop, real):
        a, b = f.fixed, f.closed
        print(
            f"  {f.name:8s} {f.started_s:8.1f} {f.answer_bytes:6d} | {a.rate:7.1f} {a.p50:7.2f} "
            f"{a.p90:7.2f} {a.p99:7.2f} {a.max:7.1f} | {b.rate:9.1f} {b.p50:7.2f} {b.p99:7.2f} "
            f"| {a.errors + b.errors:6d}"
        )
    p99_ratio = real.fixed.p99 / noop.fixed.p99
    p50_ratio = real.fixed.p50 / noop.fixed.p50
    tp_ratio = real.closed.rate / noop.closed.rate
    print(
        f"  real / no-op: p50 {p50_ratio:.2f}x, p99 {p99_ratio:.2f}x at {args.rate:g} req/s; "
        f"maximum throughput {tp_ratio:.2f}"
    )
    goals.append(
        (
            f"HTTP p99 real / no-op <= {GOAL_P99_RATIO:g} at {args.rate:g} req/s",
            f"{p99_ratio:.2f}",
            p99_ratio <= GOAL_P99_RATIO,
        )
    )
    goals.append(
        (
            f"max throughput real / no-op >= {GOAL_THROUGHPUT_RATIO:g}",
            f"{tp_ratio:.2f}",
            tp_ratio >= GOAL_THROUGHPUT_RATIO,
        )
    )
    goals.append(
        (
            f"max throughput >= {GOAL_DECISIONS_PER_S:g} decisions/s",
            f"{real.closed.rate:.0f}/s",
            real.closed.rate >= GOAL_DECISIONS_PER_S,
        )
    )

    ev_rate = events.accepted / events.seconds
    print(
        f"\n3. POST /events, batches of {args.batch}, closed loop on {args.event_connections} "
        f"connections, {args.seconds:g} s"
    )
    print(
        f"  {events.requests:,} batches, {events.accepted:,} events accepted "
        f"({events.requests * args.batch - events.accepted:,} not), {events.errors} errors: "
        f"{ev_rate:,.0f} events/s; a batch p50 {events.p50:.1f} ms, p99 {events.p99:.1f} ms"
    )
    goals.append(
        (
            f"events >= {GOAL_EVENTS_PER_S:,.0f}/s (batches of {args.batch})",
            f"{ev_rate:,.0f}/s",
            ev_rate >= GOAL_EVENTS_PER_S,
        )
    )
    d = reflection.delays_ms
    trials = len(d) + reflection.not_reflected
    print(
        f"  consent_revoked (email) -> a recommendation without e-mail actions: {trials} trials "
        f"({reflection.skipped} skipped: no e-mail action over HTTP beforehand)"
    )
    if d:
        d50, d99 = quantiles(d)
        first = sum(1 for n in reflection.requests_needed if n == 1)
        print(
            f"  from the events answer to the reflecting answer: median {d50:.2f} ms, p99 "
            f"{d99:.2f} ms, max {max(d):.2f} ms; reflected by the first request in "
            f"{first}/{len(d)}, never in {reflection.not_reflected}"
        )
        ok = d99 < GOAL_REFLECT_MS and reflection.not_reflected == 0
        goals.append(
            (
                f"ack -> reflecting recommendation < {GOAL_REFLECT_MS:g} ms (p99)",
                f"{d99:.2f} ms",
                ok,
            )
        )
    else:
        goals.append(
            (f"ack -> reflecting recommendation < {GOAL_REFLECT_MS:g} ms", "no trial", False)
        )

    fixed, closed = views
    print(
        f"\n3b. POST /customers, the 360 view (timeline of 20, a recommendation with reasons), "
        f"{args.seconds:g} s a run on 2 connections"
    )
    for label, run_ in (("fixed rate", fixed), ("closed loop", closed)):
        print(
            f"  {label:12s} {run_.rate:7.1f} views/s  p50 {run_.p50:7.2f} ms  p90 "
            f"{run_.p90:7.2f} ms  p99 {run_.p99:7.2f} ms  max {run_.max:7.1f} ms  "
            f"errors {run_.errors}"
        )

    print(
        "\n3c. the Redis online store (redis-server on loopback, appendfsync always) beside "
        "SQLite (FULL), same run"
    )
    s50, s99 = quantiles(reads)
    q50, q99 = quantiles(on_redis.reads)
    print(
        f"  read_row: SQLite median {s50:.4f} ms p99 {s99:.4f} ms; Redis median {q50:.4f} ms "
        f"p99 {q99:.4f} ms ({len(on_redis.reads):,} reads)"
    )
    print(head)
    for f in (real, on_redis.single):
        a, b = f.fixed, f.closed
        name = "sqlite" if f is real else "redis"
        print(
            f"  {name:8s} {f.started_s:8.1f} {f.answer_bytes:6d} | {a.rate:7.1f} {a.p50:7.2f} "
            f"{a.p90:7.2f} {a.p99:7.2f} {a.max:7.1f} | {b.rate:9.1f} {b.p50:7.2f} {b.p99:7.2f} "
            f"| {a.errors + b.errors:6d}"
        )
    r = on_redis.single
    print(
        f"  redis / sqlite: p50 {r.fixed.p50 / real.fixed.p50:.2f}x, p99 "
        f"{r.fixed.p99 / real.fixed.p99:.2f}x at {args.rate:g} req/s; maximum throughput "
        f"{r.closed.rate / real.closed.rate:.2f}"
    )
    total = sum(w.rate for w in on_redis.pair)
    errors = sum(w.errors for w in on_redis.pair)
    each = ", ".join(f"{w.rate:.1f} (p99 {w.p99:.1f} ms)" for w in on_redis.pair)
    print(
        f"  two replicas on the Redis, a closed loop each at once: {total:.1f} req/s in all "
        f"({each}; errors {errors}) vs one replica {r.closed.rate:.1f} req/s: "
        f"{total / r.closed.rate:.2f}x on {os.cpu_count()} cores shared with wrk and Redis"
    )

    n = len(stages["in-process total"])
    http_mean, http_p50 = real.fixed.mean, real.fixed.p50
    inproc_mean = float(stages["in-process total"].mean())
    inproc_p50 = float(np.median(stages["in-process total"]))
    print(
        f"\n4. where a request's time goes (POST /recommend, k=3, explain=true; stages timed "
        f"inside {n} in-process calls;\n   the framework: HTTP at {args.rate:g} req/s minus "
        f"in-process; shares of the HTTP mean)"
    )
    print(f"  {'stage':28s} {'median ms':>10s} {'mean ms':>9s} {'share':>7s}")
    order = [
        *INNER_STAGES,
        "rest of the decision",
        "sent/holdout event",
        "decision log",
        "response model",
        "JSON",
    ]
    for name in order:
        v = stages[name]
        print(f"  {name:28s} {np.median(v):10.3f} {v.mean():9.3f} {v.mean() / http_mean:7.1%}")
    print(
        f"  {'= in-process total':28s} {inproc_p50:10.3f} {inproc_mean:9.3f} "
        f"{inproc_mean / http_mean:7.1%}"
    )
    fw50, fw_mean = http_p50 - inproc_p50, http_mean - inproc_mean
    print(
        f"  {'framework (HTTP - in-proc.)':28s} {fw50:10.3f} {fw_mean:9.3f} "
        f"{fw_mean / http_mean:7.1%}"
    )
    print(f"  {'= HTTP (wrk)':28s} {http_p50:10.3f} {http_mean:9.3f} {1:7.1%}")
    print(
        f"  (no-op service at the same rate: p50 {noop.fixed.p50:.3f} ms, mean "
        f"{noop.fixed.mean:.3f} ms; 'rest of the decision': choice, exploration, send hours, "
        f"record and candidates)"
    )

    print("\ngoals (issue #20):")
    for name, value, ok in goals:
        print(f"  {name:58s} {value:>12s}  {mark(ok)}")


# --------------------------------------------------------------------------- main


def _terminate(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # so that every `finally` stops its services


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, help="data directory of a synthetic world")
    parser.add_argument("--customers", type=int, default=3_000, help="world size without --data")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--decisions", type=int, default=200, help="in-process customers")
    parser.add_argument("--reads", type=int, default=5_000, help="online store reads")
    parser.add_argument("--keys", type=int, default=500, help="customer keys of the HTTP load")
    parser.add_argument("--seconds", type=float, default=12.0, help="length of each HTTP run")
    parser.add_argument("--rate", type=float, default=100.0, help="the fixed rate, requests/s")
    parser.add_argument("--rate-connections", type=int, default=8, help="at the fixed rate")
    parser.add_argument("--connections", type=int, default=4, help="closed loop, recommend")
    parser.add_argument("--event-connections", type=int, default=2, help="closed loop, events")
    parser.add_argument("--batch", type=int, default=100, help="events per POST /events")
    parser.add_argument("--trials", type=int, default=50, help="consent -> recommend trials")
    parser.add_argument("--view-rate", type=float, default=20.0, help="360 views/s, fixed rate")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, _terminate)

    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    source = ready_world(args.data, args.customers, args.seed)
    token = secrets.token_urlsafe(24)
    os.environ[TOKEN_VARIABLE] = token  # this process's runtime; the services get it too
    rng = np.random.default_rng(args.seed)
    run = f"bench-{secrets.token_hex(4)}"

    with ExitStack() as stack:
        scratch = Path(tempfile.mkdtemp(prefix="nba-serving-bench-"))
        stack.callback(shutil.rmtree, scratch, ignore_errors=True)
        world = scratch_copy(source.root, scratch)
        print(f"serving a copy of {source.root}: {world}")

        from serving.runtime import ServingRuntime

        runtime = ServingRuntime.open(world)
        try:
            keys = pick_keys(runtime, args.keys + 4 * args.trials, rng)
            load_keys, spare = keys[: args.keys], keys[args.keys :]
            print(f"in-process: {args.decisions} decisions, {args.reads:,} reads, stages")
            decisions = time_decisions(runtime, load_keys[: args.decisions])
            reads = time_reads(runtime.store, args.reads, rng)
            stages = profile_stages(runtime, load_keys[: args.decisions])
            trial_keys = consent_candidates(runtime, spare, args.trials)
            answer = real_answer(runtime, load_keys)
        finally:
            runtime.close()

        wrk = ensure_wrk()
        keys_file = scratch / "keys.txt"
        keys_file.write_text("".join(json.dumps(k) + "\n" for k in load_keys))
        answer_file = scratch / "answer.json"
        answer_file.write_text(answer)
        env = {**os.environ, TOKEN_VARIABLE: token}

        bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
        port = free_port()
        noop_cmd = [bentoml, "serve", "benchmarks.serving_noop:NoOp", "--host", "127.0.0.1"]
        noop_cmd += ["--port", str(port), "--working-dir", str(ROOT)]
        print(f"no-op service on 127.0.0.1:{port} (answer of {len(answer)} bytes)")
        noop_env = {**env, NOOP_RESPONSE_VARIABLE: str(answer_file)}
        with Service("no-op", noop_cmd, noop_env, port, scratch / "noop.log") as service:
            noop = drive_recommend(service, keys_file, args, env)

        port = free_port()
        real_cmd = [*nba_command(), "serve", "--data", str(world), "--port", str(port)]
        print(f"nba serve on 127.0.0.1:{port}")
        with Service("real", real_cmd, env, port, scratch / "real.log") as service:
            real = drive_recommend(service, keys_file, args, env)
            print("POST /customers (the 360 view)")
            views = drive_customers(service, keys_file, args, env)
            print(f"POST /events, then {len(trial_keys)} consent trials")
            events = run_wrk(
                f"{service.url}/events",
                "events.lua",
                [str(keys_file), str(args.batch), run],
                args.seconds,
                args.event_connections,
                env,
            )
            reflection = reflection_trials(service.url, token, trial_keys, run)
        on_redis = redis_figures(source.root, scratch, keys_file, args, env, rng)

    print_report(
        load,
        wrk,
        args,
        len(load_keys),
        decisions,
        reads,
        stages,
        noop,
        real,
        events,
        reflection,
        views,
        on_redis,
    )


if __name__ == "__main__":
    main()
