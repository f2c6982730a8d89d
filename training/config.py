"""The `training` section of the configuration file: label windows and training-set shapes."""

from __future__ import annotations

from pydantic import Field

from features.config import Strict, load_section


class LabelConfig(Strict):
    """What a label means: which window after the decision time it looks at."""

    attribution_window_days: float = Field(
        default=3.0,
        gt=0,
        description="A response on the contact's channel within (t, t + this] is credited to it.",
    )
    purchase_horizon_days: float = Field(
        default=7.0,
        gt=0,
        description="Purchase labels look at (t, t + this] after the contact or snapshot time.",
    )
    snapshot_every_days: int = Field(
        default=30, ge=1, description="Spacing of the snapshots of the purchase training set."
    )
    max_snapshots: int = Field(default=12, ge=1, description="Most recent snapshots kept.")


class TrainingConfig(Strict):
    labels: LabelConfig = Field(default_factory=LabelConfig)


def load_training_config(path) -> TrainingConfig:
    return load_section(path, "training", TrainingConfig)
