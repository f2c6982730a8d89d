"""Which uplift learner finds who a contact persuades: measured against a world's true effect.

    python -m benchmarks.uplift_learners --worlds 5            # fresh worlds, seeds 0-4
    python -m benchmarks.uplift_learners --data DIR --data DIR  # existing synthetic worlds

Per world: the contacts training set `nba train` builds (same features, labels and time split),
each learner fitted on its train and later slices, and judged on the test slice against the
true uplift of every contact (truth/contacts):
  R-learner        the product's (training/models.py, default settings)
  DR-learner       doubly robust pseudo-outcomes with the randomised holdout's known share per
                   channel (no propensity model), T-learner nuisances cross-fitted in 3 folds,
                   LightGBM with large leaves on the pseudo-outcome, early-stopped on the later
                   slice
  linear R-learner the R-loss with each action's own effect plus one linear effect of every
                   feature (rank-normalised) shared by all actions, ridge penalty chosen by the
                   later slice's R-loss
  taught by truth  LightGBM regression of the true effect on the same features: no learner of
                   these features can rank better
Columns: Spearman correlation with the true uplift, AUC of persuadables over sleeping dogs, the
Qini and AUUC, fit time. Then the data's power: the largest t-statistic of any one feature's
linear effect on the train slice (noise alone gives about 3 for this many features), and
n_eff x var(truth-taught effect) / var(outcome), the signal any learner could extract, in units
of one standard error (below ~10 a learner cannot confirm heterogeneity on a later slice).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import KFold
from sklearn.preprocessing import QuantileTransformer

from benchmarks.world import prepared_world
from features.config import DataConfig
from features.ingest.contract import ACTION_ID, CHANNEL, CUSTOMER_ID, DataDir
from features.ingest.event_store import open_store
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from training.config import TrainingConfig
from training.datasets import PURCHASED, TREATED
from training.encoding import FrameEncoder
from training.metrics import auuc, qini_coefficient
from training.models import LGBMParams, UpliftRLearner
from training.oracle import contact_oracle, load_truth, uplift_types
from training.train import build_training_data

RIDGE_PENALTIES = (1e2, 1e3, 1e4, 1e5, 1e6)


def contact_sets(data_dir: DataDir) -> dict:
    """The train, later and test slices of `nba train`'s contacts, with truth per test row."""
    con = open_store(data_dir)
    data_cfg = DataConfig()
    engine = BatchEngine(FeatureSet(data_cfg, FeatureConfig()), con, customers="customers")
    td = build_training_data(con, engine, data_cfg, TrainingConfig(), say=lambda _: None)
    truth = load_truth(data_dir, con)
    sets = {"columns": [*td.customer_features, CHANNEL, ACTION_ID]}
    for name in ("train", "calibration", "test"):
        frame = getattr(td.contacts, name).reset_index(drop=True)
        sets[name] = frame
        sets[f"{name}_uplift"] = contact_oracle(truth, frame["event_id"])["uplift"].to_numpy()
        sets[f"{name}_type"] = uplift_types(truth, frame[CUSTOMER_ID])
    return sets


def scores(pred: np.ndarray, sets: dict) -> dict[str, float]:
    test, true = sets["test"], sets["test_uplift"]
    y, t = test[PURCHASED].to_numpy(int), test[TREATED].to_numpy(bool)
    types = sets["test_type"]
    pair = np.isin(types, ["persuadable", "sleeping_dog"])
    return {
        "spearman": float(stats.spearmanr(pred, true).statistic),
        "auc_p_over_d": float(roc_auc_score(types[pair] == "persuadable", pred[pair])),
        "qini": qini_coefficient(y, t, pred),
        "auuc": auuc(y, t, pred),
    }


class Slices:
    """Train + later slice stacked, with the treated share per channel and the encodings."""

    def __init__(self, sets: dict) -> None:
        tr, ca, te = sets["train"], sets["calibration"], sets["test"]
        cols = sets["columns"]
        both = pd.concat([tr, ca], ignore_index=True)
        self.n = len(tr)
        self.t = both[TREATED].to_numpy(float)
        self.y = both[PURCHASED].to_numpy(float)
        share = both.groupby(CHANNEL, observed=True)[TREATED].mean()
        self.e = both[CHANNEL].map(share).to_numpy(float)
        encoder = FrameEncoder().fit(both[cols])
        self.X, self.X_test = encoder.transform(both[cols]), encoder.transform(te[cols])
        self.Z, self.Z_test = _linear_design(both, te, sets["columns"][:-2], self.n)
        acts = np.array(sorted(both[ACTION_ID].astype(str).unique()))
        self.A = (both[ACTION_ID].to_numpy(str)[:, None] == acts).astype(float)
        self.A_test = (te[ACTION_ID].to_numpy(str)[:, None] == acts).astype(float)
        self.rt, self.ry = _r_residuals(self)


