"""What the service runs, without the HTTP: the champion policy over the online store, opened
once, checked at start-up, and the three operations (recommend, events, score) as plain calls.

`serving/service.py` puts it behind BentoML; tests and benchmarks can also call it in-process.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from features.config import (
    DataConfig,
    OnlineStoreConfig,
    load_data_config,
    load_online_store_config,
    load_section,
)
from features.ingest.contract import CUSTOMER_ID, KEY_SEPARATOR, DataDir
from features.ingest.privacy import MissingSecret
from features.store.definitions import FeatureConfig, FeatureSet
from features.store.online_store import (
    CONFLICT,
    DefinitionMismatch,
    OnlineStoreBase,
    online_store_exists,
    online_store_location,
    open_online_store,
)
from features.store.redis_online_store import OnlineStoreUnavailable
from serving.api_models import (
    Components,
    CustomerRef,
    EventIn,
    EventResult,
    EventsResponse,
    RankedAction,
    RecommendResponse,
    ScoreDecision,
    ScoreResponse,
)
from serving.catalogue import NOTHING
from serving.config import ServiceConfig, load_policy_config, load_service_config
from serving.decision_log import RealtimeDecisionLog
from serving.erasure import ErasureReport, PrivacyGate, forget
from serving.policy import HOLDOUT, SENT, DecisionPolicy, load_policy
from serving.realtime import Customer, FeatureListMismatch, RealtimeDecider, Recommendation

if TYPE_CHECKING:
    from serving.bento import PackedBundle

TOKEN_VARIABLE = "NBA_API_TOKEN"
COMPONENTS = list(Components.model_fields)
# decisions made again when another request changed the customer before the contact was
# recorded; each try is a new decision on the new state
RESERVE_ATTEMPTS = 20


class StartupError(RuntimeError):
    """The service cannot start; the message says what is missing, in one line."""


class RequestError(ValueError):
    """A well-formed request the service cannot answer: a 4xx naming the field."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.status = status


