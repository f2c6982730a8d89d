"""After a campaign: its measured incremental effect per action, from the randomized holdouts.

`nba campaign --log` records every assignment as a `sent` or `holdout` event (event_id = the
decision id, `c-<campaign>-<run>-<customer>`) and its full record in `decisions/`. Once the events
that followed are ingested, each action's effect is the difference in means between the contacted
and the held-out customers of the purchases in the horizon after the send (purchase rate and
margin x spend), with a normal (Welch) confidence interval, beside the plan's expectation for the
same customers (mean uplift and expected incremental profit per contact before cost).
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
from scipy import stats

from features.ingest.contract import DataDir
from serving.decision_log import DECISIONS_DIR


def campaign_record(data_dir: DataDir, name: str) -> pd.DataFrame:
    """The newest logged run of campaign `name` (every assignment with its expectation)."""
    files = sorted(
        (data_dir.root / DECISIONS_DIR).glob(f"c-{name}-*.parquet"),
        key=lambda p: p.stat().st_mtime,
    )
    if not files:
        raise LookupError(
            f"no logged run of campaign {name!r} in {data_dir.root / DECISIONS_DIR}: run "
            "`nba campaign --log` first"
        )
    table = pd.read_parquet(files[-1])
    return table[table["logged_as"].isin(["sent", "holdout"])].reset_index(drop=True)


def outcomes(
    con: duckdb.DuckDBPyConnection, record: pd.DataFrame, horizon_days: float
) -> pd.DataFrame:
    """Per logged assignment: its send time from the store's event (by decision id), and the
    purchases (count > 0, spend) of the customer in (send, send + horizon]."""
    ids = pd.DataFrame({"event_id": record["decision_id"].to_numpy()})
    con.register("_nba_campaign_ids", ids)
    try:
        found = con.sql(
            f"""
            WITH logged AS (
                SELECT e.event_id, e.customer_id, e.ts
                FROM events e JOIN _nba_campaign_ids q USING (event_id)
            )
            SELECT l.event_id, l.ts AS sent_ts, count(p.ts) AS purchases,
                   coalesce(sum(p.amount), 0) AS spend,
                   max(l.ts) + INTERVAL {float(horizon_days) * 86400} SECOND AS window_end
            FROM logged l LEFT JOIN events p
              ON p.customer_id = l.customer_id AND p.event_type = 'purchase'
             AND p.ts > l.ts AND p.ts <= l.ts + INTERVAL {float(horizon_days) * 86400} SECOND
            GROUP BY ALL
            """
        ).df()
        last_us = con.execute("SELECT epoch_us(max(ts)) FROM events").fetchall()[0][0]
    finally:
        con.unregister("_nba_campaign_ids")
    merged = record.merge(found, left_on="decision_id", right_on="event_id", how="inner")
    last = pd.Timestamp(last_us, unit="us", tz="UTC")
    end = pd.to_datetime(merged["window_end"], utc=True)
    merged["window_complete"] = (end <= last).to_numpy()
    return merged


def _difference(treated: np.ndarray, control: np.ndarray, z: float) -> tuple[float, float, float]:
    if len(treated) < 2 or len(control) < 2:
        return np.nan, np.nan, np.nan
    d = treated.mean() - control.mean()
    se = np.sqrt(treated.var(ddof=1) / len(treated) + control.var(ddof=1) / len(control))
    return float(d), float(d - z * se), float(d + z * se)


def measure(
    data_dir: DataDir,
    con: duckdb.DuckDBPyConnection,
    name: str,
    horizon_days: float,
    level: float = 0.95,
) -> pd.DataFrame:
    """Per action (and all together): contacted and held-out counts, measured effect on the
    purchase rate and on margin x spend with an interval, and what the plan expected."""
    record = campaign_record(data_dir, name)
    data = outcomes(con, record, horizon_days)
    if data.empty:
        raise LookupError(
            f"campaign {name!r}: none of its sent/holdout events is in the event store: "
            "ingest the data directory (`nba ingest`) after logging"
        )
    z = float(stats.norm.ppf(0.5 + level / 2))
    data["bought"] = (data["purchases"] > 0).astype(float)
    data["gross_profit"] = data["margin"] * data["spend"]
    rows = []
    groups = [(a, g) for a, g in data.groupby("action_id")] + [("all actions", data)]
    for action, g in groups:
        sent = g[g["logged_as"] == "sent"]
        held = g[g["logged_as"] == "holdout"]
        rate, rate_lo, rate_hi = _difference(
            sent["bought"].to_numpy(), held["bought"].to_numpy(), z
        )
        gp, gp_lo, gp_hi = _difference(
            sent["gross_profit"].to_numpy(), held["gross_profit"].to_numpy(), z
        )
        rows.append(
            {
                "action_id": action,
                "sent": len(sent),
                "held_out": len(held),
                "windows_complete": float(g["window_complete"].mean()),
                "purchase_rate_sent": float(sent["bought"].mean()) if len(sent) else np.nan,
                "purchase_rate_held_out": float(held["bought"].mean()) if len(held) else np.nan,
                "measured_uplift": rate,
                "uplift_low": rate_lo,
                "uplift_high": rate_hi,
                "expected_uplift": float(g["uplift"].mean()),
                "measured_gross_profit": gp,
                "gross_profit_low": gp_lo,
                "gross_profit_high": gp_hi,
                "expected_gross_profit": float((g["score"] + g["cost"]).mean()),
                "cost_per_contact": float(g["cost"].mean()),
            }
        )
    return pd.DataFrame(rows)


def print_results(results: pd.DataFrame, console, level: float, horizon: float) -> None:
    from rich.table import Table

    t = Table(
        title=f"measured from the holdouts ({level:.0%} intervals), purchases within "
        f"{horizon:g} days of the send, beside the plan's expectation"
    )
    cols = ("action", "sent", "held out", "uplift measured", "expected", "profit/contact", "exp.")
    for c in cols:
        t.add_column(c, justify="left" if c == "action" else "right")
    for _, r in results.iterrows():
        t.add_row(
            str(r["action_id"]),
            f"{r['sent']:,}",
            f"{r['held_out']:,}",
            f"{r['measured_uplift']:+.4f} [{r['uplift_low']:+.4f}, {r['uplift_high']:+.4f}]",
            f"{r['expected_uplift']:+.4f}",
            f"{r['measured_gross_profit']:+.3f} [{r['gross_profit_low']:+.3f}, "
            f"{r['gross_profit_high']:+.3f}]",
            f"{r['expected_gross_profit']:+.3f}",
        )
    console.print(t)
    incomplete = results["windows_complete"] < 1
    if incomplete.any():
        console.print(
            "[yellow]some purchase windows reach past the last event: the measured effect is "
            "still growing[/yellow]"
        )
