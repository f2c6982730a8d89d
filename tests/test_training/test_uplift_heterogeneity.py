"""The effect model finds who a contact persuades when the data can show it.

On the default world it cannot: a 10% holdout and effects of a fraction of a point leave any
feature's effect within its noise (benchmarks/uplift_learners.py measures it). Here the world's
effects are eight times stronger and half of the chosen persons are held out, so persuadables
and sleeping dogs differ by many standard errors, and the R-learner must rank them apart.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from features.config import DataConfig
from features.ingest.contract import ACTION_ID, CHANNEL, CUSTOMER_ID, DataDir
from features.ingest.event_store import ingest, open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from features.synthetic.params import WorldParams
from features.synthetic.world import generate_world
from training.config import TrainingConfig
from training.datasets import PURCHASED, TREATED
from training.models import UpliftRLearner
from training.oracle import load_truth, uplift_types
from training.train import build_training_data

STRENGTH = 8.0  # the default world's effects times this
# AUC of persuadables over sleeping dogs within an action on the test slice, measured on seeds
# 0-4 of this world (test_auc_spread_between_seeds): 0.692, 0.689, 0.673, 0.722, 0.690 (mean
# 0.693, sd 0.018). The bound sits 3 sd below the lowest; an effect model without
# heterogeneity scores 0.5 (each action's mean effect alone ranks nobody within the action).
MIN_AUC = 0.62


def strong_effects(strength: float, holdout_share: float) -> WorldParams:
    p = WorldParams()
    return replace(
        p,
        uplift_scale={c: v * strength for c, v in p.uplift_scale.items()},
        intrusiveness={c: v * strength for c, v in p.intrusiveness.items()},
        holdout_share=holdout_share,
    )


def persuadable_auc(root, seed: int) -> float:
    """Fit the R-learner on a strong world's contacts; the AUC of persuadables over sleeping
    dogs among its test-slice predictions for the same action, averaged over the actions."""
    generate_world(
        root, customers=3000, seed=seed, params=strong_effects(STRENGTH, 0.5), progress=False
    )
    data_dir = DataDir(root)
    ingest(data_dir, DataConfig())
    con = open_store(data_dir)
    engine = BatchEngine(FeatureSet(DataConfig(), FeatureConfig()), con, customers="customers")
    td = build_training_data(con, engine, DataConfig(), TrainingConfig(), say=lambda _: None)
    cols = [*td.customer_features, CHANNEL, ACTION_ID]
    tr, ca, te = td.contacts.train, td.contacts.calibration, td.contacts.test
    model = UpliftRLearner(TrainingConfig().models.params).fit(
        tr[cols], tr[TREATED].to_numpy(), tr[PURCHASED].to_numpy(),
        ca[cols], ca[TREATED].to_numpy(), ca[PURCHASED].to_numpy(),
    )  # fmt: skip
    types = uplift_types(load_truth(data_dir, con), te[CUSTOMER_ID])
    pred = model.predict_uplift(te[cols])
    # within each action: its mean effect alone separates nobody, only the effect model can
    actions = te[ACTION_ID].to_numpy(str)
    aucs = []
    for action in np.unique(actions):
        rows = (actions == action) & np.isin(types, ["persuadable", "sleeping_dog"])
        if len(np.unique(types[rows])) == 2:
            aucs.append(roc_auc_score(types[rows] == "persuadable", pred[rows]))
    return float(np.mean(aucs))


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_auc_spread_between_seeds(tmp_path, seed):
    """The measurement behind MIN_AUC (slow: run with -m slow -s to see the five values)."""
    auc = persuadable_auc(tmp_path / "world", seed)
    print(f"seed {seed}: AUC {auc:.3f}")
    assert auc > MIN_AUC


def test_effect_model_ranks_persuadables_above_sleeping_dogs(tmp_path):
    assert persuadable_auc(tmp_path / "world", seed=0) > MIN_AUC
