"""The bundle's LightGBM models: calibrated classifiers, a value regressor, uplift learners.

Every model fixes its input columns and categorical levels at fit time (`FrameEncoder`, in
`training/encoding.py`), so a frame built at serving time is read exactly as the training frame
was.
"""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
from pydantic import Field
from scipy.special import expit, logit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.isotonic import IsotonicRegression

from features.config import Strict
from training.encoding import FrameArrays, FrameEncoder, column_values, factorize, row_index

TREATED_FEATURE = "treated"
CHANNEL_FEATURE = "channel"
ACTION_FEATURE = "action_id"


class LGBMParams(Strict):
    """LightGBM settings shared by the bundle's models (documented defaults for 2-core machines)."""

    n_estimators: int = Field(default=400, ge=1, description="Upper bound; early stopping trims.")
    learning_rate: float = Field(default=0.08, gt=0)
    num_leaves: int = Field(default=31, ge=2)
    min_child_samples: int = Field(default=200, ge=1, description="Large: rare, noisy labels.")
    subsample: float = Field(default=0.8, gt=0, le=1)
    colsample_bytree: float = Field(default=0.8, gt=0, le=1)
    reg_lambda: float = Field(default=5.0, ge=0)
    max_bin: int = Field(default=63, ge=3, description="Histogram bins: fewer is faster.")
    early_stopping_rounds: int = Field(default=30, ge=1)
    n_jobs: int = Field(default=2, ge=1)
    seed: int = 0

    def sklearn_kwargs(self) -> dict:
        return {
            "n_estimators": self.n_estimators,
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "min_child_samples": self.min_child_samples,
            "subsample": self.subsample,
            "subsample_freq": 1,
            "colsample_bytree": self.colsample_bytree,
            "reg_lambda": self.reg_lambda,
            "max_bin": self.max_bin,
            "n_jobs": self.n_jobs,
            "random_state": self.seed,
            "verbose": -1,
        }


DRIFT_CLIP = 1e-6  # probabilities kept off 0 and 1 before a drift shift of their log-odds


def _calibrated(calibrator, raw: np.ndarray) -> np.ndarray:
    """One calibrator's probabilities. An isotonic calibrator (CalibratedClassifierCV clips
    out of bounds) is applied as `IsotonicRegression.predict` does, the same clip and the same
    interpolation, without its input checks: a quarter of a millisecond a call on one row."""
    if isinstance(calibrator, IsotonicRegression) and calibrator.out_of_bounds == "clip":
        clipped = np.clip(raw, calibrator.X_min_, calibrator.X_max_)
        return calibrator.f_(clipped).astype(clipped.dtype)
    return calibrator.predict(raw)