def _linear_design(
    both: pd.DataFrame, test: pd.DataFrame, features: list[str], n_train: int
) -> tuple[np.ndarray, np.ndarray]:
    """Numeric features rank-normalised (missing -> 0), categories one-hot, all standardised."""
    numeric = [c for c in features if pd.api.types.is_numeric_dtype(both[c])]
    dates = [c for c in features if pd.api.types.is_datetime64_any_dtype(both[c])]
    categories = [c for c in features if c not in numeric and c not in dates]
    qt = QuantileTransformer(n_quantiles=200, output_distribution="normal", random_state=0)

    def numbers(frame: pd.DataFrame) -> np.ndarray:
        days = [(frame[c] - pd.Timestamp(0, tz=frame[c].dt.tz)).dt.days for c in dates]
        return np.column_stack([frame[numeric].to_numpy(float), *days]).astype(float)

    qt.fit(numbers(both.iloc[:n_train]))
    levels = {c: np.unique(both[c].to_numpy(str))[1:] for c in categories}

    def design(frame: pd.DataFrame) -> np.ndarray:
        z = np.nan_to_num(qt.transform(numbers(frame)))
        onehot = [(frame[c].to_numpy(str)[:, None] == lv).astype(float) for c, lv in levels.items()]
        return np.hstack([z, *onehot]).astype(np.float32)

    Z, Z_test = design(both), design(test)
    mean, sd = Z[:n_train].mean(0), Z[:n_train].std(0) + 1e-9
    return (Z - mean) / sd, (Z_test - mean) / sd


def r_learner(sets: dict, s: Slices) -> np.ndarray:
    tr, ca, cols = sets["train"], sets["calibration"], sets["columns"]
    model = UpliftRLearner(LGBMParams()).fit(
        tr[cols], tr[TREATED].to_numpy(), tr[PURCHASED].to_numpy(),
        ca[cols], ca[TREATED].to_numpy(), ca[PURCHASED].to_numpy(),
    )  # fmt: skip
    return model.predict_uplift(sets["test"][cols])


def dr_learner(sets: dict, s: Slices) -> np.ndarray:
    mu1, mu0 = (_out_of_fold(s.X, s.y, s.t == arm) for arm in (1.0, 0.0))
    # DR pseudo-outcome: its mean given x is the effect whatever the nuisances' errors
    psi = mu1 - mu0 + s.t * (s.y - mu1) / s.e - (1 - s.t) * (s.y - mu0) / (1 - s.e)
    n = s.n
    final = lgb.LGBMRegressor(
        n_estimators=2000, learning_rate=0.02, num_leaves=4, min_child_samples=20_000,
        reg_lambda=50, subsample=0.8, subsample_freq=1, colsample_bytree=0.5, verbose=-1,
    )  # fmt: skip
    final.fit(
        s.X.iloc[:n], psi[:n], eval_set=[(s.X.iloc[n:], psi[n:])],
        callbacks=[lgb.early_stopping(100, verbose=False)],
    )  # fmt: skip
    return final.predict(s.X_test)


def _r_residuals(s: Slices) -> tuple[np.ndarray, np.ndarray]:
    """(t - e, y - m(x)) with m fitted out of fold."""
    return s.t - s.e, s.y - _out_of_fold(s.X, s.y, np.ones(len(s.y), dtype=bool))


def _out_of_fold(X: pd.DataFrame, y: np.ndarray, fit_on: np.ndarray) -> np.ndarray:
    """P(y | x) for every row from a classifier fitted on the `fit_on` rows of the other folds."""
    out = np.zeros(len(y))
    for fit, score in KFold(3, shuffle=True, random_state=0).split(X):
        rows = fit[fit_on[fit]]
        model = lgb.LGBMClassifier(
            n_estimators=150, learning_rate=0.05, num_leaves=15, min_child_samples=200,
            verbose=-1,
        )  # fmt: skip
        model.fit(X.iloc[rows], y[rows])
        out[score] = model.predict_proba(X.iloc[score])[:, 1]
    return out


