"""The event log a chunk appends to, and the responses it holds pending until their time."""

from __future__ import annotations

import numpy as np

from features.synthetic.vocabulary import NONE


class Pending:
    """State changes that happen in the future of the sweep: (person, time, value) applied later."""

    def __init__(self) -> None:
        self.person = np.zeros(0, dtype=np.int64)
        self.time = np.zeros(0)
        self.value = np.zeros(0, dtype=bool)

    def add(self, person: np.ndarray, t: np.ndarray, value: bool = True) -> None:
        if len(person):
            self.person = np.concatenate([self.person, person])
            self.time = np.concatenate([self.time, t])
            self.value = np.concatenate([self.value, np.full(len(person), value)])

    def take(self, due: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Remove and return the due entries, in time order."""
        order = np.argsort(self.time[due], kind="stable")
        out = self.person[due][order], self.time[due][order], self.value[due][order]
        keep = ~due
        self.person, self.time, self.value = self.person[keep], self.time[keep], self.value[keep]
        return out

    def apply_max(self, state: np.ndarray, now: float) -> None:
        """state[p] = max(state[p], time) for entries up to now (last purchase, engagement)."""
        p, t, _ = self.take(self.time <= now)
        np.maximum.at(state, p, t)

    def apply_consent(self, state: np.ndarray, now: float, revoke_until: float) -> None:
        """Set consent in time order: grants due by now, revocations already by revoke_until."""
        p, _, v = self.take(np.where(self.value, self.time <= now, self.time <= revoke_until))
        if len(p):
            # the last change per person wins
            last = len(p) - 1 - np.unique(p[::-1], return_index=True)[1]
            state[p[last]] = v[last]


class EventLog:
    """A chunk's events as code columns, appended in blocks and encoded to strings at the end."""

    def __init__(self) -> None:
        self.blocks: list[tuple[np.ndarray, ...]] = []
        self.size = 0

    def add(
        self,
        person: np.ndarray,
        t: np.ndarray,
        channel: int | np.ndarray,
        event_type: int | np.ndarray,
        key: int | np.ndarray,
        link: int | np.ndarray = NONE,
        action: int | np.ndarray = NONE,
        amount: float | np.ndarray = np.nan,
        category: int | np.ndarray = NONE,
        propensity: float | np.ndarray = np.nan,
    ) -> None:
        n = len(person)
        if n == 0:
            return

        def col(v: object, dtype: type) -> np.ndarray:
            return np.broadcast_to(np.asarray(v, dtype=dtype), (n,))

        self.blocks.append(
            (
                col(person, np.int64),
                col(t, np.float64),
                col(channel, np.int8),
                col(event_type, np.int8),
                col(key, np.int16),
                col(link, np.int16),
                col(action, np.int8),
                col(amount, np.float64),
                col(category, np.int8),
                col(propensity, np.float64),
            )
        )
        self.size += n

    def columns(self) -> list[np.ndarray]:
        return [np.concatenate(parts) for parts in zip(*self.blocks, strict=True)]
