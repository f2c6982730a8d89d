"""A campaign run on one machine: score every eligible pair, assign, draw holdouts, write.

Scoring is the stage-4 batch path itself (`contact_policy.eligibility` for the hard rules,
`arbitration.score_actions` for the components and the expected incremental profit), on the
catalogue restricted to the campaign's offers; the assignment is `serving.assignment`'s. The
assignments file is written under a temporary name and renamed when complete, so a run killed
half-way leaves no file that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.ingest.contract import CUSTOMER_ID
from features.store.batch import AS_OF
from serving.arbitration import ScoredActions, score_actions
from serving.assignment import (
    Limits,
    NumpyScores,
    Solution,
    apply_solution,
    assignment_value,
    build_limits,
    solve,
)
from serving.campaign import Campaign
from serving.catalogue import NOTHING, Catalogue
from serving.contact_policy import check_columns, eligibility, send_hours
from serving.policy import HOLDOUT, SENT, DecisionPolicy

ASSIGNMENTS = "assignments.parquet"
SUMMARY = "campaign.json"


@dataclass
class CampaignScores:
    """Every customer x offered action: the policy's components, the campaign's objective
    (-inf where a hard rule forbids the action) and the send hour."""

    customer_id: np.ndarray
    as_of: pd.Timestamp
    scored: ScoredActions
    objective: np.ndarray
    send_hour: np.ndarray

    def __len__(self) -> int:
        return len(self.customer_id)


@dataclass
class CampaignRun:
    """What a run decided and why: the table, the prices and the limits."""

    table: pd.DataFrame
    scores: CampaignScores
    choice: np.ndarray  # per customer: offered action index, -1 nothing
    solution: Solution
    limits: Limits
    offered: Catalogue
    campaign: Campaign
    campaign_version: str


def campaign_version(campaign: Campaign, text: str = "") -> str:
    """A short hash of the campaign as validated and of its file's text."""
    payload = campaign.model_dump_json() + text
    return "campaign-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


