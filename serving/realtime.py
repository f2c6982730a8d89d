"""Real-time decisions: customer key -> online store row -> arrays -> the policy -> a record.

No DataFrame on the way: the online store's feature vector becomes the float block of a one-row
`FrameArrays`, which the same `DecisionPolicy.decide` reads as it reads a batch's frame, and the
answer is built from the decision's numpy columns. An unknown customer is decided on the
features of a customer with no history (the models' population prior for a newcomer), under the
same hard rules: with no consent on record, only actions that need none can be chosen.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import pandas as pd

from features.ingest.contract import CUSTOMER_ID, KEY_SEPARATOR
from features.ingest.identity import customer_id_of
from features.store.online_store import OnlineRow, OnlineStoreBase
from serving.catalogue import NOTHING
from serving.policy import HOLDOUT, DecisionPolicy, Decisions
from training.encoding import FrameArrays
from training.model_safety import definitions_problem, missing_features

MAX_REASONS = 3  # per recommended action


class FeatureListMismatch(RuntimeError):
    """The bundle needs feature columns the online store does not compute."""


@dataclass(frozen=True)
class Customer:
    """Who a request is about: the key as given, the customer_id, and whether it is known."""

    key: str
    customer_id: str
    known: bool


@dataclass(frozen=True)
class Recommendation:
    """One real-time decision as plain values: what the service answers and logs."""

    decision: dict[str, object]  # the decision's record (one row of the decision table)
    actions: list[dict[str, object]]  # ranked allowed candidates, do nothing where it ranks
    customer: Customer
    requesting_channel: str
    context: dict[str, object]
    version: bytes | None = None  # the customer's stored state it was decided on


class RealtimeDecider:
    """The policy over the online store, one customer per call; thread-safe."""

    def __init__(self, policy: DecisionPolicy, store: OnlineStoreBase) -> None:
        self.policy = policy
        self.store = store
        missing = missing_features(policy.bundle, store)
        if missing:
            raise FeatureListMismatch(
                f"the champion bundle needs {len(missing)} feature columns the online store "
                f"{store.location} does not hold (e.g. {', '.join(missing[:5])}): the bundle was "
                "trained with other feature definitions or a customers table the store lacks; "
                "re-materialise the store (`nba features --materialize`) or retrain"
            )
        problem = definitions_problem(policy.bundle, store.fs, store.location)
        if problem:
            raise FeatureListMismatch(
                f"the champion bundle cannot run on this online store: {problem}; re-materialise "
                "the store (`nba features --materialize`) or retrain"
            )
        self._names = list(store.fs.names)
        self._profile = store.profile_names
        self._rng = np.random.default_rng(policy.cfg.exploration.seed)
        self._rng_lock = threading.Lock()  # a Generator is not thread-safe

    # ------------------------------------------------------------------ customers

    def customer(self, key: str) -> Customer:
        """A customer_id or any `type:value` identifier; an unknown identifier gets the id
        identity resolution would give it (and the store gives it with its first event)."""
        found = self.store.resolve(key)
        if found is not None:
            return Customer(key, found, True)
        if KEY_SEPARATOR not in key and self.store.knows(key):
            return Customer(key, key, True)  # a customer_id
        return Customer(key, customer_id_of(key), False)

    def row(self, customer: Customer, as_of_us: int | None = None) -> OnlineRow:
        found = self.store.read_row(customer.customer_id, as_of_us) if customer.known else None
        return found or self.store.new_customer_row(customer.customer_id, as_of_us)

    def arrays(self, row: OnlineRow) -> FrameArrays:
        """One customer's online row as the arrays a decision reads: the derived features and
        numeric profile values in the float block, text and times as one-row arrays."""
        float_names = list(self._names)
        others: dict[str, np.ndarray] = {CUSTOMER_ID: np.array([row.customer_id], dtype=object)}
        extra: list[float] = []
        for name, value in zip(self._profile, row.profile, strict=True):
            if isinstance(value, datetime):
                t = pd.Timestamp(value)
                others[name] = np.array([t.tz_convert(None) if t.tzinfo else t]).astype(
                    "datetime64[us]"
                )
            elif isinstance(value, float | int) and not isinstance(value, bool):
                float_names.append(name)
                extra.append(float(value))
            else:
                others[name] = np.array([value], dtype=object)
        block = np.empty((1, len(float_names)), order="F")
        block[0, : len(row.features)] = row.features
        block[0, len(row.features) :] = extra
        return FrameArrays(block, {c: j for j, c in enumerate(float_names)}, others)

    # ------------------------------------------------------------------ deciding

    def decide(self, arrays: FrameArrays, as_of_us: int, reasons: bool = True) -> Decisions:
        """The policy's real-time decision on one customer's arrays."""
        as_of = pd.Timestamp(as_of_us, unit="us", tz="UTC")
        with self._rng_lock:  # one random stream for the process: decisions draw in turn
            return self.policy.decide(
                arrays, as_of=as_of, immediate=True, reasons=reasons, rng=self._rng
            )

    def recommend(
        self,
        key: str,
        channel: str,
        k: int = 3,
        explain: bool = True,
        context: dict[str, object] | None = None,
        as_of_us: int | None = None,
    ) -> Recommendation:
        """The ranked allowed actions for `key` now (or at `as_of_us`), best first."""
        customer = self.customer(key)
        row = self.row(customer, as_of_us)
        arrays = self.arrays(row)
        decisions = self.decide(arrays, row.as_of_us, reasons=False)
        record = decisions.record(0)
        ranked = [c for c in decisions.candidates(0) if math.isfinite(c["score"])][:k]
        if explain:
            self._add_reasons(ranked, record, arrays)
        if record["logged_as"] == HOLDOUT:
            record["reason_1"] = "held out as the randomized control: do not contact"
        return Recommendation(record, ranked, customer, channel, dict(context or {}), row.version)

    def _add_reasons(
        self, ranked: list[dict[str, object]], record: dict[str, object], arrays: FrameArrays
    ) -> None:
        """The decision's reason_1..n as the batch path gives them, and up to three reasons per
        recommended action, from one SHAP call for the chosen action and the ranked ones."""
        chosen = str(record["action_id"])
        acted = [chosen] if chosen != NOTHING else []
        acted += [str(c["action_id"]) for c in ranked if c["action_id"] not in (NOTHING, chosen)]
        reasons: dict[str, list[str]] = {}
        if acted:
            found, models = self.policy.explain(arrays, np.zeros(len(acted), np.int64), acted)
            reasons = {a: [r.text for r in f] for a, f in zip(acted, found, strict=True)}
        n = self.policy.cfg.reasons
        if chosen == NOTHING:
            texts = [self.policy.nothing_reason(int(record["eligible_actions"]))]
            record["reasons_from"] = ""
        else:
            texts = reasons[chosen]
            record["reasons_from"] = models[0]
        for i in range(n):
            record[f"reason_{i + 1}"] = texts[i] if i < len(texts) else ""
        for c in ranked:
            if c["action_id"] == NOTHING:
                c["reasons"] = ["doing nothing costs nothing and earns no uplift"]
            else:
                c["reasons"] = reasons[str(c["action_id"])][:MAX_REASONS]
