"""Small data sets shaped like the two real ones of issue #27, for the command-line tests.

* `purchase_log`: a retailer's purchase log, one row a purchase (id, date, amount), keys of the
  shop's own type (`shop:00012`), one channel, no contacts, consents or profile table. Drawn
  from a BG/NBD-like process: each customer buys at their own Poisson rate (Gamma across
  customers) and after each purchase drops out for good with their own probability (Beta).
* `outbound_calls`: a bank's outbound sales calls, keys `bank:<n>`, a customers table (age, job,
  marital status, education, loan), earlier campaigns' calls as history, each call a `sent` on
  `call_centre` and a conversion a `purchase` soon after it; conversion depends on the profile
  and the previous outcome, and its base rate rises over time.

Both are written as CSV, as a new user's export would be.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

START = pd.Timestamp("2025-01-01", tz="UTC")

# the outbound calls' configuration: call_centre's response is a purchase, no consent events
BANK_CONFIG = """\
data:
  identity:
    identifier_types: [crm, email, phone, loyalty, device, card, bank]
  channels:
    call_centre:
      response: purchase
training:
  labels:
    purchase_horizon_days: 30
policy:
  scoring: response
  contact_policy:
    require_consent: false
"""


def purchase_log(root: Path, customers: int = 1500, days: int = 420, seed: int = 0) -> Path:
    """Write root/events.csv; returns root."""
    rng = np.random.default_rng(seed)
    rows = []
    rate = rng.gamma(shape=0.9, scale=1 / 25.0, size=customers)  # purchases a day
    dropout = rng.beta(1.2, 6.0, size=customers)
    spend = rng.lognormal(3.5, 0.5, size=customers)
    first = rng.uniform(0, days * 0.6, size=customers)
    for c in range(customers):
        t = first[c]
        while t < days:
            rows.append((c, t, spend[c] * rng.lognormal(0, 0.3)))
            if rng.random() < dropout[c]:
                break
            t += rng.exponential(1 / rate[c])
    frame = pd.DataFrame(rows, columns=["c", "t", "amount"]).sort_values("t")
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "event_id": [f"p{i:07d}" for i in range(len(frame))],
            "ts": (START + pd.to_timedelta(frame["t"].to_numpy(), unit="D")).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "customer_key": [f"shop:{c:05d}" for c in frame["c"]],
            "channel": "store",
            "event_type": "purchase",
            "amount": frame["amount"].round(2).to_numpy(),
        }
    ).to_csv(root / "events.csv", index=False)
    return root


JOBS = ["admin", "technician", "services", "management", "retired", "student"]


def outbound_calls(root: Path, customers: int = 1500, days: int = 300, seed: int = 0) -> Path:
    """Write root/events.csv and root/customers.csv; returns root."""
    rng = np.random.default_rng(seed)
    age = rng.integers(19, 80, size=customers)
    job = rng.choice(JOBS, size=customers)
    marital = rng.choice(["married", "single", "divorced"], size=customers, p=[0.6, 0.3, 0.1])
    education = rng.choice(["primary", "secondary", "tertiary"], size=customers)
    loan = rng.random(customers) < 0.2
    taste = (
        0.8 * np.isin(job, ["retired", "student"])
        + 0.5 * (education == "tertiary")
        - 0.7 * loan
        + 0.02 * (age - 45)
        + rng.normal(0, 0.5, customers)
    )
    rows = []
    for c in range(customers):
        calls = np.sort(rng.uniform(0, days - 1, size=rng.integers(1, 5)))
        converted_before = False
        for k, t in enumerate(calls):
            trend = -2.2 + 1.6 * t / days  # the base rate rises over time
            p = 1 / (1 + np.exp(-(trend + taste[c] + 1.2 * converted_before)))
            rows.append((f"s{c}-{k}", t, c, "sent", np.nan))
            if rng.random() < p:
                rows.append((f"b{c}-{k}", t + rng.uniform(0.05, 2.0), c, "purchase", 1000.0))
                converted_before = True
    frame = pd.DataFrame(rows, columns=["event_id", "t", "c", "event_type", "amount"])
    frame = frame.sort_values("t")
    root.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "event_id": frame["event_id"].to_numpy(),
            "ts": (START + pd.to_timedelta(frame["t"].to_numpy(), unit="D")).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "customer_key": [f"bank:{c}" for c in frame["c"]],
            "channel": "call_centre",
            "event_type": frame["event_type"].to_numpy(),
            "action_id": np.where(frame["event_type"] == "sent", "term_deposit", None),
            "amount": frame["amount"].to_numpy(),
        }
    ).to_csv(root / "events.csv", index=False)
    pd.DataFrame(
        {
            "customer_key": [f"bank:{c}" for c in range(customers)],
            "age": age,
            "job": job,
            "marital": marital,
            "education": education,
            "loan": np.where(loan, "yes", "no"),
        }
    ).to_csv(root / "customers.csv", index=False)
    return root


def run_nba(
    *args: str, check: int | None = None, timeout: float = 600
) -> subprocess.CompletedProcess:
    """`nba ARGS` in a subprocess, as a user runs it (wide terminal, no colour); `check`: the
    exit code it must end with (its output in the assertion message otherwise)."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"}
    for name in ("NBA_DEBUG", "MLFLOW_LOGGING_LEVEL", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    nba = str(Path(sys.executable).with_name("nba"))
    done = subprocess.run(
        [nba, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False
    )
    if check is not None:
        assert done.returncode == check, (
            f"nba {' '.join(args)} exited {done.returncode}, expected {check}\n"
            f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
        )
    return done


def one_line_error(done: subprocess.CompletedProcess, command: str) -> str:
    """The failure's message: exit code 2, one error line (the last of standard error, after
    any progress lines such as ingest's step timings) naming the command, no traceback."""
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("nba ")]
    assert len(errors) == 1 and lines[-1] == errors[0], done.stderr
    assert errors[0].startswith(f"nba {command}: "), errors[0]
    assert "Traceback" not in done.stdout + done.stderr
    assert "Error" not in done.stderr.replace(errors[0], "")  # no other error text
    return errors[0]
