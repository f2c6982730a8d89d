"""Event rows written as a user's CSV export, for the ingestion tests."""

from __future__ import annotations

import csv
from pathlib import Path

from features.ingest.contract import EVENT_COLUMNS


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    """`rows` (dicts; a missing or None value is an empty cell) as a CSV with a header."""
    columns = columns or EVENT_COLUMNS
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in rows:
            w.writerow(["" if r.get(c) is None else r[c] for c in columns])
    return path