@dataclass
class ServingRuntime:
    data_dir: DataDir
    data: DataConfig
    service: ServiceConfig
    policy: DecisionPolicy
    store: OnlineStoreBase
    decider: RealtimeDecider
    decisions: RealtimeDecisionLog
    token: str | None
    gate: PrivacyGate  # clear identifiers hashed, erased ones turned away (serving/erasure.py)
    online: OnlineStoreConfig | None = None

    @classmethod
    def open(
        cls, data_dir: Path, config: Path | None = None, packed: PackedBundle | None = None
    ) -> ServingRuntime:
        """Load the champion bundle (or serve `packed`, the bundle a Bento carries) and open
        the online store, or say in one line why not."""
        data_dir = Path(data_dir)
        if not data_dir.is_dir():
            raise StartupError(f"data directory {data_dir} does not exist")
        dd = DataDir(data_dir)
        try:
            data = load_data_config(config)
            features = load_section(config, "features", FeatureConfig)
            policy_cfg = load_policy_config(config)
            service = load_service_config(config)
            online = load_online_store_config(config)
        except (ValueError, FileNotFoundError) as exc:
            raise StartupError(f"configuration: {exc}".replace("\n", " ")) from exc
        token = os.environ.get(TOKEN_VARIABLE) or None
        if service.writes_enabled and token is None:
            raise StartupError(
                f"no bearer token: set {TOKEN_VARIABLE} (writes need it), or set "
                "service.writes_enabled: false in the configuration"
            )
        try:
            if not online_store_exists(dd, online):
                raise StartupError(
                    f"no online store at {online_store_location(dd, online)}: run `nba features "
                    f"--data {data_dir} --materialize` first"
                )
            store = open_online_store(
                dd, FeatureSet(data, features), online, synchronous=service.durability
            )
        except DefinitionMismatch as exc:
            raise StartupError(str(exc).split(". ")[0]) from exc
        except OnlineStoreUnavailable as exc:
            raise StartupError(str(exc)) from exc
        if store.materializing:
            store.close()
            raise StartupError(
                f"the online store at {store.location} is being materialised or its last "
                f"materialisation did not finish: wait, or run `nba features --data {data_dir} "
                "--materialize` again"
            )
        try:
            if packed is None:
                policy = load_policy(data_dir, policy_cfg, data)
            else:
                policy = DecisionPolicy(packed.bundle, packed.version, policy_cfg, data)
        except LookupError as exc:
            raise StartupError(str(exc)) from exc
        try:
            decider = RealtimeDecider(policy, store)
        except FeatureListMismatch as exc:
            raise StartupError(str(exc)) from exc
        try:
            gate = PrivacyGate(dd, data)
        except ValueError as exc:
            raise StartupError(str(exc)) from exc
        log = RealtimeDecisionLog(dd)
        return cls(dd, data, service, policy, store, decider, log, token, gate, online)

    def close(self) -> None:
        self.decisions.close()
        self.store.close()

    # ------------------------------------------------------------------ recommend

    def check_channel(self, channel: str) -> None:
        if channel not in self.data.channel_names:
            raise RequestError(
                "channel",
                f"unknown channel {channel!r}: expected one of {self.data.channel_names}",
            )

    def recommend(
        self,
        customer: str,
        channel: str,
        k: int = 3,
        explain: bool = True,
        context: dict[str, object] | None = None,
        reserve: bool | None = None,
    ) -> RecommendResponse:
        """The decision for `customer` now. A contact is recorded as its `sent` event before the
        answer (`service.reserve_contacts`, or `reserve`), only on the state it was decided on;
        a held-out decision logs its `holdout` event. `reserve=False` previews (the 360 view)."""
        self.check_channel(channel)
        customer = self.lookup_key(customer)
        reserve = self.service.reserve_contacts if reserve is None else reserve
        for _ in range(RESERVE_ATTEMPTS):
            rec = self.decider.recommend(customer, channel, k=k, explain=explain, context=context)
            outcome = _outcome(rec.decision)
            if outcome == "holdout":
                self._record(rec, HOLDOUT, conditional=False)
            if outcome != "contact" or not reserve or self._record(rec, SENT, conditional=True):
                break
        else:
            raise RequestError(
                "customer",
                f"the customer's state changed under {RESERVE_ATTEMPTS} decisions in a row (other "
                "requests for the same customer): try again",
                status=409,
            )
        d = rec.decision
        chosen = d["action_id"]
        actions = [
            RankedAction(
                action_id=c["action_id"],
                channel=c["channel"],
                score=c["score"],
                chosen=c["action_id"] == chosen,
                probability=c["probability"],
                components=_components(c),
                reasons=c.get("reasons", []),
            )
            for c in rec.actions
        ]
        self.decisions.append(
            {**d, "customer_key": customer, "requesting_channel": channel, "context": context}
        )
        return RecommendResponse(
            decision_id=d["decision_id"],
            customer=_customer_ref(rec.customer),
            requesting_channel=channel,
            as_of=pd.Timestamp(d["as_of"]).isoformat(),
            action_id=chosen,
            channel=d["channel"],
            outcome=outcome,
            send_hour=None if chosen == NOTHING else int(d["send_hour"]),
            propensity=d["propensity"],
            logged_propensity=d["logged_propensity"],
            actions=actions,
            reasons=_reasons(d),
            scoring=d["scoring"],
            model_version=d["model_version"],
            policy_version=d["policy_version"],
            context=context,
        )

    def _event_key(self, customer: Customer) -> str | None:
        """An identifier to record a customer's event under: the store's first, or the key
        asked with; None for an unknown bare customer_id."""
        ids = self.store.identifiers(customer.customer_id) if customer.known else []
        if ids:
            return ids[0]
        return customer.key if KEY_SEPARATOR in customer.key else None

    def _record(self, rec: Recommendation, event_type: str, conditional: bool) -> bool:
        """Log the decision's `sent` or `holdout` event (event_id = decision id). Conditional:
        only while the customer's state is the one decided on; False when it changed."""
        d = rec.decision
        key = self._event_key(rec.customer)
        if key is None:
            return True  # nobody to record it for: a customer_id the store has never seen
        event = {
            "event_id": d["decision_id"],
            "ts": pd.Timestamp(d["as_of"]).isoformat(),
            "customer_key": key,
            "channel": d["channel"],
            "event_type": event_type,
            "action_id": d["action_id"],
            "propensity": d["logged_propensity"],
        }
        expect = {rec.customer.customer_id: rec.version} if conditional else None
        report = self.store.apply_records([event], log=True, expect=expect)
        if report.applied == 1:
            return True
        if report.by_reason == {CONFLICT: 1}:
            return False
        reason = ", ".join(report.by_reason)
        raise RequestError(
            "customer", f"the decision's {event_type} event for {key!r} was refused: {reason}"
        )

    # ------------------------------------------------------------------ events

    def lookup_key(self, key: str) -> str:
        """A customer key as the stores hold it: a clear e-mail or phone hashed."""
        try:
            return self.gate.key(key)
        except MissingSecret as exc:
            raise RequestError("customer", str(exc)) from exc

    def forget(self, key: str) -> ErasureReport:
        """Erase the person known by `key` everywhere (serving/erasure.py); the decision log
        is closed and held meanwhile, so no decision is written into a file being rewritten."""
        with self.decisions.closed():
            return forget(self.data_dir, key, self.data, self.store, self.online)

    def events(self, events: list[EventIn]) -> EventsResponse:
        records = [e.model_dump(exclude_none=True) for e in events]
        # clear identifiers hashed in place; an erased person's events turned away
        screened = self.gate.screen(records, self.store)
        kept = [i for i in range(len(records)) if i not in screened]
        report = self.store.apply_records([records[i] for i in kept], log=True)
        reasons = {kept[j]: r for j, r in report.rejected_rows} | screened
        by_reason = dict(report.by_reason)
        for r in screened.values():
            by_reason[r] = by_reason.get(r, 0) + 1
        results = [
            EventResult(
                index=i,
                event_id=r.get("event_id"),
                status="rejected" if i in reasons else "accepted",
                reason=reasons.get(i),
            )
            for i, r in enumerate(records)
        ]
        return EventsResponse(
            received=len(records),
            accepted=report.applied,
            rejected=report.n_rejected + len(screened),
            by_reason=by_reason,
            results=results,
        )

    # ------------------------------------------------------------------ score

    def score(self, customers: list[str], explain: bool = True) -> ScoreResponse:
        """The batch path's decisions for many customers at once: one feature frame from the
        online store, one `decide` over it (capacities apply, as in `nba decide`)."""
        if not customers:
            raise RequestError("customers", "expected at least one customer")
        refs = [self.decider.customer(key) for key in customers]
        now = time.time_ns() // 1000
        known = [r.customer_id for r in refs if r.known]
        frame = self.store.read_many(known) if known else None
        missing = [r.customer_id for r in refs if not r.known or r.customer_id not in _ids(frame)]
        if missing:
            cold = [self.store.new_customer_row(c, now) for c in dict.fromkeys(missing)]
            frame = _with_cold_rows(frame, cold, self.store)
        frame = frame.drop_duplicates(CUSTOMER_ID).reset_index(drop=True)
        as_of = frame["as_of"].max()
        decisions = self.policy.decide(frame, reasons=explain)  # each at its row's as_of
        table = decisions.table.set_index(CUSTOMER_ID)
        out = []
        for ref in refs:
            d = {k: _plain(v) for k, v in table.loc[ref.customer_id].items()}
            d[CUSTOMER_ID] = ref.customer_id
            out.append(
                ScoreDecision(
                    decision_id=d["decision_id"],
                    customer=_customer_ref(ref),
                    action_id=d["action_id"],
                    channel=d["channel"],
                    outcome=_outcome(d),
                    score=d["score"],
                    send_hour=None if d["action_id"] == NOTHING else int(d["send_hour"]),
                    propensity=d["propensity"],
                    logged_propensity=d["logged_propensity"],
                    components=_components(d),
                    reasons=_reasons(d),
                )
            )
        first = decisions.columns
        return ScoreResponse(
            as_of=pd.Timestamp(as_of).isoformat(),
            customers=len(out),
            decisions=out,
            scoring=str(first["scoring"][0]),
            model_version=str(first["model_version"][0]),
            policy_version=str(first["policy_version"][0]),
        )


