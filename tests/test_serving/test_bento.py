"""The Bento as a deployment meets it: `nba bento` saves the champion bundle into a BentoML
model store, `bentoml build` packs it with the service, `bentoml serve <tag>` serves it over a
data directory that holds only runtime state (no MLflow registry), called over HTTP."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from service_process import free_port, start_process

from serving.runtime import ServingRuntime, StartupError

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
TOKEN = "bento-test-token"
NOT_IN_SERVICE = {"pytest"}  # a runtime dependency of the package the service never imports
PINNED_BY_BENTOML = {"bentoml"}  # `bentoml build` adds the running version itself


def _name(requirement: str) -> str:
    return Requirement(requirement).name.lower().replace("_", "-")


def test_bentofile_pins_the_runtime_dependencies_at_the_constraints_versions():
    bentofile = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    pins = {_name(p): str(Requirement(p).specifier) for p in bentofile["python"]["packages"]}
    constraints = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if re.match(r"^[A-Za-z0-9]", line):
            constraints[_name(line.split(";")[0].strip())] = line.split("==")[1].split()[0]
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    runtime = {_name(r) for r in project["dependencies"]} - NOT_IN_SERVICE - PINNED_BY_BENTOML
    assert runtime <= set(pins), f"not in bentofile.yaml: {sorted(runtime - set(pins))}"
    assert {n: s for n, s in pins.items()} == {n: f"=={constraints[n]}" for n in pins}


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "True"}
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # the data dir's own registry
        env.pop(name, None)
    return env


def _run(cmd: list[str], env: dict[str, str], cwd: Path = ROOT) -> str:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{cmd}: {done.stdout}\n{done.stderr}"
    return done.stdout


def _runtime_state(world: Path, to: Path) -> Path:
    """A copy of the data directory without its MLflow registry: what a replica mounts."""
    shutil.copytree(world, to, ignore=shutil.ignore_patterns("mlflow", "service-*.log"))
    return to


def test_the_built_bento_serves_recommend_with_the_bundle_it_carries(
    online_world, tmp_path, monkeypatch
):
    home = tmp_path / "bentoml"
    env = _env(home)
    world = online_world.data_dir.root
    saved = _run([str(BIN / "nba"), "bento", "--data", str(world)], env)
    model_tag = re.search(r"saved (nba-bundle:\S+)", saved).group(1)

    out = _run([str(BIN / "bentoml"), "build", "--output", "tag"], env)
    bento_tag = re.search(r"__tag__:(\S+)", out).group(1)
    assert bento_tag.startswith("nba:")
    info = json.loads(_run([str(BIN / "bentoml"), "get", bento_tag, "-o", "json"], env))
    assert [m["tag"] for m in info["models"]] == [model_tag]
    src = home / "bentos" / Path(*bento_tag.split(":")) / "src"
    for path in ("serving/service.py", "serving/catalogue.yaml", "training/bundle.py"):
        assert (src / path).is_file(), path
    assert not (src / "tests").exists() and not list(src.rglob("*.sqlite*"))
    requirements = (src.parent / "env/python/requirements.txt").read_text().split()
    assert f"bentoml=={version('bentoml')}" in requirements

    data = _runtime_state(world, tmp_path / "data")
    monkeypatch.setenv("NBA_API_TOKEN", TOKEN)
    with pytest.raises(StartupError, match="no model bundle"):  # the registry is not there
        ServingRuntime.open(data).close()
    port = free_port()
    cmd = [str(BIN / "bentoml"), "serve", bento_tag, "--port", str(port)]
    serve_env = {**env, "NBA_DATA": str(data), "NBA_API_TOKEN": TOKEN}
    svc = start_process(cmd, serve_env, port, TOKEN, tmp_path / "bento-serve.log", timeout=120)
    try:
        key = online_world.con.execute(
            "SELECT min(identifier) FROM identity WHERE identifier LIKE 'email:%'"
        ).fetchone()[0]
        r = svc.post("/recommend", {"customer": key, "channel": "web", "k": 3})
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model_version"] == online_world.result.version
        assert answer["customer"]["known"] and answer["customer"]["key"] == key
        assert 1 <= len(answer["actions"]) <= 3
        assert [a for a in answer["actions"] if a["chosen"]][0]["action_id"] == answer["action_id"]
        scores = [a["score"] for a in answer["actions"]]
        assert scores == sorted(scores, reverse=True)
        assert answer["policy_version"].startswith("policy-")
    finally:
        svc.stop()
