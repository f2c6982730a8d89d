"""Model safety (issue #23, item 7): the service refuses to start without a champion or on an
online store computed with other feature definitions; a bundle whose files do not match the
SHA-256 recorded at registration is refused, not served; a bundle is not promoted over an
online store materialised with other definitions."""

from __future__ import annotations

import copy
import sqlite3
import tempfile
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import OnlineStore, definitions_fingerprint
from serving.runtime import ServingRuntime, StartupError
from training import registry
from training.bundle import BundlePyfunc, ModelBundle, pip_requirements
from training.model_safety import (
    CHECKSUM_TAG,
    DEFINITIONS_KEY,
    BundleRefused,
    files_checksum,
    load_verified,
    promotion_problem,
    record_checksum,
)

FS = FeatureSet(DataConfig(), FeatureConfig())
# other definitions with the same feature names: complaints no longer count as negative events
OTHER_CONFIG = "features:\n  negative_event_types: [unsubscribe]\n"
FS_OTHER = FeatureSet(DataConfig(), FeatureConfig(negative_event_types=["unsubscribe"]))


@pytest.fixture(autouse=True)
def token(monkeypatch):
    monkeypatch.setenv("NBA_API_TOKEN", "test-token")


def copy_online_store(source: DataDir, target: DataDir) -> None:
    """A consistent copy of a SQLite online store another test's service may be writing."""
    target.online_store.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(source.online_store) as src, sqlite3.connect(target.online_store) as dst:
        src.backup(dst)


def register(data_dir: DataDir, bundle: ModelBundle, checksum: bool = True) -> str:
    """Register `bundle` in `data_dir`'s embedded registry as train does, and make it champion."""
    tracking = registry.configure_tracking(data_dir.root)
    with (
        mlflow.start_run(experiment_id=registry.experiment("nba-bundle", tracking)),
        tempfile.TemporaryDirectory() as tmp,
    ):
        info = mlflow.pyfunc.log_model(
            name="bundle",
            python_model=BundlePyfunc(),
            artifacts={"bundle": str(bundle.save(Path(tmp)))},
            registered_model_name=registry.BUNDLE_MODEL_NAME,
            pip_requirements=pip_requirements(),
        )
    version = str(info.registered_model_version)
    if checksum:
        record_checksum(version)
    registry.set_alias(version, registry.CHAMPION)
    return version


@pytest.fixture
def world(tmp_path, online_world) -> DataDir:
    """A data directory with a copy of the online world's store and the same bundle registered."""
    dd = DataDir(tmp_path / "world")
    dd.root.mkdir()
    copy_online_store(online_world.data_dir, dd)
    register(dd, online_world.result.bundle)
    return dd


def test_train_records_the_checksum_and_the_definitions(trained_world):
    registry.configure_tracking(trained_world.data_dir.root)
    version = trained_world.result.version
    tags = MlflowClient().get_model_version(registry.BUNDLE_MODEL_NAME, version).tags
    local = mlflow.artifacts.download_artifacts(f"models:/{registry.BUNDLE_MODEL_NAME}/{version}")
    assert tags[CHECKSUM_TAG] == files_checksum(Path(local))
    assert trained_world.result.bundle.trained_on[DEFINITIONS_KEY] == definitions_fingerprint(FS)[0]


def test_a_registered_bundle_loads_and_serves(world, online_world):
    runtime = ServingRuntime.open(world.root)
    try:
        assert (
            runtime.policy.bundle.customer_features == online_world.result.bundle.customer_features
        )
    finally:
        runtime.close()


def test_a_changed_artifact_is_refused_not_served(world):
    (pickled,) = [p for p in (world.root / "mlflow").rglob("bundle.pkl")]
    with pickled.open("ab") as fh:
        fh.write(b"\0")  # one byte more: still loads as a pickle, but not what was registered
    with pytest.raises(StartupError, match=r"version 1 refused: its files' SHA-256 .* differs"):
        ServingRuntime.open(world.root)
    with pytest.raises(BundleRefused, match="train again or point the alias at another version"):
        load_verified("1")


