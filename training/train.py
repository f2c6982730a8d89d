"""Training run: point-in-time sets, the four models, evaluation, MLflow logging, registry, gate.

Each model family logs one run in its own experiment (`nba-response`, `nba-purchase`,
`nba-value`, `nba-uplift`); the bundle of all four is logged in `nba-bundle`, registered as one
model version, and made `champion` only if it passes the promotion gate.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import duckdb
import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import ColSpec, Schema

from features.config import DataConfig, OnlineStoreConfig
from features.errors import UserError
from features.ingest.contract import ACTION_ID, CHANNEL, CUSTOMER_ID, TS, DataDir
from features.store.batch import BatchEngine
from features.store.definitions import FeatureConfig, FeatureSet
from training import model_safety, registry
from training.bundle import BundlePyfunc, FamilyPyfunc, ModelBundle, pip_requirements
from training.config import TrainingConfig
from training.customer_base import CustomerBase, WithCustomerBase
from training.datasets import (
    MIN_SNAPSHOTS,
    PURCHASED,
    RESPONDED,
    SPEND,
    TREATED,
    contact_training_set,
    horizon_problem,
    snapshot_training_set,
)
from training.evaluation import (
    FamilyReport,
    Split,
    evaluate_purchase,
    evaluate_response,
    evaluate_uplift,
    evaluate_value,
    gate_score,
    losses_to_heuristic,
    time_split,
)
from training.models import CalibratedClassifier, UpliftRLearner, ValueRegressor
from training.oracle import load_truth
from training.plots import importance_figure

Progress = Callable[[str], None]


@dataclass
class TrainingData:
    contacts: Split | None
    snapshots: Split | None
    customer_features: list[str]
    notes: dict[str, str] = field(default_factory=dict)
    # labelled contacts before the test slice that the row budget left without features
    unfeatured_contacts: pd.DataFrame | None = None


@dataclass
class TrainResult:
    bundle: ModelBundle
    reports: dict[str, FamilyReport]
    run_ids: dict[str, str]
    version: str | None
    gate: registry.GateDecision | None
    data: TrainingData


def customer_feature_columns(fs: FeatureSet, frame: pd.DataFrame) -> list[str]:
    profile = [c for c in frame.columns if c.startswith("profile_")]
    return [*fs.names, *profile]


def build_training_data(
    con: duckdb.DuckDBPyConnection,
    engine: BatchEngine,
    data_cfg: DataConfig,
    cfg: TrainingConfig,
    say: Progress = print,
) -> TrainingData:
    """Both point-in-time training sets, split by time; what cannot be built is noted."""
    notes: dict[str, str] = {}
    contacts = snapshots = unfeatured = None
    columns: list[str] = []
    say("contacts training set (features as of each contact)")
    frame, report = contact_training_set(
        con, engine, data_cfg, cfg.labels, max_rows=cfg.models.max_contact_rows
    )
    if report.rows == 0 and not report.dropped_censored:
        kinds = ", ".join(data_cfg.event_types.outbound)
        notes["contacts"] = f"no outbound contacts ({kinds} events) in the history"
    elif report.rows == 0:
        notes["contacts"] = "no outbound contacts with a complete label window"
    else:
        try:
            contacts = time_split(
                frame, TS, cfg.split.calibration_fraction, cfg.split.test_fraction
            )
            columns = customer_feature_columns(engine.fs, frame)
            if report.unfeatured is not None:
                # the test slice stays unseen: only contacts before it
                before_test = report.unfeatured[TS] < contacts.test[TS].min()
                unfeatured = report.unfeatured[before_test].reset_index(drop=True)
        except ValueError as exc:
            notes["contacts"] = str(exc)
    say("purchase training set (monthly snapshots)")
    frame, report = snapshot_training_set(con, engine, data_cfg, cfg.labels)
    found = 0 if frame is None or report.rows == 0 else frame["as_of"].nunique()
    if found < MIN_SNAPSHOTS:
        notes["snapshots"] = horizon_problem(con, cfg.labels, found)
    else:
        try:
            snapshots = time_split(
                frame, "as_of", cfg.split.calibration_fraction, cfg.split.test_fraction
            )
            columns = columns or customer_feature_columns(engine.fs, frame)
        except ValueError as exc:
            notes["snapshots"] = f"{exc} (lengthen the history or shorten training.labels)"
    return TrainingData(contacts, snapshots, columns, notes, unfeatured)


def _has_both_classes(*labels: pd.Series) -> bool:
    return all(len(y) and 0 < y.sum() < len(y) for y in labels)


def fit_bundle(td: TrainingData, cfg: TrainingConfig, say: Progress = print) -> ModelBundle:
    """Fit every model the data supports; record why any other was skipped."""
    params = cfg.models.params
    feats = td.customer_features
    contact_cols = [*feats, CHANNEL, ACTION_ID]
    skipped = dict(td.notes)
    response = uplift = purchase = value = None
    response_choice = None

    if td.contacts is not None:
        tr, ca = td.contacts.train, td.contacts.calibration
        trt, cat = tr[tr[TREATED]], ca[ca[TREATED]]
        if _has_both_classes(trt[RESPONDED], cat[RESPONDED]):
            say("response model")
            response, response_choice = _fit_response(trt, cat, contact_cols, cfg)
            if cfg.models.follow_drift:
                _follow_drift(response, trt, cat)
        else:
            skipped["response"] = "no responses (or only responses) among the contacts"
        if _has_both_classes(tr[PURCHASED], ca[PURCHASED]) and (~tr[TREATED]).any():
            say("uplift model (R-learner on contacts and holdouts)")
            more = td.unfeatured_contacts
            uplift = UpliftRLearner(params, cfg.models.uplift).fit(
                tr[contact_cols],
                tr[TREATED].to_numpy(),
                tr[PURCHASED].to_numpy(),
                ca[contact_cols],
                ca[TREATED].to_numpy(),
                ca[PURCHASED].to_numpy(),
                X_more=None if more is None else more[[CHANNEL, ACTION_ID]],
                t_more=None if more is None else more[TREATED].to_numpy(),
                y_more=None if more is None else more[PURCHASED].to_numpy(),
            )
        else:
            skipped["uplift"] = "needs both contacted and holdout rows, with and without purchases"
    else:
        skipped.setdefault("response", skipped.get("contacts", "no contacts"))
        skipped.setdefault("uplift", skipped.get("contacts", "no contacts"))

    if td.snapshots is not None:
        tr, ca = td.snapshots.train, td.snapshots.calibration
        if _has_both_classes(tr[PURCHASED], ca[PURCHASED]):
            say("purchase propensity model")
            purchase = _purchase_model(tr, cfg)
            purchase.fit(tr[feats], tr[PURCHASED].to_numpy(), ca[feats], ca[PURCHASED].to_numpy())
            if cfg.models.follow_drift:
                purchase.follow_drift(
                    tr["as_of"], tr[PURCHASED].to_numpy(), ca["as_of"], ca[PURCHASED].to_numpy()
                )
            buyers_tr, buyers_ca = tr[tr[PURCHASED]], ca[ca[PURCHASED]]
            if len(buyers_tr) >= 50 and len(buyers_ca) >= 10:
                say("value model")
                value = ValueRegressor(params).fit(
                    buyers_tr[feats], buyers_tr[SPEND], buyers_ca[feats], buyers_ca[SPEND]
                )
            else:
                skipped["value"] = "fewer than 50 purchases to learn order values from"
        else:
            skipped["purchase"] = "no purchases (or only purchases) in the snapshots"
            skipped["value"] = skipped["purchase"]
    else:
        skipped.setdefault("purchase", skipped.get("snapshots", "no snapshots"))
        skipped.setdefault("value", skipped.get("snapshots", "no snapshots"))

    return ModelBundle(
        response=response,
        purchase=purchase,
        value=value,
        uplift=uplift,
        customer_features=feats,
        skipped={
            k: v for k, v in skipped.items() if k in ("response", "purchase", "value", "uplift")
        },
        response_choice=response_choice,
    )


def _purchase_model(train: pd.DataFrame, cfg: TrainingConfig):
    """The purchase classifier, reading BG/NBD's expected purchases and P(alive) when
    `models.customer_base` is on and the training snapshots let BG/NBD be fitted."""
    model = CalibratedClassifier(cfg.models.params)
    if not cfg.models.customer_base:
        return model
    base = CustomerBase.fit(train, cfg.labels.purchase_horizon_days)
    return model if base is None else WithCustomerBase(base, model)


def _follow_drift(
    response: CalibratedClassifier | dict[str, CalibratedClassifier],
    train: pd.DataFrame,
    cal: pd.DataFrame,
) -> None:
    """The response model(s) calibrated to the end of the calibration slice (per channel:
    each channel's own trend)."""
    models = response if isinstance(response, dict) else {None: response}
    for channel, model in models.items():
        tr = train if channel is None else train[train[CHANNEL] == channel]
        ca = cal if channel is None else cal[cal[CHANNEL] == channel]
        model.follow_drift(tr[TS], tr[RESPONDED].to_numpy(), ca[TS], ca[RESPONDED].to_numpy())


def _fit_response(
    train: pd.DataFrame, cal: pd.DataFrame, cols: list[str], cfg: TrainingConfig
) -> tuple[CalibratedClassifier | dict[str, CalibratedClassifier], dict | None]:
    """Pooled or per-channel response model; `auto` keeps the lower calibration log loss."""
    from sklearn.metrics import log_loss

    mode = cfg.models.response_mode
    params = cfg.models.params
    pooled = per_channel = None
    if mode in ("auto", "pooled"):
        pooled = CalibratedClassifier(params).fit(
            train[cols], train[RESPONDED].to_numpy(), cal[cols], cal[RESPONDED].to_numpy()
        )
    if mode in ("auto", "per_channel"):
        per_channel = {}
        for channel in sorted(train[CHANNEL].unique()):
            tr, ca = train[train[CHANNEL] == channel], cal[cal[CHANNEL] == channel]
            if _has_both_classes(tr[RESPONDED], ca[RESPONDED]):
                per_channel[channel] = CalibratedClassifier(params).fit(
                    tr[cols], tr[RESPONDED].to_numpy(), ca[cols], ca[RESPONDED].to_numpy()
                )
        if not per_channel:
            per_channel = None
    if mode == "pooled" or per_channel is None:
        return pooled, None
    if mode == "per_channel" or pooled is None:
        return per_channel, None
    # auto: compare uncalibrated predictions on the calibration slice (the test stays unseen)
    y = cal[RESPONDED].to_numpy(dtype=int)
    p_pooled = pooled.predict_uncalibrated(cal[cols])
    p_split = p_pooled.copy()
    for channel, model in per_channel.items():
        rows = (cal[CHANNEL] == channel).to_numpy()
        p_split[rows] = model.predict_uncalibrated(cal.loc[rows, cols])
    pooled_loss = log_loss(y, np.clip(p_pooled, 1e-7, 1 - 1e-7), labels=[0, 1])
    split_loss = log_loss(y, np.clip(p_split, 1e-7, 1 - 1e-7), labels=[0, 1])
    chosen = pooled if pooled_loss <= split_loss else per_channel
    choice = {
        "pooled_log_loss": float(pooled_loss),
        "per_channel_log_loss": float(split_loss),
        "chosen": "pooled" if chosen is pooled else "per_channel",
    }
    return chosen, choice


def evaluate_bundle(
    bundle: ModelBundle,
    td: TrainingData,
    truth,
    horizon_days: float,
    with_figures: bool = True,
) -> dict[str, FamilyReport]:
    reports: dict[str, FamilyReport | None] = {}
    if td.contacts is not None:
        reports["response"] = evaluate_response(bundle, td.contacts, truth, with_figures)
        reports["uplift"] = evaluate_uplift(bundle, td.contacts, truth, with_figures)
    if td.snapshots is not None:
        reports["purchase"] = evaluate_purchase(
            bundle, td.snapshots, truth, horizon_days, with_figures
        )
        reports["value"] = evaluate_value(bundle, td.snapshots)
    return {k: v for k, v in reports.items() if v is not None}


def _family_model(bundle: ModelBundle, family: str):
    return {
        "response": bundle.response,
        "purchase": bundle.purchase,
        "value": bundle.value,
        "uplift": bundle.uplift,
    }[family]


def _signature(example: pd.DataFrame, output) -> ModelSignature:
    """Every input optional: LightGBM takes a missing value in any feature, and five example
    rows cannot tell which features a customer may lack."""
    signature = infer_signature(example, output)
    signature.inputs = Schema(
        [ColSpec(c.type, c.name, required=False) for c in signature.inputs.inputs]
    )
    return signature


def _log_family_run(
    family: str,
    bundle: ModelBundle,
    report: FamilyReport,
    td: TrainingData,
    cfg: TrainingConfig,
    tracking: registry.Tracking,
) -> str:
    exp_id = registry.experiment(f"nba-{family}", tracking)
    split = td.contacts if family in ("response", "uplift") else td.snapshots
    time_col = TS if family in ("response", "uplift") else "as_of"
    model = _family_model(bundle, family)
    with mlflow.start_run(experiment_id=exp_id, run_name=f"{family}") as run:
        mlflow.log_params(cfg.models.params.model_dump())
        mlflow.log_params({f"data_{k}": v for k, v in split.describe(time_col).items()})
        mlflow.log_params(
            {
                "purchase_horizon_days": cfg.labels.purchase_horizon_days,
                "attribution_window_days": cfg.labels.attribution_window_days,
            }
        )
        if family == "response":
            mlflow.log_param(
                "response_mode", "per_channel" if isinstance(model, dict) else "pooled"
            )
            if bundle.response_choice:
                mlflow.log_metrics(
                    {k: v for k, v in bundle.response_choice.items() if k != "chosen"}
                )
        if family == "uplift":
            mlflow.log_params(
                {f"uplift_{k}": v for k, v in cfg.models.uplift.model_dump().items()}
                | {"effect_shape": model.effect_shape_, "effect_surface": model.effect_surface_}
            )
            mlflow.log_metrics({f"r_loss_{k}": v for k, v in model.shape_losses_.items()})
            mlflow.log_metrics(
                {f"later_r_loss_surface_{k}": v for k, v in model.surface_losses_.items()}
            )
            unfeatured = td.unfeatured_contacts
            mlflow.log_param("unfeatured_contacts", 0 if unfeatured is None else len(unfeatured))
            if getattr(model, "level_refinement_", None) is not None:
                # each action's effect from the feature rows, the other contacts and both
                mlflow.log_text(model.level_refinement_.to_csv(index=False), "effect_levels.csv")
        mlflow.log_metrics(report.flat())
        for name, fig in report.figures.items():
            mlflow.log_figure(fig, name)
        models = model if isinstance(model, dict) else {"all": model}
        for key, m in models.items():
            suffix = "" if key == "all" else f"_{key}"
            mlflow.log_figure(
                importance_figure(m.feature_importance(), f"{family}{suffix}: feature importance"),
                f"feature_importance{suffix}.png",
            )
            mlflow.log_text("\n".join(m.feature_names), f"features{suffix}.txt")
            rows = split.test if key == "all" else split.test[split.test[CHANNEL] == key]
            example = rows[m.feature_names].head(5)
            mlflow.pyfunc.log_model(
                name=f"model{suffix}",
                python_model=FamilyPyfunc(m),
                signature=_signature(example, FamilyPyfunc(m).predict(None, example)),
                input_example=example,
                pip_requirements=pip_requirements(),
            )
        return run.info.run_id


def train(
    data_dir: DataDir,
    data_cfg: DataConfig,
    feature_cfg: FeatureConfig,
    cfg: TrainingConfig,
    con: duckdb.DuckDBPyConnection,
    say: Progress = print,
    online: OnlineStoreConfig | None = None,
) -> TrainResult:
    """Train, evaluate, log and register a bundle; apply the promotion gate. The bundle is
    not made champion over an online store (`online`) computed with other definitions."""
    fs = FeatureSet(data_cfg, feature_cfg)
    engine = BatchEngine(fs, con, customers="customers" if _has_customers(con) else None)
    td = build_training_data(con, engine, data_cfg, cfg, say)
    bundle = fit_bundle(td, cfg, say)
    if all(_family_model(bundle, f) is None for f in ("response", "purchase", "value", "uplift")):
        raise UserError(f"nothing could be trained: {_why_nothing(bundle.skipped)}")
    say("evaluation on the test window")
    truth = load_truth(data_dir, con)
    horizon = cfg.labels.purchase_horizon_days
    reports = evaluate_bundle(bundle, td, truth, horizon)
    bundle.trained_on = {
        "contacts": td.contacts.describe(TS) if td.contacts is not None else None,
        "snapshots": td.snapshots.describe("as_of") if td.snapshots is not None else None,
        "feature_definitions": fs.base_names,
        model_safety.DEFINITIONS_KEY: model_safety.definitions_fingerprint(fs)[0],
        "purchase_horizon_days": horizon,  # what p_purchase means: a purchase within this
        "attribution_window_days": cfg.labels.attribution_window_days,
    }

    say("MLflow: logging runs and registering the bundle")
    tracking = registry.configure_tracking(data_dir.root)
    run_ids = {
        family: _log_family_run(family, bundle, report, td, cfg, tracking)
        for family, report in reports.items()
    }
    score = gate_score(reports)
    champion_score = _champion_score(td, truth, horizon)
    gate = registry.promotion_gate(score, champion_score, cfg.models.gate_margin)
    losses = losses_to_heuristic(reports)
    if losses:  # promoted or not, the gate's reason says it
        gate = replace(gate, reason=f"{gate.reason}; warning: {'; '.join(losses)}")
    blocked = (
        model_safety.promotion_problem(data_dir, fs, bundle, online) if gate.promoted else None
    )
    if blocked:
        gate = replace(gate, promoted=False, reason=f"not promoted: {blocked}")
    version = _log_bundle_run(bundle, reports, td, tracking, run_ids, gate)
    model_safety.record_checksum(version[0])  # before any alias points at it
    run_ids["bundle"] = version[1]
    registry.set_alias(version[0], registry.CHALLENGER)
    if gate.promoted:
        registry.set_alias(version[0], registry.CHAMPION)
    return TrainResult(bundle, reports, run_ids, version[0], gate, td)


def _why_nothing(skipped: dict[str, str]) -> str:
    """Each family's reason, a reason shared by several said once (`purchase, value: ...`)."""
    by_reason: dict[str, list[str]] = {}
    for family, reason in skipped.items():
        by_reason.setdefault(reason, []).append(family)
    return "; ".join(f"{', '.join(fams)}: {reason}" for reason, fams in by_reason.items())


def _has_customers(con: duckdb.DuckDBPyConnection) -> bool:
    names = {
        r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()
    }
    return "customers" in names


def _champion_score(td: TrainingData, truth, horizon: float) -> float | None:
    """The current champion's gate score on this run's test window (None if no champion)."""
    if registry.alias_version(registry.CHAMPION) is None:
        return None
    champion = mlflow.pyfunc.load_model(registry.model_uri(registry.CHAMPION))
    bundle = champion.unwrap_python_model().bundle
    return gate_score(evaluate_bundle(bundle, td, truth, horizon, with_figures=False))


def _log_bundle_run(
    bundle: ModelBundle,
    reports: dict[str, FamilyReport],
    td: TrainingData,
    tracking: registry.Tracking,
    run_ids: dict[str, str],
    gate: registry.GateDecision,
) -> tuple[str, str]:
    exp_id = registry.experiment("nba-bundle", tracking)
    with mlflow.start_run(experiment_id=exp_id, run_name="bundle") as run:
        mlflow.log_params({f"{k}_run_id": v for k, v in run_ids.items()})
        mlflow.log_params({f"skipped_{k}": v[:250] for k, v in bundle.skipped.items()})
        for family, report in reports.items():
            mlflow.log_metrics({f"{family}_{k}": v for k, v in report.flat().items()})
        mlflow.log_metric("gate_score", gate.new_score)
        if gate.champion_score is not None:
            mlflow.log_metric("champion_gate_score", gate.champion_score)
        mlflow.set_tags({"gate_promoted": str(gate.promoted), "gate_reason": gate.reason})
        source = td.contacts.test if td.contacts is not None else td.snapshots.test
        cols = [*bundle.customer_features, CHANNEL, ACTION_ID]
        example = source.reindex(columns=cols).head(5)
        if CHANNEL not in source.columns:
            example[CHANNEL] = "email"
            example[ACTION_ID] = None
        with tempfile.TemporaryDirectory() as tmp:
            path = bundle.save(Path(tmp))
            mlflow.log_text(json.dumps(bundle.trained_on, default=str, indent=1), "trained_on.json")
            info = mlflow.pyfunc.log_model(
                name="bundle",
                python_model=BundlePyfunc(),
                artifacts={"bundle": str(path)},
                signature=_signature(example, bundle.predict(example)),
                input_example=example,
                pip_requirements=pip_requirements(),
                registered_model_name=registry.BUNDLE_MODEL_NAME,
            )
        return str(info.registered_model_version), run.info.run_id


__all__ = ["train", "TrainResult", "CUSTOMER_ID"]
