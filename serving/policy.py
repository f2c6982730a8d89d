"""The decision policy: one implementation for real-time requests and batch campaigns.

decide(features) = hard rules (contact_policy) -> scores (arbitration) -> choice (exploration)
-> capacity (batch) -> randomized holdout -> send hour and reasons. Vectorised over customers;
every decision carries its id, the probability it was chosen with, and the model and policy
versions, so it can be logged as a `sent`/`holdout` event and learned from (the closed loop).
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from features.config import DataConfig
from features.errors import UserError
from features.ingest.contract import CUSTOMER_ID
from features.store.batch import AS_OF
from serving.arbitration import ScoredActions, score_actions
from serving.catalogue import NOTHING, Catalogue, load_catalogue
from serving.config import PolicyConfig
from serving.contact_policy import Eligibility, check_columns, eligibility, send_hours
from serving.exploration import choice_probabilities, sample, with_nothing
from serving.reasons import FeatureWords, Reason, explain
from training.bundle import ModelBundle
from training.encoding import FrameArrays, column_values

CAPACITY = "capacity of the run reached"
NONE_ALLOWED = "no action is allowed now (consent, caps or rules)"
NOT_WORTH_IT = "no allowed action's expected incremental profit covers its cost"
SENT, HOLDOUT = "sent", "holdout"


@dataclass
class Decisions:
    """One decision per customer (`columns`, as a frame in `table`), plus every candidate's
    components for inspection. A real-time request reads `record` and `candidates` and never
    builds a frame."""

    columns: dict[str, np.ndarray]
    scored: ScoredActions
    eligibility: Eligibility
    probabilities: np.ndarray  # customers x [nothing, *actions]

    @cached_property
    def table(self) -> pd.DataFrame:
        table = pd.DataFrame(self.columns)
        if table[AS_OF].dt.tz is None:
            table[AS_OF] = table[AS_OF].dt.tz_localize("UTC")
        return table

    def __len__(self) -> int:
        return len(self.probabilities)

    def record(self, i: int) -> dict[str, object]:
        """Decision i as plain Python values."""
        return {name: _plain(values[i]) for name, values in self.columns.items()}

    def candidates(self, i: int) -> list[dict[str, object]]:
        """Every candidate of customer i, best first (do nothing wins ties, as in the choice):
        score, components, the probability it had, or why it was blocked."""
        s = self.scored
        score = with_nothing(s.score[i : i + 1])[0]
        order = np.argsort(-score, kind="stable")
        blocked = ["", *self.eligibility.blocked[i]]
        out = []
        for c in order.tolist():
            j = c - 1
            action = c > 0
            out.append(
                {
                    "action_id": NOTHING if not action else s.action_ids[j],
                    "channel": s.channels[j] if action else "",
                    "score": float(score[c]),
                    "probability": float(self.probabilities[i, c]),
                    "p_response": float(s.p_response[i, j]) if action else math.nan,
                    "p_purchase_treated": float(s.p_treated[i, j]) if action else math.nan,
                    "p_purchase_control": float(s.p_control[i, j]) if action else math.nan,
                    "uplift": float(s.uplift[i, j]) if action else math.nan,
                    "value": float(s.value[i, j]) if action else math.nan,
                    "margin": float(s.margin[j]) if action else math.nan,
                    "cost": float(s.cost[j]) if action else 0.0,
                    "lever": float(s.lever[j]) if action else math.nan,
                    "blocked_by": blocked[c],
                }
            )
        return out

    def ranked(self, i: int) -> pd.DataFrame:
        """Every candidate of customer i, best first: score, components, or why it was blocked."""
        return pd.DataFrame(self.candidates(i))


def _plain(v: object) -> object:
    """A numpy scalar as the Python value it holds (JSON-ready); a time as a UTC Timestamp."""
    if isinstance(v, np.datetime64):
        return pd.Timestamp(v, tz="UTC")
    return v.item() if isinstance(v, np.generic) else v


class DecisionPolicy:
    """A model bundle, an action catalogue and the contact policy, versioned together."""

    def __init__(
        self,
        bundle: ModelBundle,
        model_version: str,
        cfg: PolicyConfig,
        data: DataConfig,
        catalogue: Catalogue | None = None,
        catalogue_text: str = "",
        strict: bool = False,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """`strict`: an action the data cannot support (its channel is not outbound, a rule
        names a missing column) is an error; otherwise it is left out of every decision and
        reported once through `warn` (default: the `serving.policy` logger's warning)."""
        if catalogue is None:
            catalogue, catalogue_text = load_catalogue(cfg.catalogue)
        self.strict = strict
        self.warn = warn or logging.getLogger(__name__).warning
        self.left_out: dict[str, str] = {}  # action id -> why it was left out of the run
        self.bundle = bundle
        self.model_version = str(model_version)
        self.version = cfg.fingerprint(catalogue_text)
        self.cfg = caps_on_configured_channels(cfg, data)
        self.data = data
        self.catalogue = catalogue
        self.words = FeatureWords(data)
        self._checked: tuple[str, ...] = ()

    def decide(
        self,
        features: pd.DataFrame | FrameArrays,
        as_of: pd.Timestamp | pd.Series | None = None,
        immediate: bool = False,
        reasons: bool = True,
        rng: np.random.Generator | None = None,
    ) -> Decisions:
        """Decide for every row of `features` (customer_id, as_of, feature columns): a frame
        (a batch) or its arrays (a real-time request: no frame is built on the way).

        `immediate`: a real-time request (quiet hours apply now); otherwise a batch run, where
        actions' `max_per_run` capacities apply and send hours avoid quiet hours.
        """
        if rng is None:
            rng = np.random.default_rng(self.cfg.exploration.seed)
        if as_of is None:
            as_of = (
                features[AS_OF]
                if isinstance(features, pd.DataFrame)
                else pd.Series(features.column(AS_OF))
            )
        self._check_columns(features.columns)
        if isinstance(features, pd.DataFrame):
            features = features.reset_index(drop=True)
        if isinstance(as_of, pd.Series):
            as_of = as_of.reset_index(drop=True)
        el = eligibility(
            features,
            as_of,
            self.catalogue,
            self.cfg.contact_policy,
            self.data,
            immediate,
            check=False,  # _check_columns did
        )
        scored = score_actions(self.bundle, features, self.catalogue, el.allowed, self.cfg.scoring)
        probs = choice_probabilities(scored.score, self.cfg.exploration)
        picked = sample(probs, rng)
        if not immediate:
            picked, probs = self._apply_capacity(scored, el, picked, probs, rng)
        columns = self._table(features, as_of, scored, probs, picked, rng)
        if reasons and self.cfg.reasons:
            self._add_reasons(columns, features)
        return Decisions(columns, scored, el, probs)

    def _check_columns(self, columns: list[str] | pd.Index) -> None:
        """The catalogue's rules against the feature columns, once per set of columns: an
        action the data cannot support is left out (reported once) or, strict, an error."""
        key = tuple(columns)
        if key != self._checked:
            problems = self.catalogue.unusable(self.data, list(key))
            if problems and self.strict:
                action_id, why = next(iter(problems.items()))
                raise UserError(f"action {action_id!r}: {why} (strict catalogue check)")
            if problems and len(problems) == len(self.catalogue.actions):
                raise UserError(
                    "no action of the catalogue fits this data: "
                    + "; ".join(f"{a}: {why}" for a, why in problems.items())
                    + " (policy.catalogue names the catalogue; README: a minimal catalogue)"
                )
            by_reason: dict[str, list[str]] = {}
            for action_id, why in problems.items():
                self.left_out[action_id] = why
                by_reason.setdefault(why, []).append(action_id)
            for why, ids in by_reason.items():
                self.warn(f"left out of this run: action(s) {', '.join(ids)}: {why}")
            if problems:
                self.catalogue = self.catalogue.without(set(problems))
            self.catalogue.check_against(self.data, list(key))
            check_columns(list(key), self.catalogue, self.cfg.contact_policy)
            self._checked = key

    def _apply_capacity(
        self,
        scored: ScoredActions,
        el: Eligibility,
        picked: np.ndarray,
        probs: np.ndarray,
        rng: np.random.Generator,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Keep each action's best-scoring takers up to its capacity; the rest choose again."""
        for _ in range(len(self.catalogue.actions)):
            over = False
            for j, action in enumerate(self.catalogue.actions):
                if action.max_per_run is None:
                    continue
                takers = np.flatnonzero(picked == j + 1)
                if len(takers) <= action.max_per_run:
                    continue
                over = True
                by_score = takers[np.argsort(-scored.score[takers, j], kind="stable")]
                refused = by_score[action.max_per_run :]
                scored.score[refused, j] = -np.inf
                el.allowed[refused, j] = False
                el.blocked[refused, j] = CAPACITY
                # full capacity: nobody else may take it either
                others = np.setdiff1d(
                    np.flatnonzero(el.allowed[:, j]), by_score[: action.max_per_run]
                )
                scored.score[others, j] = -np.inf
                el.allowed[others, j] = False
                el.blocked[others, j] = CAPACITY
                probs[refused] = choice_probabilities(scored.score[refused], self.cfg.exploration)
                picked[refused] = sample(probs[refused], rng)
            if not over:
                break
        return picked, probs

    def _table(
        self,
        features: pd.DataFrame | FrameArrays,
        as_of: pd.Timestamp | pd.Series,
        s: ScoredActions,
        probs: np.ndarray,
        picked: np.ndarray,
        rng: np.random.Generator,
    ) -> dict[str, np.ndarray]:
        n = len(features)
        rows = np.arange(n)
        acted = picked > 0
        j = np.where(acted, picked - 1, 0)
        ids = np.array([NOTHING, *s.action_ids], dtype=object)
        channels = np.array(["", *s.channels], dtype=object)

        holdout = acted & (rng.random(n) < self.cfg.exploration.holdout_share)
        p = probs[rows, picked]
        h = self.cfg.exploration.holdout_share
        hours = send_hours(
            features,
            s.channels,
            self.cfg.default_send_hour,
            self.cfg.contact_policy,
            self.data,
        )
        second = np.argsort(-with_nothing(s.score), axis=1, kind="stable")[:, 1]
        run = uuid.uuid4().hex[:12]
        if isinstance(as_of, pd.Series):
            as_of_col = pd.to_datetime(as_of, utc=True).array  # not an object array of Timestamps
        else:
            # naive UTC in numpy (a pandas time array costs 0.1 ms); `table` makes it UTC-aware
            as_of_col = np.full(n, pd.to_datetime(as_of, utc=True).tz_convert(None).asm8)
        return dict(
            {
                "decision_id": np.array([f"d-{run}-{i:08d}" for i in range(n)], dtype=object),
                CUSTOMER_ID: np.asarray(column_values(features, CUSTOMER_ID)),
                AS_OF: as_of_col,
                "action_id": ids[picked],
                "channel": channels[picked],
                **s.chosen(j, acted),
                "send_hour": np.where(acted, hours[rows, j], -1),
                "propensity": p,
                "logged_as": np.where(acted, np.where(holdout, HOLDOUT, SENT), ""),
                "logged_propensity": np.where(holdout, p * h, np.where(acted, p * (1 - h), p)),
                "runner_up": ids[second],
                "runner_up_score": with_nothing(s.score)[rows, second],
                "eligible_actions": np.isfinite(s.score).sum(axis=1),
                "scoring": np.full(n, self.cfg.scoring, dtype=object),
                "model_version": np.full(n, self.model_version, dtype=object),
                "policy_version": np.full(n, self.version, dtype=object),
            }
        )

    def _add_reasons(
        self, table: dict[str, np.ndarray], features: pd.DataFrame | FrameArrays
    ) -> None:
        """reason_1..k for each decision: the deciding model's top contributions, or why nothing."""
        k = self.cfg.reasons
        n = len(table[CUSTOMER_ID])
        texts = np.full((n, k), "", dtype=object)
        model = np.full(n, "", dtype=object)
        chosen = table["action_id"]
        acted = np.flatnonzero(chosen != NOTHING)
        if len(acted):
            found, model[acted] = self.explain(features, acted, chosen[acted])
            for r, reasons in zip(acted, found, strict=True):
                texts[r, : len(reasons)] = [x.text for x in reasons]
        nothing = np.flatnonzero(chosen == NOTHING)
        none_eligible = table["eligible_actions"][nothing] == 0
        texts[nothing, 0] = np.where(none_eligible, NONE_ALLOWED, NOT_WORTH_IT)
        for i in range(k):
            table[f"reason_{i + 1}"] = texts[:, i]
        table["reasons_from"] = model

    @staticmethod
    def nothing_reason(eligible_actions: int) -> str:
        """Why "do nothing" was the answer: nothing was allowed, or nothing was worth it."""
        return NONE_ALLOWED if eligible_actions == 0 else NOT_WORTH_IT

    def explain(
        self, features: pd.DataFrame | FrameArrays, rows: np.ndarray, action_ids: np.ndarray
    ) -> tuple[list[list[Reason]], np.ndarray]:
        """The top reasons for giving customer rows[i] the action action_ids[i], and which model
        gave them: one SHAP call per deciding model for all of them."""
        taken = features.iloc[rows] if isinstance(features, pd.DataFrame) else features.take(rows)
        channel_of = {a.id: a.channel for a in self.catalogue.actions}
        ids, at = np.unique(np.asarray(action_ids, dtype=object), return_inverse=True)
        channels = np.array([channel_of[a] for a in ids], dtype=object)[at]
        return explain(
            self.bundle,
            self.cfg.scoring,
            taken,
            channels,
            ids[at],
            self.words,
            self.cfg.reasons,
        )


def caps_on_configured_channels(cfg: PolicyConfig, data: DataConfig) -> PolicyConfig:
    """The policy without contact caps on channels the data configuration does not have (the
    default caps name e-mail, SMS, push and direct mail; a bank's call-only data has none)."""
    policy = cfg.contact_policy
    caps = [c for c in policy.caps if c.channel is None or c.channel in data.channel_names]
    if len(caps) == len(policy.caps):
        return cfg
    return cfg.model_copy(update={"contact_policy": policy.model_copy(update={"caps": caps})})


def load_policy(
    data_dir: Path,
    cfg: PolicyConfig,
    data: DataConfig,
    alias: str = "champion",
    strict: bool = False,
    warn: Callable[[str], None] | None = None,
) -> DecisionPolicy:
    """The policy over the bundle registered under `alias` (models versioned together), its
    files checked against the checksum recorded at registration; `strict` and `warn` as in
    DecisionPolicy."""
    from training import registry
    from training.model_safety import load_verified

    registry.configure_tracking(data_dir)
    version = registry.alias_version(alias)
    if version is None:
        raise NoBundle(
            f"no model bundle has the alias `{alias}` in {registry.BUNDLE_MODEL_NAME}: run "
            "`nba train` first"
        )
    bundle = load_verified(version)
    return DecisionPolicy(bundle, version, cfg, data, strict=strict, warn=warn)


class NoBundle(UserError, LookupError):
    """No registered bundle behind the alias: `nba train` has not run (or not promoted)."""