def run_id(campaign_version: str, as_of: pd.Timestamp, versions: dict[str, str]) -> str:
    """A run's id from what decides it (the campaign, the decision time, the model and policy
    versions): a rerun on the same inputs, after a crash say, writes the same decision ids, so
    logging it again duplicates no contact (the next ingest keeps one event per id)."""
    payload = "|".join(
        [
            campaign_version,
            str(pd.Timestamp(as_of)),
            versions["model_version"],
            versions["policy_version"],
        ]
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def score_campaign(
    policy: DecisionPolicy,
    offered: Catalogue,
    features: pd.DataFrame,
    as_of: pd.Timestamp,
    objective: str = "profit",
) -> CampaignScores:
    """The stage-4 batch scoring of every eligible (customer, offered action) pair."""
    features = features.reset_index(drop=True)
    columns = list(features.columns)
    offered.check_against(policy.data, columns)
    check_columns(columns, offered, policy.cfg.contact_policy)
    el = eligibility(
        features, as_of, offered, policy.cfg.contact_policy, policy.data, False, check=False
    )
    scored = score_actions(policy.bundle, features, offered, el.allowed, policy.cfg.scoring)
    if objective == "profit":
        target = scored.score
    else:
        gain = scored.lever * scored.p_response
        target = np.where(el.allowed & np.isfinite(gain), gain, -np.inf)
    hours = send_hours(
        features,
        scored.channels,
        policy.cfg.default_send_hour,
        policy.cfg.contact_policy,
        policy.data,
    )
    return CampaignScores(
        customer_id=features[CUSTOMER_ID].to_numpy(dtype=object),
        as_of=as_of,
        scored=scored,
        objective=target,
        send_hour=hours,
    )


def holdout_uniforms(customer_ids: np.ndarray, seed: int) -> np.ndarray:
    """A uniform draw in [0, 1) per customer from (seed, customer_id): the same customers are
    held out whatever the order or partitioning of the run (one machine or Spark)."""
    key = hashlib.sha256(str(seed).encode()).hexdigest()[:16]
    h = pd.util.hash_array(np.asarray(customer_ids, dtype=object), hash_key=key)
    return (h >> np.uint64(11)).astype(np.float64) / float(2**53)


def assignment_columns(
    scores: CampaignScores,
    choice: np.ndarray,
    campaign: Campaign,
    offered: Catalogue,
    versions: dict[str, str],
    run: str,
) -> dict[str, np.ndarray]:
    """The assignments of a block of customers as columns (vectorised): the chosen action or
    nothing, its score and components, send hour, holdout draw with its propensity, ids and
    versions."""
    s = scores.scored
    n = len(choice)
    rows = np.arange(n)
    acted = choice >= 0
    j = np.maximum(choice, 0)
    ids = np.array([*s.action_ids, NOTHING], dtype=object)
    channels = np.array([*s.channels, ""], dtype=object)

    fraction = np.array([campaign.holdout.of(a) for a in s.action_ids] + [0.0])
    f = fraction[choice]  # -1 -> nothing's 0.0
    u = holdout_uniforms(scores.customer_id, campaign.holdout.seed)
    holdout = acted & (u < f)
    cid = pd.Series(scores.customer_id, dtype=object)
    decision = (f"c-{campaign.name}-{run}-" + cid).to_numpy(dtype=object)
    score = np.where(acted, s.score[rows, j], 0.0) if n else np.array([], dtype=float)
    return {
        "decision_id": decision,
        CUSTOMER_ID: scores.customer_id,
        AS_OF: np.full(n, scores.as_of.tz_convert(None).asm8),
        "campaign": np.full(n, campaign.name, dtype=object),
        "action_id": ids[choice],
        "channel": channels[choice],
        **s.chosen(j, acted),
        "objective_score": np.where(acted, scores.objective[rows, j], 0.0) if n else score,
        "send_hour": np.where(acted, scores.send_hour[rows, j], -1) if n else np.array([], int),
        "holdout": holdout,
        "propensity": np.ones(n),  # the assignment itself is deterministic
        "logged_as": np.where(acted, np.where(holdout, HOLDOUT, SENT), ""),
        "logged_propensity": np.where(holdout, f, np.where(acted, 1.0 - f, 1.0)),
        "eligible_actions": np.isfinite(s.score).sum(axis=1),
        "model_version": np.full(n, versions["model_version"], dtype=object),
        "policy_version": np.full(n, versions["policy_version"], dtype=object),
        "campaign_version": np.full(n, versions["campaign_version"], dtype=object),
    }


def assignment_frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    table = pd.DataFrame(columns)
    table[AS_OF] = pd.to_datetime(table[AS_OF]).dt.tz_localize("UTC")
    return table


def run_campaign(
    policy: DecisionPolicy,
    campaign: Campaign,
    features: pd.DataFrame,
    as_of: pd.Timestamp,
    text: str = "",
    run: str | None = None,
    say=None,
) -> CampaignRun:
    """Score, assign under the limits and draw the holdouts, on one machine."""
    offered = campaign.offered(policy.catalogue)
    limits = build_limits(campaign, offered)
    scores = score_campaign(policy, offered, features, as_of, campaign.objective)
    if say:
        say(f"scored {int(np.isfinite(scores.objective).sum()):,} eligible pairs")
    keys = scores.customer_id
    backend = NumpyScores(scores.objective, keys)
    solution = solve(backend, limits, len(offered.actions), say=say)
    choice = apply_solution(scores.objective, keys, solution)
    solution.objective = assignment_value(scores.objective, choice)
    version = campaign_version(campaign, text)
    versions = {
        "model_version": policy.model_version,
        "policy_version": policy.version,
        "campaign_version": version,
    }
    run = run or run_id(version, as_of, versions)
    table = assignment_frame(assignment_columns(scores, choice, campaign, offered, versions, run))
    return CampaignRun(table, scores, choice, solution, limits, offered, campaign, version)


def summary(run: CampaignRun) -> dict[str, object]:
    """Prices, limits and totals of a run, JSON-ready (what `campaign.json` holds)."""
    sol, limits = run.solution, run.limits
    acted = run.table["action_id"] != NOTHING
    return {
        "campaign": run.campaign.name,
        "campaign_version": run.campaign_version,
        "objective": run.campaign.objective,
        "as_of": str(run.scores.as_of),
        "customers": len(run.table),
        "assigned": int(acted.sum()),
        "holdouts": int(run.table["holdout"].sum()),
        "expected_objective": sol.objective,
        "dual_bound": sol.dual_bound,
        "gap_bound": sol.gap_bound,
        "rounds": sol.rounds,
        "constraints": [
            {
                "name": name,
                "kind": kind,
                "limit": float(limit),
                "used": float(used),
                "shadow_price": float(price),
            }
            for name, kind, limit, used, price in zip(
                limits.names, limits.kinds, limits.limit, sol.usage, sol.shadow_prices, strict=True
            )
        ],
        "per_action": {
            a: int(n)
            for a, n in run.table.loc[acted, "action_id"].value_counts().sort_index().items()
        },
    }


def write_atomically(path: Path, write) -> Path:
    """Call `write(tmp)` on a temporary name beside `path`, then rename it to `path`: readers
    see the whole file or none. A failed write removes the temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_run(run: CampaignRun, out: Path) -> tuple[Path, Path]:
    """assignments.parquet and campaign.json in `out`, each renamed into place when complete
    (the summary last: its presence says the run finished)."""
    out = Path(out)
    target = out / ASSIGNMENTS
    final = out / SUMMARY
    if final.exists():
        final.unlink()  # a re-run: the old summary must not vouch for a half-written table
    write_atomically(target, lambda p: run.table.to_parquet(p, index=False))
    text = json.dumps(summary(run), indent=2, default=float)
    write_atomically(final, lambda p: p.write_text(text))
    return target, final
