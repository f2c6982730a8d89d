"""The served bundle: the four models versioned together, and its MLflow pyfunc wrapper.

Whatever serves loads one bundle by registry alias, so the response, purchase, value and uplift
models that decide together were trained and evaluated together.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd

from training.encoding import FrameArrays, column_values
from training.models import (
    CalibratedClassifier,
    UpliftRLearner,
    UpliftSLearner,
    ValueRegressor,
)

CHANNEL_FEATURE = "channel"
ACTION_FEATURE = "action_id"
BUNDLE_FILE = "bundle.pkl"
OUTPUTS = ["p_response", "p_purchase", "expected_value", "p_purchase_treated", "p_purchase_control"]
# What unpickling a logged model imports: this package's classes and the libraries they hold.
MODEL_PACKAGES = (
    "omnichannel-nba",
    "lightgbm",
    "scikit-learn",
    "pandas",
    "numpy",
    "scipy",
    "lifetimes",
    "cloudpickle",
    "mlflow",
)


@dataclass
class ModelBundle:
    """Response, purchase, value and uplift models, with what each one was trained on.

    Any model may be None when the data could not support it; `skipped` says why.
    """

    response: CalibratedClassifier | dict[str, CalibratedClassifier] | None
    purchase: CalibratedClassifier | None
    value: ValueRegressor | None
    uplift: UpliftRLearner | UpliftSLearner | None
    customer_features: list[str]
    trained_on: dict = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    response_choice: dict | None = None  # pooled vs per-channel log loss when measured

    def response_probability(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        """P(response) per row (customer features + channel + action_id); NaN without a model."""
        if self.response is None:
            return np.full(len(X), np.nan)
        if isinstance(self.response, dict):  # one model per channel
            out = np.full(len(X), np.nan)
            channels = column_values(X, CHANNEL_FEATURE)
            for channel, model in self.response.items():
                rows = np.flatnonzero(channels == channel)
                if len(rows):
                    out[rows] = model.predict_proba(X.take(rows))
            return out
        return self.response.predict_proba(X)

    def response_model_for(self, channel: str) -> CalibratedClassifier | None:
        if isinstance(self.response, dict):
            return self.response.get(channel)
        return self.response

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Per row (customer features + channel + action_id): every quantity a decision needs."""
        n = len(frame)
        nan = np.full(n, np.nan)
        p1, p0 = self.uplift.predict_outcomes(frame) if self.uplift is not None else (nan, nan)
        return pd.DataFrame(
            {
                "p_response": self.response_probability(frame),
                "p_purchase": self.purchase.predict_proba(frame) if self.purchase else nan,
                "expected_value": self.value.predict(frame) if self.value else nan,
                "p_purchase_treated": p1,
                "p_purchase_control": p0,
            },
            index=frame.index,
        )

    def save(self, directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / BUNDLE_FILE
        with path.open("wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    @staticmethod
    def load(path: Path) -> ModelBundle:
        with Path(path).open("rb") as fh:
            bundle = pickle.load(fh)
        if not isinstance(bundle, ModelBundle):
            raise TypeError(f"{path} does not hold a ModelBundle")
        return bundle


def pip_requirements() -> list[str]:
    """The logged models' environment, pinned to the versions they were trained with.

    Stated rather than left to MLflow's inference, which loads each model in a subprocess
    (about half of a small training run's time) and, on these models, left out lightgbm.
    """
    pinned = []
    for name in MODEL_PACKAGES:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # a source checkout run without installing the package
            pinned.append(name)
    return pinned


class BundlePyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc face of the bundle: `predict(frame)` returns the OUTPUTS columns."""

    def load_context(self, context) -> None:
        self.bundle = ModelBundle.load(Path(context.artifacts["bundle"]))

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return self.bundle.predict(model_input)


class FamilyPyfunc(mlflow.pyfunc.PythonModel):
    """MLflow pyfunc face of one family's model, on the raw feature frame it was trained on."""

    def __init__(self, model) -> None:
        self.model = model

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        if hasattr(self.model, "predict_uplift"):
            return self.model.predict_uplift(model_input)
        if hasattr(self.model, "predict_proba"):
            return self.model.predict_proba(model_input)
        return self.model.predict(model_input)
