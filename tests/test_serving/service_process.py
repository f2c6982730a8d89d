"""The real service as a user meets it: `nba serve` started as a process, called over HTTP."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil

NBA = str(Path(sys.executable).parent / "nba")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


def new_id() -> str:
    """A fresh event id, marked as a test's."""
    return f"test-{uuid.uuid4().hex}"


def recommend(svc: ServiceProcess, key: str, k: int = 20) -> dict:
    """POST /recommend for `key`, asked by the web channel; asserts a 200."""
    r = svc.post("/recommend", {"customer": key, "channel": "web", "k": k})
    assert r.status_code == 200, r.text
    return r.json()


def random_events(rng, keys: list[str], kinds: list[tuple[str, str]], n: int) -> list[dict]:
    """n fresh events now, each of a random (channel, event_type) of `kinds` for a random key
    of `keys`; purchases with an amount."""
    events = []
    for _ in range(n):
        channel, kind = kinds[rng.integers(len(kinds))]
        e = {
            "event_id": new_id(),
            "ts": now_iso(),
            "customer_key": keys[rng.integers(len(keys))],
            "channel": channel,
            "event_type": kind,
        }
        if kind == "purchase":
            e["amount"] = float(rng.uniform(5, 200))
        events.append(e)
    return events


def assert_same_features(online, batch, names: list[str]) -> None:
    """Online features equal the batch recomputation's, column by column (float tolerance)."""
    import numpy as np

    for name in names:
        np.testing.assert_allclose(
            online[name].to_numpy(dtype=float),
            batch[name].to_numpy(dtype=float),
            rtol=1e-6,
            atol=1e-6,
            err_msg=name,
        )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServiceProcess:
    """A running `nba serve`: its URL, token and process (its own session, for kill -9)."""

    url: str
    token: str
    process: subprocess.Popen
    log: Path

    def post(self, path: str, body: dict | None = None, token: str | None = "", **kw):
        headers = kw.pop("headers", {})
        given = self.token if token == "" else token
        if given is not None:
            headers["Authorization"] = f"Bearer {given}"
        return httpx.post(self.url + path, json=body, headers=headers, timeout=60, **kw)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=30)

    def _workers(self) -> list[psutil.Process]:
        """The processes the service started: BentoML's workers run in process groups of
        their own, so a signal to the service's group does not reach them."""
        try:
            return psutil.Process(self.process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def _end_workers(self, workers: list[psutil.Process]) -> None:
        for w in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                w.kill()
        psutil.wait_procs(workers, timeout=30)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Kill the whole service (its workers too) and wait for it."""
        workers = self._workers()
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
        self.process.wait(timeout=60)
        self._end_workers(workers)

    def stop(self) -> None:
        workers = self._workers()
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        self._end_workers(workers)


def start_service(
    data: Path,
    token: str = "test-token",
    config: Path | None = None,
    port: int | None = None,
    timeout: float = 180,
) -> ServiceProcess:
    """Start `nba serve` on `data` and wait until /readyz answers 200."""
    port = port or free_port()
    log = Path(data) / f"service-{port}.log"
    env = {**os.environ, "NBA_API_TOKEN": token} if token else dict(os.environ)
    if not token:
        env.pop("NBA_API_TOKEN", None)
    # an in-process test that opened a registry exported it (mlflow.set_tracking_uri): the
    # service must use the data directory's own, as a user's `nba serve` does
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        env.pop(name, None)
    cmd = [NBA, "serve", "--data", str(data), "--port", str(port)]
    if config is not None:
        cmd += ["--config", str(config)]
    return start_process(cmd, env, port, token, log, timeout)


def start_process(
    cmd: list[str], env: dict[str, str], port: int, token: str, log: Path, timeout: float = 180
) -> ServiceProcess:
    """Start a service command line listening on `port`; wait until /readyz answers 200."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    svc = ServiceProcess(f"http://127.0.0.1:{port}", token, process, log)
    name = " ".join(Path(c).name for c in cmd[:2])
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(svc.url + "/readyz", timeout=2).status_code == 200:
                return svc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    svc.kill()
    raise RuntimeError(f"{name} not ready after {timeout} s:\n{log.read_text()}")
