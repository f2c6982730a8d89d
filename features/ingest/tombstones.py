"""The erasure log: who was forgotten, kept without personal data, and the check of later events.

DIR/erasure/log.jsonl is append-only, one JSON line an erasure: its time and a salted SHA-256 of
each identifier and the customer_id erased (never the identifiers themselves). The salt is one
random value for the installation, DIR/erasure/salt, created by the first erasure. A later
event whose customer_key or link_key hashes to a tombstone is rejected as `erased`, unless a
`consent_granted` event of that identifier at or after the erasure comes with it (the person
came back): then its events from that consent on are admitted.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from features.ingest.contract import CUSTOMER_KEY, EVENT_TYPE, LINK_KEY, TS, DataDir

ERASED = "erased"
ERASURE_DIR = "erasure"
SALT_FILE = "salt"
LOG_FILE = "log.jsonl"
CONSENT_GRANTED = "consent_granted"


def erasure_dir(data_dir: DataDir) -> Path:
    return data_dir.root / ERASURE_DIR


def read_salt(data_dir: DataDir, create: bool = False) -> str | None:
    """The installation's salt (hex), made on first use when `create`; None when there is none."""
    path = erasure_dir(data_dir) / SALT_FILE
    if path.is_file():
        return path.read_text().strip()
    if not create:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{SALT_FILE}.{os.getpid()}.tmp")
    tmp.write_text(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)  # never replaces a salt another process made meanwhile
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_text().strip()


def salted_hash(salt: str, text: str) -> str:
    """SHA-256 (hex) of the salt followed by the text: what the log keeps of an identifier."""
    return hashlib.sha256((salt + text).encode("utf-8")).hexdigest()


def append_erasure(data_dir: DataDir, record: Mapping[str, Any]) -> Path:
    """Append one erasure record (no personal data in it) to the log, durably."""
    path = erasure_dir(data_dir) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(dict(record), sort_keys=True) + "\n"
    with path.open("a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    return path


def read_erasures(data_dir: DataDir) -> list[dict[str, Any]]:
    path = erasure_dir(data_dir) / LOG_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@dataclass(frozen=True)
class Tombstones:
    """The salted hashes of erased identifiers and when each was erased (µs since the epoch)."""

    salt: str | None
    erased_us: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, data_dir: DataDir) -> Tombstones:
        salt = read_salt(data_dir)
        out: dict[str, int] = {}
        for rec in read_erasures(data_dir):
            at = int(pd.Timestamp(rec["at"]).value // 1000)
            for h in rec.get("identifiers", []):
                out[h] = max(out.get(h, at), at)
        return cls(salt, out)

    def __bool__(self) -> bool:
        return bool(self.salt and self.erased_us)

    def erased_at(self, key: str | None) -> int | None:
        """When the identifier was erased (µs), None when it never was."""
        if not key or not self:
            return None
        assert self.salt is not None
        return self.erased_us.get(salted_hash(self.salt, key))

    def reject(
        self, records: Sequence[Mapping[str, Any]], known: set[str] | None = None
    ) -> list[int]:
        """Positions of the events (POST /events objects) to reject as `erased`: a key
        erased and not `known` again (re-admitted), with no consent_granted of that key at or
        after the erasure in the batch before or at the event's time."""
        if not self:
            return []
        known = known or set()
        consent: dict[str, int] = {}
        hits: list[tuple[int, int, list[str]]] = []
        for i, r in enumerate(records):
            keys = [k for k in (r.get(CUSTOMER_KEY), r.get(LINK_KEY)) if isinstance(k, str)]
            erased = [(k, self.erased_at(k)) for k in keys if k not in known]
            erased = [(k, at) for k, at in erased if at is not None]
            if not erased:
                continue
            try:
                t = pd.Timestamp(r.get(TS))
                t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
                ts = int(t.value // 1000)
            except (ValueError, TypeError):
                continue  # an unreadable time is validation's to reject
            if r.get(EVENT_TYPE) == CONSENT_GRANTED:
                for k, at in erased:
                    if ts >= at:
                        consent[k] = min(consent.get(k, ts), ts)
            hits.append((i, ts, [k for k, _ in erased]))
        return [i for i, ts, keys in hits if not all(consent.get(k, ts + 1) <= ts for k in keys)]

    def mark_sql(
        self, con: duckdb.DuckDBPyConnection, table: str, reason: str, reasons: str
    ) -> None:
        """Set `reason` (and `reasons`) to `erased` on the still-accepted rows of the checked
        events table `table` that `reject` would refuse; vectorised in DuckDB."""
        if not self:
            return
        con.register(
            "_nba_tombstones",
            pd.DataFrame({"h": list(self.erased_us), "erased_at": list(self.erased_us.values())}),
        )
        salt = "'" + str(self.salt).replace("'", "''") + "'"
        hits = " UNION ALL ".join(
            f"SELECT c.rowid AS rid, c.{TS} AS ts, c.{EVENT_TYPE} AS event_type, c.{col} AS k, "
            f"make_timestamptz(t.erased_at) AS erased_at FROM {table} c "
            f"JOIN _nba_tombstones t ON t.h = sha256({salt} || c.{col}) "
            f"WHERE c.{reason} IS NULL AND c.{col} IS NOT NULL"
            for col in (CUSTOMER_KEY, LINK_KEY)
        )
        try:
            con.execute(
                f"""
                UPDATE {table} SET {reason} = '{ERASED}', {reasons} = '{ERASED}'
                WHERE rowid IN (
                    WITH hits AS ({hits}),
                    consent AS (
                        SELECT k, min(ts) AS since FROM hits
                        WHERE event_type = '{CONSENT_GRANTED}' AND ts >= erased_at GROUP BY k
                    )
                    SELECT h.rid FROM hits h LEFT JOIN consent c USING (k)
                    WHERE c.since IS NULL OR h.ts < c.since
                )
                """
            )
        finally:
            con.unregister("_nba_tombstones")


def now_iso() -> str:
    return datetime.now(UTC).isoformat()