class CalibratedClassifier:
    """LightGBM classifier whose probabilities are calibrated on a later time slice.

    The calibration slice also serves for early stopping; calibration is monotone, so the
    ranking is LightGBM's and only the probability scale is learned there.
    """

    def __init__(self, params: LGBMParams, method: str = "isotonic") -> None:
        self.params = params
        self.method = method

    def fit(
        self, X: pd.DataFrame, y: np.ndarray, X_cal: pd.DataFrame, y_cal: np.ndarray
    ) -> CalibratedClassifier:
        self.encoder_ = FrameEncoder().fit(X)
        Xe, Xc = self.encoder_.transform(X), self.encoder_.transform(X_cal)
        y, y_cal = np.asarray(y, dtype=int), np.asarray(y_cal, dtype=int)
        for name, labels in (("training", y), ("calibration", y_cal)):
            if labels.min() == labels.max():
                raise ValueError(f"the {name} slice has a single class: nothing to learn from")
        self.model_ = lgb.LGBMClassifier(**self.params.sklearn_kwargs())
        self.model_.fit(
            Xe,
            y,
            eval_X=(Xc,),
            eval_y=(y_cal,),
            callbacks=[lgb.early_stopping(self.params.early_stopping_rounds, verbose=False)],
        )
        self.calibrator_ = CalibratedClassifierCV(FrozenEstimator(self.model_), method=self.method)
        self.calibrator_.fit(Xc, y_cal)
        return self

    @property
    def feature_names(self) -> list[str]:
        return self.encoder_.columns_

    def predict_uncalibrated(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        return self.model_.booster_.predict(self.encoder_.matrix(X))

    def predict_proba(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        """Calibrated probability of the positive class: CalibratedClassifierCV's own
        computation for two classes (the calibrators' mean on the raw score), from the matrix;
        moved by the drift shift when `follow_drift` set one."""
        raw = self.model_.booster_.predict(self.encoder_.matrix(X), raw_score=True)
        fitted = self.calibrator_.calibrated_classifiers_
        p = np.mean([_calibrated(c.calibrators[0], raw) for c in fitted], axis=0)
        shift = getattr(self, "drift_shift_", 0.0)  # bundles saved before it have none
        if shift:
            p = expit(logit(np.clip(p, DRIFT_CLIP, 1 - DRIFT_CLIP)) + shift)
        return p

    def follow_drift(
        self,
        t: pd.Series,
        y: np.ndarray,
        t_cal: pd.Series,
        y_cal: np.ndarray,
    ) -> CalibratedClassifier:
        """Calibrate to the base rate expected at the end of the calibration slice, not the
        slice's average: the trend of the log-odds of a positive label over time (a logistic
        regression of the training and calibration labels on time) times the time from the
        calibration slice's mean to its end is added to every calibrated log-odds. For data whose base rate drifts (conversion rising over a
        year); `drift_per_day_` and `drift_shift_` say how much."""
        from sklearn.linear_model import LogisticRegression

        times = pd.concat([pd.Series(t), pd.Series(t_cal)], ignore_index=True)
        start = times.min()
        days = ((times - start) / pd.Timedelta(days=1)).to_numpy(dtype=float)
        labels = np.concatenate([np.asarray(y, dtype=int), np.asarray(y_cal, dtype=int)])
        trend = LogisticRegression(C=1e6).fit(days.reshape(-1, 1), labels)
        self.drift_per_day_ = float(trend.coef_[0, 0])
        cal_days = days[len(t) :]
        self.drift_shift_ = self.drift_per_day_ * float(cal_days.max() - cal_days.mean())
        return self

    def contribution_matrix(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        """LightGBM's SHAP values on the raw score (log-odds): a column per feature, then bias."""
        return self.model_.booster_.predict(self.encoder_.matrix(X), pred_contrib=True)

    def contributions(self, X: pd.DataFrame | FrameArrays) -> pd.DataFrame:
        """Per-feature contributions to the raw score (log-odds), plus `bias` (LightGBM SHAP)."""
        raw = self.contribution_matrix(X)
        return pd.DataFrame(raw, columns=[*self.feature_names, "bias"], index=row_index(X))

    def feature_importance(self) -> pd.Series:
        gain = self.model_.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.feature_names).sort_values(ascending=False)


class ValueRegressor:
    """Expected purchase value given a purchase (LightGBM regression on purchasers' spend)."""

    def __init__(self, params: LGBMParams) -> None:
        self.params = params

    def fit(
        self, X: pd.DataFrame, y: np.ndarray, X_val: pd.DataFrame, y_val: np.ndarray
    ) -> ValueRegressor:
        self.encoder_ = FrameEncoder().fit(X)
        self.model_ = lgb.LGBMRegressor(**self.params.sklearn_kwargs())
        self.model_.fit(
            self.encoder_.transform(X),
            np.asarray(y, dtype=float),
            eval_X=(self.encoder_.transform(X_val),),
            eval_y=(np.asarray(y_val, dtype=float),),
            callbacks=[lgb.early_stopping(self.params.early_stopping_rounds, verbose=False)],
        )
        return self

    @property
    def feature_names(self) -> list[str]:
        return self.encoder_.columns_

    def predict(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        return np.clip(self.model_.booster_.predict(self.encoder_.matrix(X)), 0.0, None)

    def feature_importance(self) -> pd.Series:
        gain = self.model_.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.feature_names).sort_values(ascending=False)


class UpliftSLearner:
    """P(outcome | x, treated) with the treatment as a feature; uplift = P(x, 1) - P(x, 0).

    One model across channels (the channel is a feature), calibrated with a sigmoid so the
    difference of two calibrated probabilities keeps its sign and size. Chosen over a T-learner
    because it shares strength between treated and control rows, which matters when the
    control groups are small (holdouts) and effects are a fraction of a point.
    """

    def __init__(self, params: LGBMParams) -> None:
        self.params = params

    def fit(
        self,
        X: pd.DataFrame,
        treated: np.ndarray,
        y: np.ndarray,
        X_cal: pd.DataFrame,
        t_cal: np.ndarray,
        y_cal: np.ndarray,
    ) -> UpliftSLearner:
        self.model_ = CalibratedClassifier(self.params, method="sigmoid").fit(
            self._with_treatment(X, treated), y, self._with_treatment(X_cal, t_cal), y_cal
        )
        return self

    @staticmethod
    def _with_treatment(
        X: pd.DataFrame | FrameArrays, treated: np.ndarray | bool
    ) -> pd.DataFrame | FrameArrays:
        flag = np.broadcast_to(np.asarray(treated, dtype=float), len(X))
        if isinstance(X, FrameArrays):
            return X.with_columns({TREATED_FEATURE: flag})
        return X.assign(**{TREATED_FEATURE: flag})

    @property
    def feature_names(self) -> list[str]:
        return [c for c in self.model_.feature_names if c != TREATED_FEATURE]

    def predict_outcomes(self, X: pd.DataFrame | FrameArrays) -> tuple[np.ndarray, np.ndarray]:
        """(P(outcome | treated), P(outcome | not treated)) per row."""
        p1 = self.model_.predict_proba(self._with_treatment(X, True))
        p0 = self.model_.predict_proba(self._with_treatment(X, False))
        return p1, p0

    def predict_uplift(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        p1, p0 = self.predict_outcomes(X)
        return p1 - p0

    def feature_importance(self) -> pd.Series:
        return self.model_.feature_importance()


class UpliftParams(Strict):
    """The R-learner's effect model: heavily regularised, because the effect is a fraction of a
    point under a baseline that varies tenfold between customers."""

    folds: int = Field(default=3, ge=2, description="Folds for the out-of-fold baseline m(x).")
    n_estimators: int = Field(
        default=2000, ge=1, description="Upper bound; early stopping on the later slice trims."
    )
    learning_rate: float = Field(default=0.02, gt=0)
    num_leaves: int = Field(default=4, ge=2, description="Few leaves: a smooth effect surface.")
    min_child_samples: int = Field(
        default=20_000,
        ge=1,
        description=(
            "Large leaves: each averages many noisy pseudo-outcomes. With the contacts of a "
            "20,000-customer world (10% holdouts) a leaf of 20,000 contacts holds about 2,000 "
            "holdouts, enough to tell an effect of a point from none."
        ),
    )
    other_surfaces: list[tuple[int, int]] = Field(
        default=[(7, 2000)],
        description=(
            "Other (num_leaves, min_child_samples) effect surfaces fitted beside the one above; "
            "the one with the lowest R-loss on the later slice is kept (`effect_surface_`). "
            "Leaves of 20,000 contacts suit hundreds of thousands of contacts and allow almost "
            "no split on a few tens of thousands, where leaves of 2,000 find more."
        ),
    )
    reg_lambda: float = Field(default=50.0, ge=0)
    early_stopping_rounds: int = Field(
        default=100,
        ge=1,
        description=(
            "Trees added without a lower R-loss on the later slice before it stops: a slow, "
            "noisy descent needs patience, or it stops before the heterogeneity shows."
        ),
    )
    shape_folds: int = Field(
        default=5,
        ge=2,
        description="Folds of the cross-fitted R-loss that chooses each action's effect shape.",
    )
    levels_from_unfeatured: bool = Field(
        default=True,
        description=(
            "Each action's mean effect also learns from the labelled contacts that the row "
            "budget (`max_contact_rows`) leaves without features: their difference in means, "
            "weighted against the feature rows' estimate by the inverse of each variance. "
            "Labels cost one SQL pass; features at every contact are the costly part. It "
            "raised the policy's share of the oracle's profit from 32.8% to 36.8% on a "
            "60,000-customer world (1.1M such contacts beside 0.8M feature rows) and from 30.2% "
            "to 35.0% on a 200,000-customer one (6.1M); below the budget (the default "
            "20,000-customer world) there are none and nothing changes."
        ),
    )


EFFECT_SHAPES = ("constant", "proportional", "line")


def _r_loss_line(
    residual_t: np.ndarray, residual_y: np.ndarray, m: np.ndarray, shape: str
) -> tuple[float, float]:
    """(a, b) minimising sum((y - m~) - (t - e)(a + b m))^2, the R-loss of tau = a + b m, over
    the shape's free parameters: a alone (constant), b alone (proportional), or both (line)."""
    if shape == "constant":
        return float(residual_t @ residual_y / (residual_t @ residual_t)), 0.0
    if shape == "proportional":
        x = residual_t * m
        return 0.0, float(x @ residual_y / (x @ x))
    design = np.column_stack([residual_t, residual_t * m])
    (a, b), *_ = np.linalg.lstsq(design, residual_y, rcond=None)
    return float(a), float(b)


def _keyed(grouped: pd.DataFrame | pd.Series) -> pd.DataFrame | pd.Series:
    """Effect lines are keyed by str(key): group by the raw keys (fast), then name the groups."""
    return grouped.set_axis(grouped.index.map(str))


class UpliftRLearner:
    """Uplift by Robinson residualisation (R-learner), one model across channels.

    m(x) = E[purchase | x] is fitted out of fold, e = P(treated | channel) is the randomised
    holdout share. Each action's effect starts as the R-loss minimiser of one shape in the
    baseline: a constant a, a proportional b * m(x) or a line a + b * m(x), the shape whose
    cross-fitted R-loss is lowest (on Hillstrom's e-mails the effect grows with the visit or
    conversion rate, on the synthetic world it does not); the effect model then learns how
    customers deviate from that start, regressing
    (y - m) / (t - e) with weights (t - e)^2, and stops adding trees when the R-loss on the
    later (calibration) slice no longer falls, so heterogeneity the data cannot confirm is not
    invented. The control probability is the calibrated m(x) minus e * tau (since
    m = p0 + e * tau); treated = control + tau.
    """

    def __init__(self, params: LGBMParams, uplift: UpliftParams | None = None) -> None:
        self.params = params
        self.uplift = uplift or UpliftParams()

    def fit(
        self,
        X: pd.DataFrame,
        treated: np.ndarray,
        y: np.ndarray,
        X_cal: pd.DataFrame,
        t_cal: np.ndarray,
        y_cal: np.ndarray,
        X_more: pd.DataFrame | None = None,
        t_more: np.ndarray | None = None,
        y_more: np.ndarray | None = None,
    ) -> UpliftRLearner:
        """`X_more` (channel and action only), `t_more`, `y_more`: contacts without features,
        used only for each action's mean effect (`UpliftParams.levels_from_unfeatured`)."""
        from sklearn.model_selection import KFold, cross_val_predict

        self.baseline_ = CalibratedClassifier(self.params).fit(X, y, X_cal, y_cal)
        X_all = pd.concat([X, X_cal], ignore_index=True)
        t = np.concatenate([np.asarray(treated), np.asarray(t_cal)]).astype(float)
        y_all = np.concatenate([np.asarray(y), np.asarray(y_cal)]).astype(float)
        self.encoder_ = FrameEncoder().fit(X_all)
        Xe = self.encoder_.transform(X_all)
        # The out-of-fold baseline takes the tree count validated on the later slice: no more
        # trees than the data support, and a fraction of the unstopped fit's time.
        trees = self.baseline_.model_.best_iteration_ or self.params.n_estimators
        nuisance = lgb.LGBMClassifier(**self.params.sklearn_kwargs() | {"n_estimators": trees})
        folds = KFold(self.uplift.folds, shuffle=True, random_state=self.params.seed)
        m = cross_val_predict(nuisance, Xe, y_all, cv=folds, method="predict_proba")[:, 1]
        self.treated_share_ = pd.Series(t).groupby(X_all[CHANNEL_FEATURE].astype(str).values)
        self.treated_share_ = self.treated_share_.mean().clip(0.01, 0.99).to_dict()
        residual_t = t - self._treated_share(X_all)
        residual_y = y_all - m
        self._fit_action_effects(X_all, residual_t, residual_y, m)
        self.level_refinement_ = None
        if X_more is not None and len(X_more) and self.uplift.levels_from_unfeatured:
            self._refine_levels(X_all, residual_t, residual_y, m, X_more, t_more, y_more)
        start = self._action_effect(X_all, m)
        pseudo, weight = residual_y / residual_t, residual_t**2
        n = len(X)
        kwargs = self.params.sklearn_kwargs() | {
            "n_estimators": self.uplift.n_estimators,
            "learning_rate": self.uplift.learning_rate,
            "num_leaves": self.uplift.num_leaves,
            "min_child_samples": self.uplift.min_child_samples,
            "reg_lambda": self.uplift.reg_lambda,
        }
        fitted = {}
        surfaces = [(self.uplift.num_leaves, self.uplift.min_child_samples)]
        for leaves, leaf_rows in dict.fromkeys([*surfaces, *self.uplift.other_surfaces]):
            model = lgb.LGBMRegressor(
                **kwargs | {"num_leaves": leaves, "min_child_samples": leaf_rows}
            )
            model.fit(
                Xe.iloc[:n],
                pseudo[:n],
                sample_weight=weight[:n],
                init_score=start[:n],
                eval_X=(Xe.iloc[n:],),
                eval_y=(pseudo[n:],),
                eval_sample_weight=[weight[n:]],
                eval_init_score=[start[n:]],
                callbacks=[lgb.early_stopping(self.uplift.early_stopping_rounds, verbose=False)],
            )
            # the weighted squared error of the pseudo-outcome is the later slice's R-loss
            fitted[f"{leaves}x{leaf_rows}"] = (model, float(model.best_score_["valid_0"]["l2"]))
        self.surface_losses_ = {k: loss for k, (_, loss) in fitted.items()}
        self.effect_surface_ = min(self.surface_losses_, key=self.surface_losses_.get)
        self.model_ = fitted[self.effect_surface_][0]
        if self.level_refinement_ is not None and len(self.level_refinement_):
            self._keep_refined_levels(X_all, Xe)
        return self

    def __setstate__(self, state: dict) -> None:
        """Bundles pickled by earlier versions: constants per action, channel and everyone
        (before 6bf505a), or a line or constant flagged by `effect_scales_with_baseline_`."""
        if "effect_lines_" not in state and "channel_effects_" in state:
            constants = [state.pop("action_effects_"), state.pop("channel_effects_")]
            constants = [c for c in constants if c] + [{"0": state.pop("mean_effect_")}]
            state["effect_lines_"] = [{k: (v, 0.0) for k, v in c.items()} for c in constants]
            state["effect_scales_with_baseline_"] = False
        if "effect_shape_" not in state:
            sloped = state.pop("effect_scales_with_baseline_", False)
            state["effect_shape_"] = "line" if sloped else "constant"
        state.setdefault("level_refinement_", None)
        lines = state.get("effect_lines_")
        if lines and "all" in lines[-1]:  # the everyone key of commit 6bf505a
            lines[-1] = {"0": lines[-1]["all"]}
        self.__dict__.update(state)

    def _fit_action_effects(
        self, X: pd.DataFrame, residual_t: np.ndarray, residual_y: np.ndarray, m: np.ndarray
    ) -> None:
        """Each action's effect as a constant, proportional or line in the baseline,
        tau = a + b * m(x), by R-loss least squares (channel and overall effects for actions not
        seen in training). One shape for all actions: the one with the lowest R-loss on held-out
        folds, as effects often scale with how likely the customer is to buy anyway. Cross-fitting
        scores every row, where a single later slice left the choice to a few hundred
        conversions on Hillstrom."""
        keys = self._effect_keys(X)
        fold = np.random.default_rng(self.params.seed).permutation(len(X)) % self.uplift.shape_folds

        def fit(rows: np.ndarray, shape: str) -> list[dict[str, tuple[float, float]]]:
            out = []
            for values in keys:
                frame = pd.DataFrame(
                    {"t": residual_t[rows], "y": residual_y[rows], "m": m[rows], "k": values[rows]}
                )
                out.append(
                    {
                        str(k): _r_loss_line(
                            g["t"].to_numpy(), g["y"].to_numpy(), g["m"].to_numpy(), shape
                        )
                        for k, g in frame.groupby("k", sort=False)
                    }
                )
            return out

        def held_out_loss(shape: str) -> float:
            loss = 0.0
            for f in range(self.uplift.shape_folds):
                fit_rows, score_rows = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
                tau = self._effect(
                    fit(fit_rows, shape), [k[score_rows] for k in keys], m[score_rows]
                )
                loss += float(np.sum((residual_y[score_rows] - residual_t[score_rows] * tau) ** 2))
            return loss

        self.shape_losses_ = {shape: held_out_loss(shape) for shape in EFFECT_SHAPES}
        self.effect_shape_ = min(self.shape_losses_, key=self.shape_losses_.get)
        self.effect_lines_ = fit(np.arange(len(X)), self.effect_shape_)

    def _refine_levels(
        self,
        X: pd.DataFrame,
        residual_t: np.ndarray,
        residual_y: np.ndarray,
        m: np.ndarray,
        X_more: pd.DataFrame,
        t_more: np.ndarray,
        y_more: np.ndarray,
    ) -> None:
        """Each key's mean effect mu = mean(a + b m) combined with the difference in means of
        the contacts without features, by inverse variance; a line or constant shifts by the
        change, a proportional effect rescales, so the fitted shape keeps its slope.

        The feature rows' variance is the R-loss sandwich sum(rt^2 e^2) / (sum rt^2)^2 with
        e = ry - rt tau; the other's is s1^2/n1 + s0^2/n0. Both samples are randomised, so
        both estimates are unbiased and the combination has the smaller variance.
        """
        t_more = np.asarray(t_more, dtype=bool)
        y_more = np.asarray(y_more, dtype=float)
        refined = []
        for lines, values, values_more in zip(
            self.effect_lines_, self._effect_keys(X), self._effect_keys(X_more), strict=True
        ):
            tau = self._effect([lines], [values], m)  # this level's own lines
            e = residual_y - residual_t * tau
            feat = pd.DataFrame(
                {"rtt": residual_t**2, "rtte": (residual_t * e) ** 2, "m": m, "tau": tau}
            ).groupby(values)
            f_sum, f_mean = (
                _keyed(f) for f in (feat[["rtt", "rtte"]].sum(), feat[["m", "tau"]].mean())
            )
            arms = pd.DataFrame({"k": values_more, "t": t_more, "y": y_more}).groupby(["k", "t"])
            arm = _keyed(arms["y"].agg(["mean", "var", "count"]).unstack("t"))
            if not {("count", False), ("count", True)} <= set(arm.columns):
                continue  # one arm only: no difference in means anywhere
            for key, (a, b) in list(lines.items()):
                if key not in f_sum.index or key not in arm.index:
                    continue
                n0, n1 = arm.loc[key, ("count", False)], arm.loc[key, ("count", True)]
                if not (n0 >= 2 and n1 >= 2) or f_sum.loc[key, "rtt"] <= 0:
                    continue
                mu_f = f_mean.loc[key, "tau"]
                var_f = f_sum.loc[key, "rtte"] / f_sum.loc[key, "rtt"] ** 2
                diff = arm.loc[key, ("mean", True)] - arm.loc[key, ("mean", False)]
                var_d = arm.loc[key, ("var", True)] / n1 + arm.loc[key, ("var", False)] / n0
                if not (var_f > 0 and var_d > 0):
                    continue
                mu = (mu_f / var_f + diff / var_d) / (1.0 / var_f + 1.0 / var_d)
                if self.effect_shape_ == "proportional":
                    lines[key] = (a, float(mu / f_mean.loc[key, "m"]))
                else:
                    lines[key] = (float(a + mu - mu_f), b)
                refined.append(
                    {
                        "key": key,
                        "features_effect": float(mu_f),
                        "features_se": float(np.sqrt(var_f)),
                        "unfeatured_rows": int(n0 + n1),
                        "unfeatured_effect": float(diff),
                        "unfeatured_se": float(np.sqrt(var_d)),
                        "effect": float(mu),
                    }
                )
        self.level_refinement_ = pd.DataFrame(refined)

    def _keep_refined_levels(self, X: pd.DataFrame, Xe: pd.DataFrame) -> None:
        """Fitted on the feature rows only, the trees can move an action's mean effect back
        towards what those rows alone say (on a 200k-customer world whose busiest actions had
        many feature rows, 37 trees took email_discount's level from 0.0014 to 0.0005). A
        refined level is kept by taking the trees' mean over the key's rows off its line: the
        trees only spread it between customers."""
        trees = pd.Series(self.model_.predict(Xe))
        refined = set(self.level_refinement_["key"])
        shifts: dict[str, float] = {}
        for lines, values in zip(self.effect_lines_, self._effect_keys(X), strict=True):
            means = _keyed(trees.groupby(values).mean())
            for key in refined & set(lines) & set(means.index):
                a, b = lines[key]
                lines[key] = (a - float(means[key]), b)
                shifts[key] = float(means[key])
        self.level_refinement_["trees_shift"] = self.level_refinement_["key"].map(shifts)

    @staticmethod
    def _effect_keys(X: pd.DataFrame | FrameArrays) -> list[np.ndarray]:
        """Most to least specific: the action (if given), the channel, everyone (key "0")."""
        keys = [column_values(X, ACTION_FEATURE)] if ACTION_FEATURE in X.columns else []
        return [*keys, column_values(X, CHANNEL_FEATURE), np.zeros(len(X), dtype=np.int8)]

    @staticmethod
    def _effect(
        lines: list[dict[str, tuple[float, float]]], keys: list[np.ndarray], m: np.ndarray
    ) -> np.ndarray:
        """a + b * m per row from the most specific line fitted for the row's key."""
        a, b = np.full(len(m), np.nan), np.full(len(m), np.nan)
        for fitted, values in zip(lines, keys, strict=True):
            # a frame holds one or a few actions: look the distinct keys up, not every row
            codes, distinct = factorize(values)
            looked_up = [fitted.get(str(k), (np.nan, np.nan)) for k in distinct]
            ab = np.array([*looked_up, (np.nan, np.nan)])
            a = np.where(np.isnan(a), ab[codes, 0], a)
            b = np.where(np.isnan(b), ab[codes, 1], b)
        return np.nan_to_num(a) + np.nan_to_num(b) * m

    def _action_effect(
        self, X: pd.DataFrame | FrameArrays, m: np.ndarray | None = None
    ) -> np.ndarray:
        if m is None:
            m = (
                self.baseline_.predict_proba(X)
                if self.effect_shape_ != "constant"
                else np.zeros(len(X))
            )
        return self._effect(self.effect_lines_, self._effect_keys(X), m)

    def _treated_share(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        overall = float(np.mean(list(self.treated_share_.values())))
        codes, channels = factorize(column_values(X, CHANNEL_FEATURE))
        share = [self.treated_share_.get(str(c), overall) for c in channels]
        return np.array([*share, overall])[codes]  # a missing channel (-1) takes the overall

    @property
    def feature_names(self) -> list[str]:
        return self.encoder_.columns_

    def predict_uplift(
        self, X: pd.DataFrame | FrameArrays, m: np.ndarray | None = None
    ) -> np.ndarray:
        """tau(x) = P(purchase | contacted, x) - P(purchase | not contacted, x); `m`, the
        baseline's prediction for X, if the caller has it."""
        return self._action_effect(X, m) + self.model_.booster_.predict(self.encoder_.matrix(X))

    def predict_outcomes(self, X: pd.DataFrame | FrameArrays) -> tuple[np.ndarray, np.ndarray]:
        """(P(purchase | treated), P(purchase | not treated)) per row, clipped to [0, 1]."""
        m = self.baseline_.predict_proba(X)
        tau = self.predict_uplift(X, m)
        p0 = np.clip(m - self._treated_share(X) * tau, 0.0, 1.0)
        return np.clip(p0 + tau, 0.0, 1.0), p0

    def contribution_matrix(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        """The effect model's SHAP values in probability points: a column per feature, then its
        bias, without the action's mean effect (which needs the baseline's prediction: reasons
        rank the features only and skip it)."""
        return self.model_.booster_.predict(self.encoder_.matrix(X), pred_contrib=True)

    def contributions(self, X: pd.DataFrame | FrameArrays) -> pd.DataFrame:
        """Per-feature contributions to tau(x) in probability points, plus `bias` (the mean
        effect): why a contact would change this customer's purchase probability."""
        raw = self.contribution_matrix(X)
        raw[:, -1] += self._action_effect(X)
        return pd.DataFrame(raw, columns=[*self.feature_names, "bias"], index=row_index(X))

    def feature_importance(self) -> pd.Series:
        gain = self.model_.booster_.feature_importance(importance_type="gain")
        return pd.Series(gain, index=self.feature_names).sort_values(ascending=False)


class UpliftThroughStep:
    """Uplift on a rare outcome reached only through a commoner step (on Hillstrom a conversion
    needs a visit): the R-learner's effect on the step times P(outcome | step, x).

    tau_y(x) = P1(s|x) P1(y|s,x) - P0(s|x) P0(y|s,x)
             = tau_s(x) P1(y|s,x) + P0(s|x) (P1(y|s,x) - P0(y|s,x)).
    The first term is what this ranks by: the step's effect is learned from several times more
    events than the outcome's (Hillstrom: 15% visit, 0.9% convert), and P(y | s, x) is learned
    from everyone who took the step. The second term, the contact's effect on converting once
    there, is left out, so the numbers rank customers but understate the total effect by it.
    """

    def __init__(self, step_learner: UpliftRLearner) -> None:
        """`step_learner`: the R-learner of the step, fitted already (on the same rows and later
        slice) or fitted here; the outcome model takes its LightGBM parameters."""
        self.step_learner = step_learner

    def fit(
        self,
        X: pd.DataFrame,
        treated: np.ndarray,
        step: np.ndarray,
        y: np.ndarray,
        X_cal: pd.DataFrame,
        t_cal: np.ndarray,
        step_cal: np.ndarray,
        y_cal: np.ndarray,
    ) -> UpliftThroughStep:
        took, took_cal = np.asarray(step, dtype=bool), np.asarray(step_cal, dtype=bool)
        y, y_cal = np.asarray(y), np.asarray(y_cal)
        if np.any(y.astype(bool) & ~took) or np.any(y_cal.astype(bool) & ~took_cal):
            raise ValueError("an outcome without the step: the outcome must only follow the step")
        if not hasattr(self.step_learner, "model_"):
            self.step_learner.fit(X, treated, took, X_cal, t_cal, took_cal)
        self.outcome_given_step_ = CalibratedClassifier(self.step_learner.params).fit(
            X[took], y[took], X_cal[took_cal], y_cal[took_cal]
        )
        return self

    def predict_uplift(self, X: pd.DataFrame) -> np.ndarray:
        """tau_s(x) * P(outcome | step, x): the ranking score (see the class docstring)."""
        return self.step_learner.predict_uplift(X) * self.outcome_given_step_.predict_proba(X)
