"""Hard rules, never broken: consent, contact caps, cool-down, quiet hours, eligibility, dates.

Vectorised over customers x actions. The inputs are the point-in-time features at decision time
(consent state, exact contact counts in the cap windows, days since the last opt-out), so the
batch path and the online store apply the same rules to the same numbers. A decision is one more
contact, so a cap of k allows a contact only while the window holds fewer than k.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date

import numpy as np
import pandas as pd

from features.config import DataConfig
from features.errors import UserError
from serving.catalogue import Catalogue
from serving.config import Cap, ContactPolicy
from training.encoding import FrameArrays

# why an action is not allowed, in the order the rules are checked (the first one is reported)
NOT_LIVE = "action not live on the decision date"
NO_CONSENT = "no consent on the channel"
COOLDOWN = "cool-down after an unsubscribe or complaint"
QUIET = "quiet hours on a real-time channel"


def cap_column(cap: Cap) -> str:
    """The feature holding the exact contact count a cap is checked on."""
    return f"{cap.channel or 'all'}_contact_count_{cap.window_days}d"


def cap_reason(cap: Cap) -> str:
    where = f"{cap.channel} contacts" if cap.channel else "contacts on all channels"
    return f"cap: {cap.max_contacts} {where} in {cap.window_days} days reached"


def consent_column(channel: str) -> str:
    return f"{channel}_consent"


COOLDOWN_COLUMN = "all_negative_days_since"


def required_columns(catalogue: Catalogue, policy: ContactPolicy) -> list[str]:
    cols = {COOLDOWN_COLUMN}
    cols |= {cap_column(c) for c in policy.caps}
    if policy.require_consent:
        cols |= {consent_column(a.channel) for a in catalogue.actions}
    cols |= {r.feature for a in catalogue.actions for r in a.rules}
    return sorted(cols)


def check_columns(frame_columns: list[str], catalogue: Catalogue, policy: ContactPolicy) -> None:
    """Fail loudly if the features lack what a rule needs (e.g. a cap window not computed)."""
    missing = [c for c in required_columns(catalogue, policy) if c not in set(frame_columns)]
    if missing:
        raise UserError(
            f"the contact policy needs feature columns {missing}; a cap's window_days must be "
            "one of features.fatigue_windows_days, and consent needs an outbound channel"
        )


@dataclass
class Eligibility:
    """allowed[i, a]: action a may be taken for customer i; blocked[i, a]: why not ('' if allowed)."""

    allowed: np.ndarray
    blocked: np.ndarray


def local_hour(ts: pd.Timestamp | pd.Series, n: int, offset_hours: float) -> np.ndarray:
    """Fractional hour of the customers' local day at UTC time(s) `ts` (converted by the
    caller, once per decision), one per customer."""
    if isinstance(ts, pd.Timestamp):
        return np.full(n, (ts.hour + ts.minute / 60 + offset_hours) % 24)
    minute = ts.to_numpy(dtype="datetime64[m]")  # UTC; numpy, not the .dt accessor: 100x faster
    hours = (minute - minute.astype("datetime64[D]")) / np.timedelta64(1, "h")
    return (hours + offset_hours) % 24


def _decision_days(ts: pd.Timestamp | pd.Series, n: int) -> tuple[np.ndarray, list[date]]:
    """(code per customer, the distinct decision days of UTC times `ts`): a handful of days,
    not n dates."""
    if isinstance(ts, pd.Timestamp):
        return np.zeros(n, dtype=np.int64), [ts.date()]
    days, codes = np.unique(ts.to_numpy(dtype="datetime64[D]"), return_inverse=True)
    return codes, list(days.astype(object))  # datetime.date


def _column(X: pd.DataFrame | FrameArrays, name: str) -> np.ndarray:
    if isinstance(X, pd.DataFrame):
        return X[name].to_numpy(dtype=float, na_value=np.nan)
    return np.asarray(X.column(name), dtype=float)


@dataclass(frozen=True)
class _Condition:
    """One condition that can forbid actions: what it is, and the reason a customer is told."""

    kind: str  # live, consent, cooldown, quiet, cap, rule
    reason: str
    key: object = None  # the action (live), the channel (consent), the Cap or the Rule


@dataclass(frozen=True)
class _Plan:
    """Which conditions each action checks, in order: computed once per catalogue, policy and
    mode; each decision only computes the conditions' masks."""

    conditions: list[_Condition]
    checks: np.ndarray  # actions x most checks: condition rows, padded with the never-failing row
    said: np.ndarray  # reason per condition row ('' for the padding)


_PLANS: dict[tuple, tuple[Catalogue, ContactPolicy, _Plan]] = {}


