"""One customer's own events, newest first, for the people who look at a customer (the 360 view).

The history is the event store's ingested events (DuckDB over parquet) together with the events
the service accepted since the last ingest (the online store's event log). An event in both (the
log exported and ingested again) counts once, by event_id.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import pandas as pd

from features.config import DataConfig
from features.ingest.contract import (
    ACTION_ID,
    AMOUNT,
    CATEGORY,
    CHANNEL,
    CUSTOMER_ID,
    EVENT_ID,
    EVENT_TYPE,
    TS,
    DataDir,
)
from features.ingest.event_store import CUSTOMER_INDEX, STORE_FILES, open_store
from features.store.online_store import OnlineStoreBase

COLUMNS = [EVENT_ID, TS, CHANNEL, EVENT_TYPE, ACTION_ID, AMOUNT, CATEGORY]


@dataclass(frozen=True)
class ConsentChange:
    """A channel's consent as the events say: given or not, and when it last changed."""

    channel: str
    given: bool
    changed: pd.Timestamp | None


class EventHistory:
    """Reads customers' histories; thread-safe (one DuckDB cursor per call)."""

    def __init__(self, data_dir: DataDir, store: OnlineStoreBase) -> None:
        self.store = store
        self.data: DataConfig = store.fs.data
        self.revoking = list(store.fs.config.revoking_event_types)
        has_store = all((data_dir.store / name).is_file() for name in STORE_FILES)
        self._con = open_store(data_dir) if has_store else None
        self._lock = threading.Lock()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()

    def _ingested(self, customer_id: str) -> pd.DataFrame:
        """The customer's ingested events, newest first."""
        if self._con is None:
            return pd.DataFrame(columns=COLUMNS)
        # the events are sorted by customer_no: its zone maps find one customer's rows quickly;
        # times leave DuckDB as microseconds (its TIMESTAMPTZ to Python needs pytz)
        sql = (
            f"SELECT {EVENT_ID}, epoch_us({TS}), {CHANNEL}, {EVENT_TYPE}, {ACTION_ID}, {AMOUNT}, "
            f"{CATEGORY} FROM events WHERE customer_no = ? "
            f"ORDER BY {TS} DESC, {EVENT_ID} DESC"
        )
        with self._lock:
            cursor = self._con.cursor()
        try:
            found = cursor.execute(
                f"SELECT customer_no FROM {CUSTOMER_INDEX} WHERE {CUSTOMER_ID} = ?", [customer_id]
            ).fetchall()
            rows = cursor.execute(sql, [found[0][0]]).fetchall() if found else []
        finally:
            cursor.close()
        frame = pd.DataFrame(rows, columns=COLUMNS)
        frame[TS] = pd.to_datetime(frame[TS].astype("int64"), unit="us", utc=True)
        frame[AMOUNT] = frame[AMOUNT].astype("float64")
        return frame

    def of(self, customer_id: str) -> CustomerHistory:
        """Every event of the customer, newest first: one query of each source."""
        logged = self.store.logged_events_of(customer_id)[COLUMNS]
        return CustomerHistory(_merged([logged, self._ingested(customer_id)]), self)


@dataclass(frozen=True)
class CustomerHistory:
    """One customer's events (newest first) and what the 360 view reads off them."""

    events: pd.DataFrame
    source: EventHistory

    def recent(self, limit: int) -> pd.DataFrame:
        return self.events.head(limit)

    def consent(self) -> list[ConsentChange]:
        """Per outbound channel: consent given (granted at some time and not revoked since, as
        the features define it) and when it last changed."""
        granted = self.source.data.event_types.consent_granted
        revoking = self.source.revoking
        events = self.events[self.events[EVENT_TYPE].isin([granted, *revoking])]
        out = []
        for channel in (c.name for c in self.source.data.channels if c.outbound):
            own = events[events[CHANNEL] == channel]
            last_granted = own.loc[own[EVENT_TYPE] == granted, TS].max()
            last_revoked = own.loc[own[EVENT_TYPE].isin(revoking), TS].max()
            given = pd.notna(last_granted) and (
                pd.isna(last_revoked) or last_revoked < last_granted
            )
            changed = own[TS].max()
            out.append(ConsentChange(channel, bool(given), None if pd.isna(changed) else changed))
        return out


def _merged(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Events of several sources, each once (by event_id), newest first."""
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.concat(parts, ignore_index=True).drop_duplicates(EVENT_ID)
    return frame.sort_values([TS, EVENT_ID], ascending=False, kind="stable").reset_index(drop=True)