def test_a_bundle_registered_without_a_checksum_is_refused(tmp_path, online_world):
    dd = DataDir(tmp_path / "old")
    dd.root.mkdir()
    copy_online_store(online_world.data_dir, dd)
    register(dd, online_world.result.bundle, checksum=False)
    with pytest.raises(StartupError, match="no recorded checksum .* train again"):
        ServingRuntime.open(dd.root)


def test_no_champion_is_one_line_and_exit_code_2(tmp_path, online_world):
    from typer.testing import CliRunner

    from serving.cli import app

    dd = DataDir(tmp_path / "nochampion")
    dd.root.mkdir()
    copy_online_store(online_world.data_dir, dd)
    with pytest.raises(StartupError, match="no model bundle has the alias `champion`"):
        ServingRuntime.open(dd.root)
    done = CliRunner().invoke(app, ["serve", "--data", str(dd.root), "--port", "1"])
    assert done.exit_code == 2, done.output
    assert done.stderr.strip().splitlines() == [
        "nba serve: no model bundle has the alias `champion` in nba-bundle: run `nba train` first"
    ]


def test_a_store_of_other_definitions_with_the_same_names_is_refused(tmp_path, online_world):
    """The store and the configuration agree, the bundle was trained on other definitions:
    the column names match, the fingerprint does not."""
    assert FS_OTHER.names == FS.names
    dd = DataDir(tmp_path / "other")
    dd.root.mkdir()
    with OnlineStore(dd.online_store, FS_OTHER) as store:
        store.materialize(online_world.con, as_of=online_world.end)
    register(dd, online_world.result.bundle)
    config = tmp_path / "other.yaml"
    config.write_text(OTHER_CONFIG)
    with pytest.raises(StartupError, match="trained with other feature definitions"):
        ServingRuntime.open(dd.root, config)


def test_a_promotion_onto_a_store_of_other_definitions_is_refused(tmp_path, world, online_world):
    bundle = online_world.result.bundle
    assert promotion_problem(world, FS, bundle, None) is None  # the store it was trained for
    refused = promotion_problem(world, FS_OTHER, bundle, None)
    assert "differ from those the online store" in refused and "--materialize" in refused
    lacking = copy.copy(bundle)
    lacking.customer_features = [*bundle.customer_features, "profile_shoe_size"]
    refused = promotion_problem(world, FS, lacking, None)
    assert "1 feature columns the online store" in refused and "profile_shoe_size" in refused
    empty = DataDir(tmp_path / "no-store")
    empty.root.mkdir()
    assert promotion_problem(empty, FS_OTHER, bundle, None) is None  # nothing serves yet


@pytest.mark.slow
def test_train_refuses_to_promote_onto_a_store_of_other_definitions(tmp_path):
    """The whole path, on a small world (about two minutes, so `slow`): train over a store
    materialised with other definitions registers a challenger only; after re-materialising
    with the training's definitions, the next run is champion."""
    from features.ingest.event_store import ingest, open_store
    from features.synthetic.world import generate_world
    from training.config import TrainingConfig
    from training.datasets import data_end
    from training.train import train

    dd = DataDir(tmp_path / "small")
    generate_world(dd.root, customers=400, days=200, seed=3, progress=False)
    ingest(dd, DataConfig(), progress=False)
    con = open_store(dd)
    with OnlineStore(dd.online_store, FS_OTHER) as store:
        store.materialize(con, as_of=data_end(con))
    result = train(dd, DataConfig(), FeatureConfig(), TrainingConfig(), con, say=lambda m: None)
    assert not result.gate.promoted
    assert "not promoted: its feature definitions differ" in result.gate.reason
    assert registry.alias_version(registry.CHAMPION) is None
    assert registry.alias_version(registry.CHALLENGER) == result.version
    with OnlineStore(dd.online_store, FS, reset=True) as store:
        store.materialize(con, as_of=data_end(con))
    again = train(dd, DataConfig(), FeatureConfig(), TrainingConfig(), con, say=lambda m: None)
    assert again.gate.promoted and registry.alias_version(registry.CHAMPION) == again.version
