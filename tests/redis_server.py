"""Debian's redis-server as the tests meet it: a real process on a free loopback port, its
append-only file in a directory of the test's, killed with SIGKILL and started again on it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """Debian's redis-server, installed here if missing (the tests run as root in CI)."""
    if not shutil.which("redis-server") and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        cmd = ["apt-get", "install", "-y", "-q", "redis-server"]
        if subprocess.run(cmd, capture_output=True, env=env).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
            subprocess.run(cmd, capture_output=True, env=env)
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("the Redis tests need Debian's redis-server (apt-get install)")
    return binary


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class RedisServer:
    """A redis-server with AOF on (`appendfsync` as given), persisting in `dir`."""

    dir: Path
    appendfsync: str = "always"
    port: int = field(default_factory=_free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 30) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            redis_server_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        log = open(self.dir / "redis.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout
        while True:
            try:
                client.ping()
                break
            except redis.BusyLoadingError:
                pass
            except redis.ConnectionError:
                if self.process.poll() is not None:
                    raise RuntimeError(
                        f"redis-server exited: see {self.dir / 'redis.log'}"
                    ) from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer in {timeout} s")
            time.sleep(0.05)
        client.close()
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown, no final fsync; what survives is what the AOF already held."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