def _plan(
    catalogue: Catalogue, policy: ContactPolicy, realtime: frozenset, immediate: bool
) -> _Plan:
    key = (id(catalogue), id(policy), realtime, immediate)
    found = _PLANS.get(key)
    if found is not None and found[0] is catalogue and found[1] is policy:
        return found[2]
    conditions: list[_Condition] = []
    index: dict[tuple, int] = {}

    def row(kind: str, reason: str, key: object = None) -> int:
        # the reason names the condition, but for the live dates (per action) and consent
        name = (kind, reason, key.id if kind == "live" else key if kind == "consent" else None)
        if name not in index:
            index[name] = len(conditions)
            conditions.append(_Condition(kind, reason, key))
        return index[name]

    per_action = []
    for action in catalogue.actions:
        checks = [row("live", NOT_LIVE, action)]
        if policy.require_consent:
            checks.append(row("consent", NO_CONSENT, action.channel))
        checks.append(row("cooldown", COOLDOWN))
        if immediate and action.channel in realtime:
            checks.append(row("quiet", QUIET))
        checks += [
            row("cap", cap_reason(cap), cap)
            for cap in policy.caps
            if cap.channel in (None, action.channel)
        ]
        checks += [row("rule", f"rule: {rule.text}", rule) for rule in action.rules]
        per_action.append(checks)
    width = max(len(c) for c in per_action)
    never = len(conditions)
    table = np.array([c + [never] * (width - len(c)) for c in per_action], dtype=np.intp)
    said = np.array([c.reason for c in conditions] + [""], dtype=object)
    plan = _Plan(conditions, table, said)
    _PLANS[key] = (catalogue, policy, plan)
    return plan


def eligibility(
    features: pd.DataFrame | FrameArrays,
    as_of: pd.Timestamp | pd.Series,
    catalogue: Catalogue,
    policy: ContactPolicy,
    data: DataConfig,
    immediate: bool,
    check: bool = True,
) -> Eligibility:
    """Which actions each customer may receive at `as_of`, and the first rule that forbids the rest.

    `immediate`: the contact goes out now (a real-time request), so quiet hours apply to real-time
    channels; a batch campaign instead schedules the send outside them (see `send_hours`).
    Each condition is computed once and shared by the actions it applies to. `check=False`:
    the caller has checked the feature columns (`check_columns`) already.
    """
    if check:
        check_columns(list(features.columns), catalogue, policy)
    n = len(features)
    realtime = frozenset(c.name for c in data.channels if c.realtime)
    plan = _plan(catalogue, policy, realtime, immediate)
    as_of = pd.to_datetime(as_of, utc=True)
    day_codes, days = _decision_days(as_of, n)
    masks = np.zeros((len(plan.conditions) + 1, n), dtype=bool)  # the last row never fails
    for i, c in enumerate(plan.conditions):
        if c.kind == "live":
            masks[i] = ~np.array([c.key.live_on(day) for day in days], dtype=bool)[day_codes]
        elif c.kind == "consent":
            masks[i] = ~(_column(features, consent_column(c.key)) > 0.5)
        elif c.kind == "cooldown":
            with np.errstate(invalid="ignore"):  # NaN days since (never opted out): not cooling
                masks[i] = _column(features, COOLDOWN_COLUMN) < policy.cooldown_days
        elif c.kind == "quiet":
            hours = local_hour(as_of, n, policy.quiet_hours.utc_offset_hours)
            masks[i] = policy.quiet_hours.is_quiet(hours)
        elif c.kind == "cap":
            # a missing count is no contact (fmax, a ufunc, is nan_to_num for counts, 20x faster)
            masks[i] = np.fmax(_column(features, cap_column(c.key)), 0.0) + 1 > c.key.max_contacts
        else:
            masks[i] = ~c.key.evaluate(features)
    fails = masks[plan.checks]  # actions x checks x customers
    first = np.argmax(fails, axis=1)  # the first condition that fails, in the order checked
    failed = np.take_along_axis(fails, first[:, None, :], axis=1)[:, 0, :]
    which = np.take_along_axis(plan.checks, first, axis=1)
    blocked = np.where(failed, plan.said[which], "")
    return Eligibility(np.ascontiguousarray(~failed.T), blocked.T.copy())


def send_hours(
    features: pd.DataFrame | FrameArrays,
    channels: list[str],
    default_hour: dict[str, int],
    policy: ContactPolicy,
    data: DataConfig,
) -> np.ndarray:
    """Recommended send hour (UTC, 0-23) per customer x channel.

    The customer's most frequent hour of engagement if known, else the channel's default; on a
    real-time channel an hour inside the quiet hours moves to the first hour after them.
    """
    preferred = (
        _column(features, "preferred_hour")
        if "preferred_hour" in features.columns
        else np.full(len(features), np.nan)
    )
    realtime = {c.name for c in data.channels if c.realtime}
    qh = policy.quiet_hours
    out = np.empty((len(features), len(channels)), dtype=np.int64)
    for j, channel in enumerate(channels):
        hour = np.where(np.isnan(preferred), default_hour.get(channel, 10), preferred)
        hour = hour.astype(np.int64) % 24
        if channel in realtime:
            quiet = qh.is_quiet(hour + qh.utc_offset_hours)
            moved = (
                math.ceil(qh.end_hour - qh.utc_offset_hours) % 24
            )  # whole UTC hour, local >= end
            hour = np.where(quiet, moved, hour)
        out[:, j] = hour
    return out