def _ids(frame: pd.DataFrame | None) -> set[str]:
    return set() if frame is None else set(frame[CUSTOMER_ID])


def _with_cold_rows(frame: pd.DataFrame | None, rows: list, store: OnlineStoreBase) -> pd.DataFrame:
    """The known customers' frame plus the no-history rows of unknown ones, in its layout."""
    cold = pd.DataFrame(np.vstack([r.features for r in rows]), columns=list(store.fs.names))
    cold.insert(0, "as_of", pd.to_datetime([r.as_of_us for r in rows], unit="us", utc=True))
    cold.insert(0, CUSTOMER_ID, [r.customer_id for r in rows])
    for name in store.profile_names:
        cold[name] = np.nan
    if frame is None:
        return cold
    return pd.concat([frame, cold], ignore_index=True)


def _plain(v: object) -> object:
    return v.item() if isinstance(v, np.generic) else v


def _finite(v: object) -> float | None:
    x = float(v)
    return x if math.isfinite(x) else None


def _components(c: dict[str, object]) -> Components:
    values = {name: _finite(c[name]) for name in COMPONENTS}
    values["cost"] = values["cost"] or 0.0
    return Components(**values)


def _outcome(d: dict[str, object]) -> str:
    if d["logged_as"] == SENT:
        return "contact"
    return "holdout" if d["logged_as"] == HOLDOUT else "nothing"


def _reasons(d: dict[str, object]) -> list[str]:
    return [str(d[c]) for c in sorted(d) if c.startswith("reason_") and d[c]]


def _customer_ref(c: Customer) -> CustomerRef:
    return CustomerRef(key=c.key, customer_id=c.customer_id, known=c.known)