def linear_r_learner(sets: dict, s: Slices) -> np.ndarray:
    rt, ry = s.rt, s.ry
    later = np.arange(s.n, len(s.y))

    def fit(rows: np.ndarray, penalty: float) -> np.ndarray:
        D = rt[rows, None] * np.hstack([s.A[rows], s.Z[rows]])
        P = np.eye(D.shape[1]) * penalty
        P[: s.A.shape[1], : s.A.shape[1]] = 0  # the actions' own effects are not shrunk
        return np.linalg.solve(D.T @ D + P, D.T @ ry[rows])

    def later_loss(penalty: float) -> float:
        tau = np.hstack([s.A[later], s.Z[later]]) @ fit(np.arange(s.n), penalty)
        return float(np.sum((ry[later] - rt[later] * tau) ** 2))

    best = min(RIDGE_PENALTIES, key=later_loss)
    return np.hstack([s.A_test, s.Z_test]) @ fit(np.arange(len(s.y)), best)


def fit_taught_by_truth(sets: dict, s: Slices) -> lgb.LGBMRegressor:
    """The true effect regressed on the features: the ceiling of any learner's ranking."""
    truth = np.concatenate([sets["train_uplift"], sets["calibration_uplift"]])
    model = lgb.LGBMRegressor(
        n_estimators=400, learning_rate=0.05, num_leaves=31, min_child_samples=200, verbose=-1
    )
    return model.fit(s.X, truth)


LEARNERS = {
    "R-learner (ours)": r_learner,
    "DR-learner": dr_learner,
    "linear R-learner": linear_r_learner,
}


def power(s: Slices, taught: np.ndarray) -> dict[str, float]:
    """How much heterogeneity these labels can confirm (see the module docstring); `taught`:
    the truth-taught effect on the train and later slices."""
    rows = np.arange(s.n)
    rt, ry = s.rt[rows], s.ry[rows]
    RA = rt[:, None] * s.A[rows]
    proj = np.linalg.pinv(RA)
    ry = ry - RA @ (proj @ ry)  # each action's own effect taken out first
    RZ = rt[:, None] * s.Z[rows]
    RZ = RZ - RA @ (proj @ RZ)
    den = (RZ**2).sum(0)
    slope = RZ.T @ ry / den
    se = np.sqrt(((RZ * (ry[:, None] - RZ * slope)) ** 2).sum(0)) / den
    n_eff = float(np.sum(s.rt**2))
    return {
        "max_feature_t": float(np.nanmax(np.abs(slope / se))),  # constant columns: 0/0
        "features": float(s.Z.shape[1]),
        "n_eff": n_eff,
        "signal_in_se": float(np.sqrt(n_eff * np.var(taught) / np.var(s.y))),
    }


def one_world(data_dir: DataDir) -> pd.DataFrame:
    t0 = time.perf_counter()
    sets = contact_sets(data_dir)
    s = Slices(sets)
    print(
        f"\n{data_dir.root}: {len(sets['train']):,} train / {len(sets['calibration']):,} later / "
        f"{len(sets['test']):,} test contacts, prepared in {time.perf_counter() - t0:.0f} s"
    )
    rows = []
    for name, learner in LEARNERS.items():
        t0 = time.perf_counter()
        pred = learner(sets, s)
        rows.append({"learner": name, **scores(pred, sets), "seconds": time.perf_counter() - t0})
    t0 = time.perf_counter()
    taught = fit_taught_by_truth(sets, s)
    pred = taught.predict(s.X_test)
    rows.append(
        {"learner": "taught by truth", **scores(pred, sets), "seconds": time.perf_counter() - t0}
    )
    table = pd.DataFrame(rows).set_index("learner")
    print(table.round(5).to_string())
    p = power(s, taught.predict(s.X))
    print(
        f"power: largest |t| of one feature's effect {p['max_feature_t']:.1f} over "
        f"{p['features']:.0f} features; n_eff {p['n_eff']:,.0f}; the truth-taught effect's "
        f"signal {p['signal_in_se']:.1f} standard errors"
    )
    return table.assign(**{k: v for k, v in p.items() if k != "features"})


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", type=Path, action="append", help="a synthetic world (repeat)")
    parser.add_argument("--worlds", type=int, default=1, help="without --data: fresh worlds")
    parser.add_argument("--customers", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    dirs = args.data or [None] * args.worlds
    tables = []
    for i, data in enumerate(dirs):
        tables.append(one_world(prepared_world(data, args.customers, args.seed + i)))
    if len(tables) > 1:
        every = pd.concat(tables, keys=range(len(tables)), names=["world"])
        summary = every.groupby("learner", sort=False)[["spearman", "auc_p_over_d", "qini"]]
        print(f"\nover {len(tables)} worlds: mean, min and max")
        print(summary.agg(["mean", "min", "max"]).round(4).to_string())


if __name__ == "__main__":
    main()
