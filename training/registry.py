"""MLflow tracking and model registry: where runs go, registering the bundle, aliases, the gate.

Embedded default: a SQLite tracking store and a local artifact folder under DATA/mlflow. Set
MLFLOW_TRACKING_URI (and optionally MLFLOW_REGISTRY_URI) to use a tracking server instead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

BUNDLE_MODEL_NAME = "nba-bundle"
CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True)
class Tracking:
    """Resolved tracking location; `artifact_root` is None when a server decides it."""

    uri: str
    artifact_root: Path | None


# mlflow.set_tracking_uri also exports MLFLOW_TRACKING_URI: remember which values were ours so
# that a second data directory in the same process is not mistaken for the user's server
_EMBEDDED_URIS: set[str] = set()


def _quiet_when_asked() -> None:
    """With MLFLOW_LOGGING_LEVEL at ERROR or above (the `nba` command line sets it unless
    `--debug`), also silence what MLflow prints past its logging level: "Successfully
    registered model", "Created version", artifact download bars."""
    if os.environ.get("MLFLOW_LOGGING_LEVEL", "").upper() in ("ERROR", "CRITICAL"):
        from mlflow.utils.logging_utils import disable_logging

        disable_logging()
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def configure_tracking(data_dir: Path) -> Tracking:
    """Point MLflow at the environment's server, or at the embedded store under DATA/mlflow."""
    _quiet_when_asked()
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri and uri not in _EMBEDDED_URIS:
        mlflow.set_tracking_uri(uri)
        return Tracking(uri, None)
    root = Path(data_dir).resolve() / "mlflow"
    root.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    _EMBEDDED_URIS.add(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return Tracking(uri, root / "artifacts")


def experiment(name: str, tracking: Tracking) -> str:
    """The id of experiment `name`, created with a local artifact location if embedded."""
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = None
    if tracking.artifact_root is not None:
        location = (tracking.artifact_root / name).as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def alias_version(alias: str, name: str = BUNDLE_MODEL_NAME) -> str | None:
    """The registered version behind an alias, or None if the alias is not set."""
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def set_alias(version: str, alias: str, name: str = BUNDLE_MODEL_NAME) -> None:
    MlflowClient().set_registered_model_alias(name, alias, version)


def model_uri(alias: str, name: str = BUNDLE_MODEL_NAME) -> str:
    return f"models:/{name}@{alias}"


@dataclass(frozen=True)
class GateDecision:
    promoted: bool
    reason: str
    new_score: float
    champion_score: float | None


def promotion_gate(new_score: float, champion_score: float | None, margin: float) -> GateDecision:
    """Champion only if there is none yet or the new bundle beats it by `margin` (same window)."""
    if champion_score is None:
        return GateDecision(True, "no champion yet", new_score, None)
    if new_score >= champion_score + margin:
        return GateDecision(
            True,
            f"score {new_score:.4f} beats champion {champion_score:.4f} by >= {margin}",
            new_score,
            champion_score,
        )
    return GateDecision(
        False,
        f"score {new_score:.4f} does not beat champion {champion_score:.4f} by {margin}: "
        "kept as challenger",
        new_score,
        champion_score,
    )
