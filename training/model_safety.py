"""Model safety: a registered bundle is served only as registered, and only onto its features.

Registering records a SHA-256 of the bundle model's files as a model-version tag; loading for
serving downloads the files, checks them against the tag and refuses a bundle whose files
changed (or that carries no checksum) instead of serving it. A bundle records the fingerprint of
the feature definitions it was trained with; it is made champion only when the online store (if
one exists) was materialised with the same definitions and holds every column it needs, since
the service would otherwise refuse to start on it.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from features.config import OnlineStoreConfig
from features.errors import UserError
from features.ingest.contract import DataDir
from features.store.definitions import FeatureSet
from features.store.online_store import (
    DefinitionMismatch,
    OnlineStoreBase,
    definitions_fingerprint,
    online_store_exists,
    online_store_location,
    open_online_store,
)
from training import registry
from training.bundle import ModelBundle

CHECKSUM_TAG = "bundle_sha256"
DEFINITIONS_KEY = "definitions_fingerprint"  # in ModelBundle.trained_on
_CHUNK = 1 << 20


class BundleRefused(UserError, LookupError):
    """A registered bundle that must not be served: its files are not the ones registered."""


def files_checksum(directory: Path) -> str:
    """SHA-256 over every file under `directory`: relative path and contents, in path order."""
    digest = hashlib.sha256()
    root = Path(directory)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as fh:
            while chunk := fh.read(_CHUNK):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def _version_uri(version: str, name: str) -> str:
    return f"models:/{name}/{version}"


def record_checksum(version: str, name: str = registry.BUNDLE_MODEL_NAME) -> str:
    """Tag model version `version` with the SHA-256 of its files as stored; returns it."""
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(_version_uri(version, name), dst_path=tmp)
        checksum = files_checksum(Path(local))
    MlflowClient().set_model_version_tag(name, version, CHECKSUM_TAG, checksum)
    return checksum


def load_verified(version: str, name: str = registry.BUNDLE_MODEL_NAME) -> ModelBundle:
    """The bundle of model version `version`, loaded from files whose SHA-256 matches the one
    recorded at registration; BundleRefused otherwise."""
    expected = MlflowClient().get_model_version(name, version).tags.get(CHECKSUM_TAG)
    if not expected:
        raise BundleRefused(
            f"{name} version {version} has no recorded checksum ({CHECKSUM_TAG} tag): it was "
            "registered by an older `nba train`; train again to register a verifiable bundle"
        )
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(mlflow.artifacts.download_artifacts(_version_uri(version, name), dst_path=tmp))
        actual = files_checksum(local)
        if actual != expected:
            raise BundleRefused(
                f"{name} version {version} refused: its files' SHA-256 {actual[:16]}... differs "
                f"from the {expected[:16]}... recorded when it was registered (the artifact was "
                "changed or corrupted); train again or point the alias at another version"
            )
        loaded = mlflow.pyfunc.load_model(str(local))
    return loaded.unwrap_python_model().bundle


def missing_features(bundle: ModelBundle, store: OnlineStoreBase) -> list[str]:
    """The bundle's customer feature columns that `store` holds neither as a feature nor as a
    profile column, in the bundle's order."""
    known = set(store.fs.names) | set(store.profile_names)
    return [c for c in bundle.customer_features if c not in known]


def definitions_problem(bundle: ModelBundle, fs: FeatureSet, where: str) -> str | None:
    """Why `bundle` cannot run on features computed with `fs` (stored at `where`), or None.
    A bundle from before the fingerprint was recorded is judged by its column names alone."""
    recorded = bundle.trained_on.get(DEFINITIONS_KEY)
    current = definitions_fingerprint(fs)[0]
    if recorded is not None and recorded != current:
        return (
            f"the bundle was trained with other feature definitions (fingerprint {recorded[:12]}) "
            f"than the online store {where} holds ({current[:12]})"
        )
    return None


def promotion_problem(
    data_dir: DataDir, fs: FeatureSet, bundle: ModelBundle, online: OnlineStoreConfig | None
) -> str | None:
    """Why `bundle` must not become champion over the configured online store, or None: the
    store exists but was materialised with other definitions or lacks a column it needs."""
    if not online_store_exists(data_dir, online):
        return None  # nothing serves yet: the store is materialised with these definitions later
    where = online_store_location(data_dir, online)
    fix = "re-materialise it (`nba features --materialize`) and train again"
    try:
        store = open_online_store(data_dir, fs, online)
    except DefinitionMismatch:
        return (
            f"its feature definitions differ from those the online store {where} was "
            f"materialised with: {fix}"
        )
    try:
        missing = missing_features(bundle, store)
    finally:
        store.close()
    if missing:
        return (
            f"it needs {len(missing)} feature columns the online store {where} does not hold "
            f"(e.g. {', '.join(missing[:5])}): {fix}"
        )
    return definitions_problem(bundle, fs, where)
