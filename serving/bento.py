"""The model bundle inside a Bento: saved from the MLflow registry into BentoML's model store,
loaded from there when the service runs from a built Bento.

`nba bento --data DIR` saves the bundle behind a registry alias (champion by default) as the
BentoML model `nba-bundle`, with its registry version and run in the model's metadata;
`bentoml build` (bentofile.yaml) then packs the newest `nba-bundle` with the service. Started
from the Bento (`bentoml serve nba:<version>`, or its container), the service reads its bundle
from that model and never asks MLflow; the online store and the event log stay outside, in the
data directory NBA_DATA names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import bentoml

from training.bundle import BUNDLE_FILE, ModelBundle

MODEL_NAME = "nba-bundle"  # the BentoML model; bentofile.yaml packs `nba-bundle:latest`
TRAINED_ON_FILE = "trained_on.json"


@dataclass(frozen=True)
class PackedBundle:
    """A bundle with the registry version it was saved from, as the service serves it."""

    bundle: ModelBundle
    version: str
    tag: str  # the BentoML model's tag


def save_bundle(data_dir: Path, alias: str = "champion") -> bentoml.Model:
    """Save the bundle registered under `alias` into BentoML's model store (BENTOML_HOME)."""
    from mlflow import MlflowClient

    from training import registry
    from training.model_safety import load_verified

    tracking = registry.configure_tracking(data_dir)
    version = registry.alias_version(alias)
    if version is None:
        raise LookupError(
            f"no model bundle has the alias `{alias}` in {registry.BUNDLE_MODEL_NAME}: run "
            "`nba train` first"
        )
    bundle = load_verified(version)  # the registered files, checked against their SHA-256
    registered = MlflowClient().get_model_version(registry.BUNDLE_MODEL_NAME, version)
    labels = {"registry_version": version, "registry_alias": alias}
    metadata = {
        "model_version": version,
        "registry_model": registry.BUNDLE_MODEL_NAME,
        "registry_alias": alias,
        "mlflow_run_id": registered.run_id or "",
        "tracking_uri": tracking.uri,
        "customer_features": len(bundle.customer_features),
        "families": ",".join(_families(bundle)),
        "skipped": json.dumps(bundle.skipped),
    }
    with bentoml.models.create(MODEL_NAME, labels=labels, metadata=metadata) as model:
        bundle.save(Path(model.path))
        Path(model.path, TRAINED_ON_FILE).write_text(
            json.dumps(bundle.trained_on, default=str, indent=1)
        )
    return model


def load_bundle(tag: str) -> PackedBundle:
    """The bundle of BentoML model `tag`, with the registry version saved beside it."""
    model = bentoml.models.get(tag)
    bundle = ModelBundle.load(Path(model.path_of(BUNDLE_FILE)))
    return PackedBundle(bundle, str(model.info.metadata["model_version"]), str(model.tag))


def bento_bundle(bento) -> PackedBundle | None:
    """The bundle packed in `bento` (the service's `.bento`), or None when not run from one."""
    if bento is None:
        return None
    tags = [str(m.tag) for m in bento.info.all_models if m.tag.name == MODEL_NAME]
    if len(tags) != 1:
        raise LookupError(f"the Bento {bento.tag} holds {len(tags)} {MODEL_NAME} models, not 1")
    return load_bundle(tags[0])


def _families(bundle: ModelBundle) -> list[str]:
    names = ("response", "purchase", "value", "uplift")
    return [name for name in names if getattr(bundle, name) is not None]
