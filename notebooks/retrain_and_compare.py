# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Explore the features, retrain with other parameters, compare the runs in MLflow
#
# A data scientist's loop on a small synthetic world: look at the point-in-time features, train
# the bundle twice with different LightGBM settings, and compare both runs in the MLflow
# tracking store. Everything here is imported from the packages; nothing is defined twice.

# %%
import os
import tempfile
from pathlib import Path

import mlflow
import pandas as pd

from features.config import DataConfig
from features.ingest.contract import DataDir
from features.ingest.event_store import ingest, open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from features.synthetic.world import generate_world
from training.config import TrainingConfig
from training.datasets import event_time_range
from training.models import LGBMParams
from training.train import train

CUSTOMERS = int(os.environ.get("NBA_NOTEBOOK_CUSTOMERS", "4000"))
work = Path(tempfile.mkdtemp(prefix="nba-notebook-"))
data_dir = DataDir(work / "world")
generate_world(data_dir.root, customers=CUSTOMERS, days=365, seed=7, progress=False)
report = ingest(data_dir, DataConfig())
con = open_store(data_dir)
event_time_range(con)

# %% [markdown]
# ## The features
# One row per customer as of the end of the history, computed from events strictly before it.

# %%
fs = FeatureSet(DataConfig(), FeatureConfig())
engine = BatchEngine(fs, con, customers="customers")
snapshot = engine.snapshot(event_time_range(con)[1])
print(f"{len(snapshot):,} customers x {len(fs.names)} features")
snapshot[
    [
        "email_response_rate",
        "email_contact_count_30d",
        "all_purchase_days_since",
        "monetary_mean",
        "online_purchase_share",
        "preferred_hour",
    ]
].describe().T

# %%
# engagement by channel: who opens, clicks, visits
channels = DataConfig().channel_names
pd.DataFrame({c: snapshot[f"{c}_engagement_decayed_90d"].describe() for c in channels}).T[
    ["mean", "50%", "max"]
]

# %% [markdown]
# ## Two training runs with different settings

# %%
runs = {}
for name, params in {
    "shallow": LGBMParams(num_leaves=7, learning_rate=0.05, n_estimators=300),
    "deeper": LGBMParams(num_leaves=31, learning_rate=0.05, n_estimators=300),
}.items():
    cfg = TrainingConfig.model_validate({"models": {"params": params.model_dump()}})
    result = train(data_dir, DataConfig(), FeatureConfig(), cfg, con, say=lambda m: None)
    runs[name] = result
    print(name, "->", result.version, result.gate.reason)

# %% [markdown]
# ## Compare the runs in MLflow
# The tracking store is the embedded SQLite file under the data directory; the same query works
# against a tracking server (`MLFLOW_TRACKING_URI`).

# %%
experiment = mlflow.get_experiment_by_name("nba-purchase")
found = mlflow.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
cols = [
    "run_id",
    "params.num_leaves",
    "metrics.test_auc",
    "metrics.heuristic_test_auc",
    "metrics.oracle_test_auc",
    "metrics.test_ece",
]
found[[c for c in cols if c in found.columns]]

# %%
experiment = mlflow.get_experiment_by_name("nba-response")
found = mlflow.search_runs([experiment.experiment_id], order_by=["start_time ASC"])
found[[c for c in cols if c in found.columns]]

# %%
# which bundle version serves: the registry aliases
client = mlflow.MlflowClient()
{
    alias: client.get_model_version_by_alias("nba-bundle", alias).version
    for alias in ("champion", "challenger")
}
