"""Streaming updater: applies one event to a customer's base aggregates in O(1), no history rescan.

State of a customer = the base aggregates of `FeatureSet.base` valued as of the customer's last
applied event, plus a short buffer of the events inside the longest sliding window. Decayed
values are brought forward by multiplying with exp(-lambda * dt); this is the same sum the batch
engine computes, so both agree to float tolerance (the parity test checks it).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

import numpy as np

from features.store.definitions import FeatureSet

US_PER_HOUR = 3_600_000_000
US_PER_DAY = 86_400_000_000


@dataclass
class CustomerState:
    """Base aggregates as of `last_us`, and the window buffer of (ts_us, aggregate index)."""

    base: np.ndarray
    last_us: int | None = None
    window: list[tuple[int, int]] = field(default_factory=list)

    def copy(self) -> CustomerState:
        return CustomerState(self.base.copy(), self.last_us, list(self.window))


@dataclass(frozen=True)
class _Targets:
    """Which base aggregates one (channel, event type) updates, by operation."""

    add_one: np.ndarray
    add_amount: np.ndarray
    set_last: np.ndarray
    set_first: np.ndarray
    window: np.ndarray
    by_dim: dict[tuple[str, int | str], np.ndarray]


class StreamingUpdater:
    """Pure state arithmetic of the streaming path; the online store persists the states."""

    def __init__(self, fs: FeatureSet) -> None:
        self.fs = fs
        self.n = len(fs.base)
        self.decay = np.array([b.decay_rate_per_us for b in fs.base])
        self.decaying = self.decay > 0
        self.is_time = np.array([b.op in ("last", "first") for b in fs.base])
        self.window_us = {
            i: int(round(float(b.param) * US_PER_DAY))
            for i, b in enumerate(fs.base)
            if b.op == "window_count"
        }
        self.max_window_us = max(self.window_us.values(), default=0)
        self._targets: dict[tuple[str, str], _Targets] = {}

    def new_state(self) -> CustomerState:
        base = np.zeros(self.n)
        base[self.is_time] = np.nan
        return CustomerState(base)

    def _targets_for(self, channel: str, event_type: str) -> _Targets:
        key = (channel, event_type)
        found = self._targets.get(key)
        if found is not None:
            return found
        groups: dict[str, list[int]] = {k: [] for k in ("one", "amount", "last", "first", "window")}
        by_dim: dict[tuple[str, int | str], list[int]] = {}
        for i, b in enumerate(self.fs.base):
            if event_type not in b.event_types:
                continue
            if b.channels is not None and channel not in b.channels:
                continue
            if b.dim is not None:
                by_dim.setdefault((b.dim, b.dim_value), []).append(i)
                continue
            if b.op in ("decayed_count", "count"):
                groups["one"].append(i)
            elif b.op in ("decayed_amount", "amount"):
                groups["amount"].append(i)
            elif b.op in ("last", "first"):
                groups[b.op].append(i)
            elif b.op == "window_count":
                groups["window"].append(i)

        def arr(ix: list[int]) -> np.ndarray:
            return np.array(ix, dtype=np.int64)

        found = _Targets(
            add_one=arr(groups["one"]),
            add_amount=arr(groups["amount"]),
            set_last=arr(groups["last"]),
            set_first=arr(groups["first"]),
            window=arr(groups["window"]),
            by_dim={k: arr(v) for k, v in by_dim.items()},
        )
        self._targets[key] = found
        return found

    def _dim_targets(self, t: _Targets, ts_us: int, category: str | None) -> np.ndarray:
        if not t.by_dim:
            return np.empty(0, dtype=np.int64)
        hour = (ts_us // US_PER_HOUR) % 24
        dow = (ts_us // US_PER_DAY + 3) % 7  # 1970-01-01 was a Thursday; Monday = 0
        keys = [("hour", int(hour)), ("dow", int(dow))]
        if category is not None:
            keys.append(("category", category))
        parts = [t.by_dim[k] for k in keys if k in t.by_dim]
        return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)

    def apply(
        self,
        state: CustomerState,
        ts_us: int,
        channel: str,
        event_type: str,
        amount: float | None = None,
        category: str | None = None,
    ) -> None:
        """Apply one event in place, in time order or late.

        A late event (older than the customer's last applied one: a channel's clock a second
        behind the service's, a store's batch uploaded at night) is added exactly: decayed sums
        take it at its weight exp(-lambda * (last - ts)), last/first times take the max/min, the
        window buffer takes it in time order. The sums do not depend on the order of events, so
        the state equals the one of the events applied in time order (to float tolerance).
        """
        weight = None
        if state.last_us is not None and ts_us < state.last_us:
            weight = np.exp(-self.decay * float(state.last_us - ts_us))  # 1 where not decaying
        else:
            if state.last_us is not None and ts_us > state.last_us:
                dt = float(ts_us - state.last_us)
                state.base[self.decaying] *= np.exp(-self.decay[self.decaying] * dt)
            state.last_us = ts_us
        t = self._targets_for(channel, event_type)
        amt = 0.0 if amount is None or amount != amount else float(amount)
        dims = self._dim_targets(t, ts_us, category)  # dimensional aggregates count the event
        for targets, value in ((t.add_one, 1.0), (t.add_amount, amt), (dims, 1.0)):
            if targets.size:
                state.base[targets] += value if weight is None else value * weight[targets]
        state.base[t.set_last] = np.fmax(state.base[t.set_last], float(ts_us))  # NaN: none yet
        state.base[t.set_first] = np.fmin(state.base[t.set_first], float(ts_us))
        horizon = state.last_us - self.max_window_us
        if t.window.size and ts_us >= horizon:  # older than every window: it can never count
            entries = [(ts_us, int(i)) for i in t.window]
            if weight is None:
                state.window.extend(entries)
            else:
                at = bisect.bisect_right(state.window, (ts_us, self.n))
                state.window[at:at] = entries
        if state.window and self.max_window_us and state.window[0][0] < horizon:
            # entries older than the longest window before the last event can never count again
            state.window = [w for w in state.window if w[0] >= horizon]

    def base_at(self, state: CustomerState, as_of_us: int) -> np.ndarray:
        """The base aggregates as of `as_of_us` (after the last applied event)."""
        base = state.base.copy()
        if state.last_us is not None:
            dt = float(as_of_us - state.last_us)
            base[self.decaying] *= np.exp(-self.decay[self.decaying] * dt)
        for i, w_us in self.window_us.items():
            base[i] = sum(
                1 for ts, j in state.window if j == i and as_of_us - w_us <= ts < as_of_us
            )
        return base

    def features_at(self, state: CustomerState, as_of_us: int) -> np.ndarray:
        """Derived features of one customer as of `as_of_us`."""
        return self.fs.derive(self.base_at(state, as_of_us)[None, :], np.array([as_of_us]))[0]
