"""Off-policy evaluation: the value of a candidate policy from logged decisions and propensities.

An *occasion* is one logged decision: the customer's point-in-time features, the candidates the
logging policy chose among, the candidate it chose, the probability it chose it with, and the
reward that followed. Candidates are columns [do nothing, *catalogue actions], as in the policy.

From outbound events (`sent`/`holdout` rows, the synthetic world's logs or any CRM's), an occasion
is a contact the logging policy selected; conditional on that selection the candidates are {its
action, do nothing} and the choice between them is the randomized holdout, with known
probabilities 1 - h (contacted) and h (held out). h is estimated per action as its share of
holdouts. The selection itself is not re-evaluated: the estimand is the value of the candidate
policy's contact-or-not decision on the occasions the logging policy offered, which is exactly
what a new model, lever, cap or threshold changes on those occasions.

Reward per occasion of action a (margin m_a, cost c_a):

* `spend` (default, model-free): m_a x spend in (t, t + horizon] - c_a x contacted. The margin of
  the occasion's action values every purchase of the window in both arms, so the difference of
  the arms is the policy's own score, incremental profit.
* `purchase`: m_a x purchased x v(x) - c_a x contacted, v(x) the value model's expected order
  value: the P(buy) x value x margin quantity the policy's score is made of.

Estimators of the value V(pi) = E_x[sum_a pi(a|x) E[r | x, a]] with importance weights
w = pi(logged | x) / mu(logged | x): IPS (mean of w r), self-normalised IPS (sum w r / sum w) and
doubly robust (sum_a pi q + w (r - q(logged)), q the bundle's reward model). Standard errors are
cluster-robust by customer (occasions of one customer share a person and overlap in time); the
interval is the normal approximation (delta method for SNIPS).

On a synthetic world the truth is known per occasion (`truth/contacts`: true P(buy) with and
without the contact, true mean order value), so each estimate can be set beside the true value.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import duckdb
import numpy as np
import pandas as pd
from scipy import stats

from features.ingest.contract import ACTION_ID, CUSTOMER_ID, EVENT_ID, TS
from serving.arbitration import candidate_frame, expected_order_value, score_actions
from serving.catalogue import NOTHING, Catalogue
from serving.contact_policy import eligibility
from serving.exploration import choice_probabilities
from serving.policy import DecisionPolicy
from training.bundle import ModelBundle
from training.datasets import PURCHASED, SPEND, TREATED

Reward = Literal["spend", "purchase"]
REWARDS: tuple[str, ...] = ("spend", "purchase")
ESTIMATORS: tuple[str, ...] = ("ips", "snips", "dr")


@dataclass
class Occasions:
    """Logged occasions: candidates, logged choice, its logging probability, reward."""

    frame: pd.DataFrame  # one row per occasion: ids, ts, action_id, treated, labels, features
    action_ids: list[str]  # catalogue order: candidate column 1 + j is action_ids[j]
    channels: list[str]  # per catalogue action
    margin: np.ndarray  # per catalogue action
    cost: np.ndarray  # per catalogue action
    candidates: np.ndarray  # n x (1 + k) bool; column 0 (do nothing) always a candidate
    logged: np.ndarray  # n: logged candidate column
    propensity: np.ndarray  # n: logging probability of the logged candidate
    reward: np.ndarray  # n
    reward_kind: str
    occasion_margin: np.ndarray  # n: the margin that values the occasion's purchases
    order_value: np.ndarray | None = None  # n: v(x) of the `purchase` reward
    holdout_share: dict[str, float] = field(default_factory=dict)  # per action, estimated
    dropped: dict[str, int] = field(default_factory=dict)  # occasions left out, and why

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def clusters(self) -> np.ndarray:
        return self.frame[CUSTOMER_ID].to_numpy()

    def contacted(self) -> np.ndarray:
        return self.logged > 0


def occasions_from_contacts(
    contacts: pd.DataFrame,
    catalogue: Catalogue,
    reward: Reward = "spend",
    bundle: ModelBundle | None = None,
) -> Occasions:
    """Occasions from `contact_training_set` rows: candidates {the row's action, do nothing}.

    Conditional on the logging policy selecting the customer for action a, contact vs holdout is
    randomized with P(holdout) = h_a, estimated as a's share of holdouts. Actions missing from the
    catalogue (no margin or cost to value them) and actions never held out (no randomisation to
    learn the no-contact arm from) are dropped and counted.
    """
    if reward not in REWARDS:
        raise ValueError(f"reward must be one of {REWARDS}, got {reward!r}")
    ids = catalogue.ids
    index = {a: j for j, a in enumerate(ids)}
    frame = contacts.reset_index(drop=True)
    j = frame[ACTION_ID].map(index)
    dropped: dict[str, int] = {}
    unknown = j.isna().to_numpy()
    if unknown.any():
        dropped["action not in the catalogue"] = int(unknown.sum())
    treated = frame[TREATED].to_numpy(dtype=bool)
    share = (
        pd.Series(~treated).groupby(frame[ACTION_ID].to_numpy()).mean()
        if len(frame)
        else pd.Series(dtype=float)
    )
    h = frame[ACTION_ID].map(share).to_numpy(dtype=float)
    degenerate = ~unknown & ((h <= 0) | (h >= 1))
    if degenerate.any():
        dropped["action never (or always) held out"] = int(degenerate.sum())
    keep = ~unknown & ~degenerate
    frame = frame[keep].reset_index(drop=True)
    j = j[keep].to_numpy(dtype=int)
    treated, h = treated[keep], h[keep]
    n, k = len(frame), len(ids)
    margin = np.array([a.margin for a in catalogue.actions], dtype=float)
    cost = np.array([a.cost for a in catalogue.actions], dtype=float)
    candidates = np.zeros((n, 1 + k), dtype=bool)
    candidates[:, 0] = True
    candidates[np.arange(n), 1 + j] = True
    logged = np.where(treated, 1 + j, 0)
    propensity = np.where(treated, 1.0 - h, h)
    m, c = margin[j], cost[j]
    value = None
    if reward == "spend":
        r = m * frame[SPEND].to_numpy(dtype=float) - c * treated
    else:
        if bundle is None or bundle.value is None:
            raise ValueError("reward `purchase` needs the bundle's value model")
        value = expected_order_value(bundle, frame)
        r = m * frame[PURCHASED].to_numpy(dtype=float) * value - c * treated
    return Occasions(
        frame=frame,
        action_ids=ids,
        channels=[a.channel for a in catalogue.actions],
        margin=margin,
        cost=cost,
        candidates=candidates,
        logged=logged,
        propensity=propensity,
        reward=r,
        reward_kind=reward,
        occasion_margin=m,
        order_value=value,
        holdout_share={str(a): float(v) for a, v in share.items() if a in index},
        dropped=dropped,
    )


# --- target policies: probabilities over each occasion's candidates ------------------------------

TargetPolicy = Callable[[Occasions], np.ndarray]


def policy_probabilities(policy: DecisionPolicy, occ: Occasions) -> np.ndarray:
    """n x (1 + k): P(candidate) under `policy` restricted to each occasion's candidates.

    The policy's own hard rules (consent, caps, cool-down, eligibility, dates; batch mode, so no
    quiet hours), scores and exploration, then its randomized holdout: a chosen contact is held
    out (nothing happens) with the policy's holdout share. Actions of the occasion that the
    policy's catalogue lacks cannot be chosen. Batch capacities are not applied (they bind on a
    whole run, not on one occasion).
    """
    features = occ.frame
    policy.catalogue.check_against(policy.data, list(features.columns))
    as_of = pd.to_datetime(features[TS], utc=True)
    el = eligibility(
        features,
        as_of,
        policy.catalogue,
        policy.cfg.contact_policy,
        policy.data,
        immediate=False,
    )
    # the policy's catalogue columns, restricted to the occasion's candidate actions
    cols = [occ.action_ids.index(a) if a in occ.action_ids else -1 for a in policy.catalogue.ids]
    offered = np.column_stack(
        [occ.candidates[:, 1 + c] if c >= 0 else np.zeros(len(occ), dtype=bool) for c in cols]
    )
    allowed = el.allowed & offered
    scored = score_actions(policy.bundle, features, policy.catalogue, allowed, policy.cfg.scoring)
    probs = choice_probabilities(scored.score, policy.cfg.exploration)
    h = policy.cfg.exploration.holdout_share
    out = np.zeros((len(occ), 1 + len(occ.action_ids)))
    out[:, 0] = probs[:, 0] + h * probs[:, 1:].sum(axis=1)
    for jp, c in enumerate(cols):
        if c >= 0:
            out[:, 1 + c] += (1.0 - h) * probs[:, 1 + jp]
    return out


def never_contact(occ: Occasions) -> np.ndarray:
    """Do nothing on every occasion."""
    out = np.zeros(occ.candidates.shape)
    out[:, 0] = 1.0
    return out


def always_contact(occ: Occasions) -> np.ndarray:
    """Contact on every occasion, uniformly among its candidate actions, never held out."""
    acts = occ.candidates[:, 1:].astype(float)
    out = np.zeros(occ.candidates.shape)
    total = acts.sum(axis=1, keepdims=True)
    out[:, 1:] = np.divide(acts, total, out=np.zeros_like(acts), where=total > 0)
    out[:, 0] = (total[:, 0] == 0).astype(float)
    return out


def logging_policy(occ: Occasions) -> np.ndarray:
    """The logging policy itself (conditional on selection: contact 1 - h, hold out h)."""
    rows = np.arange(len(occ))
    out = np.zeros(occ.candidates.shape)
    out[rows, occ.logged] = occ.propensity
    # the other candidate of a two-candidate occasion gets the rest
    other = np.where(occ.logged > 0, 0, np.argmax(occ.candidates[:, 1:], axis=1) + 1)
    two = occ.candidates.sum(axis=1) == 2
    out[rows[two], other[two]] = 1.0 - occ.propensity[two]
    return out


# --- the reward model of the doubly robust estimator ---------------------------------------------


def reward_model(bundle: ModelBundle, occ: Occasions) -> np.ndarray:
    """n x (1 + k): q(x, a), the bundle's expected reward of each candidate (NaN elsewhere).

    Contact with a: m x P(buy | contact) x v(x) - c_a; nothing: m x P(buy | no contact) x v(x)
    (the uplift model's two outcomes, the value model's order value). For the `spend` reward the
    P(buy) x value prediction is rescaled, one factor per arm fitted on the log, because spend in
    a window counts repeat purchases too. The DR estimate is unbiased whatever q is; a better q
    only narrows it.
    """
    n, k = occ.candidates.shape[0], len(occ.action_ids)
    q = np.full((n, 1 + k), np.nan)
    if bundle.uplift is None:
        raise ValueError("the doubly robust estimator needs the bundle's uplift model")
    value = (
        occ.order_value if occ.order_value is not None else expected_order_value(bundle, occ.frame)
    )
    if np.isnan(value).all():
        raise ValueError("the doubly robust estimator needs the bundle's value model")
    m = occ.occasion_margin
    p0 = np.full(n, np.nan)
    p1 = np.full((n, k), np.nan)
    for j, action_id in enumerate(occ.action_ids):
        rows = np.flatnonzero(occ.candidates[:, 1 + j])
        if len(rows) == 0:
            continue
        frame = candidate_frame(
            occ.frame.iloc[rows], bundle.customer_features, occ.channels[j], action_id
        )
        treated, control = bundle.uplift.predict_outcomes(frame)
        p1[rows, j] = treated
        p0[rows] = control
    expected0 = p0 * value
    expected1 = p1 * value[:, None]
    if occ.reward_kind == "spend":
        spend = occ.frame[SPEND].to_numpy(dtype=float)
        contacted = occ.contacted()
        rows = np.arange(n)
        logged1 = expected1[rows, np.maximum(occ.logged - 1, 0)]
        f1 = _ratio(spend[contacted], logged1[contacted])
        f0 = _ratio(spend[~contacted], expected0[~contacted])
        expected0, expected1 = f0 * expected0, f1 * expected1
    q[:, 0] = m * expected0
    q[:, 1:] = m[:, None] * expected1 - occ.cost
    return np.where(occ.candidates, q, np.nan)


def _ratio(observed: np.ndarray, predicted: np.ndarray) -> float:
    ok = np.isfinite(predicted)
    total = predicted[ok].sum()
    return float(observed[ok].sum() / total) if total > 0 else 1.0


# --- estimators ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """One estimator's value with its cluster-robust standard error and interval."""

    estimator: str
    value: float
    se: float
    low: float
    high: float

    def covers(self, x: float) -> bool:
        return self.low <= x <= self.high


@dataclass
class PolicyValue:
    """Every estimate of one target policy's value, the weights' diagnostics and the truth."""

    name: str
    estimates: dict[str, Estimate]
    ess: float  # effective sample size of the importance weights
    max_weight: float
    contact_share: float  # target policy's mean probability of contacting
    truth: float | None = None
    difference: Estimate | None = None  # DR estimate of V(this) - V(baseline)
    true_difference: float | None = None


def _clustered_se(terms: np.ndarray, clusters: np.ndarray | None) -> float:
    """Standard error of a mean of (centred) per-occasion influence terms, robust to clusters."""
    n = len(terms)
    if n < 2:
        return float("nan")
    if clusters is None:
        return float(np.std(terms, ddof=1) / np.sqrt(n))
    codes, _ = pd.factorize(clusters)
    sums = np.bincount(codes, weights=terms)
    g = len(sums)
    if g < 2:
        return float("nan")
    return float(np.sqrt(g / (g - 1) * np.sum(sums**2)) / n)


def importance_weights(occ: Occasions, target: np.ndarray) -> np.ndarray:
    """w = pi(logged | x) / mu(logged | x) per occasion."""
    return target[np.arange(len(occ)), occ.logged] / occ.propensity


def estimate_value(
    occ: Occasions,
    target: np.ndarray,
    q: np.ndarray | None = None,
    level: float = 0.95,
    cluster: bool = True,
    name: str = "",
) -> PolicyValue:
    """IPS, SNIPS and (with a reward model q) DR estimates of the target's value, with intervals.

    `target`: n x (1 + k) probabilities over each occasion's candidates (rows sum to 1, zero off
    the candidates).
    """
    _check_target(occ, target)
    z = float(stats.norm.ppf(0.5 + level / 2))
    clusters = occ.clusters if cluster else None
    w = importance_weights(occ, target)
    r = occ.reward
    n = len(occ)

    def make(estimator: str, value: float, influence: np.ndarray) -> Estimate:
        se = _clustered_se(influence, clusters)
        return Estimate(estimator, float(value), se, value - z * se, value + z * se)

    ips_terms = w * r
    ips = ips_terms.mean()
    estimates = {"ips": make("ips", ips, ips_terms - ips)}
    mean_w = w.mean()
    snips = float(np.sum(w * r) / np.sum(w)) if mean_w > 0 else float("nan")
    estimates["snips"] = make("snips", snips, w * (r - snips) / mean_w)
    if q is not None:
        dr_terms = _dr_terms(occ, target, q)
        dr = dr_terms.mean()
        estimates["dr"] = make("dr", dr, dr_terms - dr)
    ess = float(np.sum(w) ** 2 / np.sum(w**2)) if np.any(w > 0) else 0.0
    return PolicyValue(
        name=name,
        estimates=estimates,
        ess=ess,
        max_weight=float(w.max()) if n else float("nan"),
        contact_share=float(target[:, 1:].sum(axis=1).mean()) if n else float("nan"),
    )


def estimate_difference(
    occ: Occasions,
    target: np.ndarray,
    baseline: np.ndarray,
    q: np.ndarray,
    level: float = 0.95,
    cluster: bool = True,
) -> Estimate:
    """DR estimate of V(target) - V(baseline) on the same occasions, with a paired interval.

    Both values share most of their per-occasion terms (the reward, the reward model), so the
    difference is far tighter than either value: it says whether a candidate beats, say, the
    logging policy. A reward loss common to both arms (e.g. purchases that identity resolution
    credits to another fragment of the person) mostly cancels too.
    """
    _check_target(occ, target)
    _check_target(occ, baseline)
    z = float(stats.norm.ppf(0.5 + level / 2))
    terms = _dr_terms(occ, target, q) - _dr_terms(occ, baseline, q)
    value = float(terms.mean())
    se = _clustered_se(terms - value, occ.clusters if cluster else None)
    return Estimate("dr_difference", value, se, value - z * se, value + z * se)


def _dr_terms(occ: Occasions, target: np.ndarray, q: np.ndarray) -> np.ndarray:
    rows = np.arange(len(occ))
    w = importance_weights(occ, target)
    direct = np.nansum(np.where(target > 0, target * q, 0.0), axis=1)
    return direct + w * (occ.reward - q[rows, occ.logged])


def _check_target(occ: Occasions, target: np.ndarray) -> None:
    if target.shape != occ.candidates.shape:
        raise ValueError(
            f"target probabilities {target.shape} != candidates {occ.candidates.shape}"
        )
    if np.any(target[~occ.candidates] > 1e-12):
        raise ValueError("the target policy puts probability on a non-candidate")
    if not np.allclose(target.sum(axis=1), 1.0, atol=1e-9):
        raise ValueError("target probabilities must sum to 1 on every occasion")


# --- the truth on a synthetic world ------------------------------------------------------------------


@dataclass
class OccasionTruth:
    """Per occasion, from the world's truth tables: the expected reward of each candidate."""

    expected: np.ndarray  # n x (1 + k), NaN off the candidates or where the truth is missing
    p_treated: np.ndarray
    p_control: np.ndarray
    order_value: np.ndarray  # true mean order value of the person

    def value(self, target: np.ndarray) -> float:
        """The target's true value: mean over occasions of sum_a pi(a|x) E[r | x, a]."""
        return float(np.nanmean(np.nansum(np.where(target > 0, target * self.expected, 0.0), 1)))


def load_contact_truth(truth_dir: Path, con: duckdb.DuckDBPyConnection) -> pd.DataFrame:
    """truth/contacts indexed by event_id: true P(buy) with and without contact, order value."""
    return (
        con.sql(
            f"SELECT {EVENT_ID}, p_purchase_treated, p_purchase_control, expected_value "
            f"FROM read_parquet('{truth_dir / 'contacts'}/*.parquet')"
        )
        .df()
        .set_index(EVENT_ID)
    )


def person_outcomes(
    con: duckdb.DuckDBPyConnection,
    truth_dir: Path,
    contacts: pd.DataFrame,
    horizon_days: float,
) -> pd.DataFrame:
    """`contacts` with purchased and spend counted over the whole person (synthetic worlds only).

    The contact's customer_id is one fragment of a person as identity resolution knows it; the
    person's purchases under other fragments are missing from its labels, so the realised reward
    falls short of the person-level truth. Counting through the world's true identity makes the
    reward coherent with the truth and measures off-policy evaluation apart from that loss.
    """
    ids = pd.DataFrame({EVENT_ID: contacts[EVENT_ID].to_numpy()})
    con.register("_ope_ids", ids)
    h_us = int(round(horizon_days * 86_400_000_000))
    try:
        labels = con.sql(
            f"""
            WITH c AS (
                SELECT t.{EVENT_ID}, t.person_id, epoch_us(t.{TS}) AS t_us
                FROM read_parquet('{truth_dir / "contacts"}/*.parquet') t
                JOIN _ope_ids USING ({EVENT_ID})),
            who AS (SELECT identifier, person_id
                    FROM read_parquet('{truth_dir / "identity"}/*.parquet')),
            p AS (SELECT who.person_id, epoch_us(e.{TS}) AS e_us, e.amount
                  FROM events e JOIN who ON who.identifier = e.customer_key
                  WHERE e.event_type = 'purchase')
            SELECT c.{EVENT_ID}, count(p.e_us) > 0 AS {PURCHASED},
                   coalesce(sum(p.amount), 0.0) AS {SPEND}
            FROM c LEFT JOIN p
              ON p.person_id = c.person_id AND p.e_us > c.t_us AND p.e_us <= c.t_us + {h_us}
            GROUP BY ALL"""
        ).df()
    finally:
        con.unregister("_ope_ids")
    out = contacts.drop(columns=[PURCHASED, SPEND]).merge(labels, on=EVENT_ID, how="left")
    missing = out[SPEND].isna()
    if missing.any():
        raise ValueError(f"{int(missing.sum())} contacts have no person in the world's truth")
    return out


def occasion_truth(occ: Occasions, contact_truth: pd.DataFrame) -> OccasionTruth:
    """The true expected reward of each candidate of each occasion (two-candidate occasions).

    `spend`: the world realises a contact's effect on the organic Poisson purchases (expected count
    L0 = -log(1 - p0) in the window, amounts with mean v) by adding one induced purchase with
    probability (p1 - p0) / (1 - p0) when p1 > p0, or by deleting the window's organic purchases
    with probability (p0 - p1) / p0 when p1 < p0 (`features.synthetic.responses`). Hence
    E[spend | no contact] = v L0 and E[spend | contact] = v (L0 + (p1 - p0) / (1 - p0)) or
    v L0 p1 / p0. `purchase`: E = P(buy) x the value model's v(x), as the reward defines it.
    """
    t = contact_truth.reindex(occ.frame[EVENT_ID].to_numpy())
    p1 = t["p_purchase_treated"].to_numpy(dtype=float)
    p0 = t["p_purchase_control"].to_numpy(dtype=float)
    v = t["expected_value"].to_numpy(dtype=float)
    if occ.reward_kind == "spend":
        lam0 = -np.log1p(-np.clip(p0, 0.0, 1.0 - 1e-12))
        up = p1 >= p0
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(up, (p1 - p0) / (1.0 - p0), 0.0)
            kept = np.where(up, 1.0, np.where(p0 > 0, p1 / p0, 1.0))
        e0 = v * lam0
        e1 = v * (lam0 * kept + gain)
    else:
        e0 = p0 * occ.order_value
        e1 = p1 * occ.order_value
    n, k = occ.candidates.shape[0], len(occ.action_ids)
    m = occ.occasion_margin
    expected = np.full((n, 1 + k), np.nan)
    expected[:, 0] = m * e0
    contact = m[:, None] * e1[:, None] - occ.cost
    expected[:, 1:] = np.where(occ.candidates[:, 1:], contact, np.nan)
    return OccasionTruth(expected, p1, p0, v)


def reward_check(occ: Occasions, truth: OccasionTruth) -> pd.DataFrame:
    """Realised vs true mean reward on the log, per arm: is the reward coherent with the truth?

    The logged arm's true expected reward is compared with the realised reward on the same
    occasions; their difference (with its standard error) is the systematic mismatch any estimate
    inherits (the world's overlapping contacts, identity fragments whose purchases land elsewhere).
    """
    rows = np.arange(len(occ))
    expected = truth.expected[rows, occ.logged]
    out = []
    for name, mask in (
        ("contacted", occ.contacted()),
        ("held out", ~occ.contacted()),
        ("all (logging policy)", np.ones(len(occ), dtype=bool)),
    ):
        ok = mask & np.isfinite(expected)
        diff = occ.reward[ok] - expected[ok]
        se = _clustered_se(diff - diff.mean(), occ.clusters[ok]) if ok.sum() > 1 else np.nan
        out.append(
            {
                "arm": name,
                "occasions": int(ok.sum()),
                "realised": float(occ.reward[ok].mean()) if ok.any() else np.nan,
                "true": float(expected[ok].mean()) if ok.any() else np.nan,
                "difference": float(diff.mean()) if ok.any() else np.nan,
                "se": se,
            }
        )
    return pd.DataFrame(out)


# --- evaluating several candidate policies -----------------------------------------------------------


def evaluate_policies(
    occ: Occasions,
    targets: dict[str, np.ndarray],
    q: np.ndarray | None,
    truth: OccasionTruth | None = None,
    level: float = 0.95,
    baseline: str | None = None,
) -> list[PolicyValue]:
    """Estimate every target's value (and its true value where the truth is known).

    With `baseline` (one of the targets) and a reward model, each policy also gets the paired DR
    estimate of its difference from the baseline.
    """
    out = []
    for name, probs in targets.items():
        pv = estimate_value(occ, probs, q, level, name=name)
        if truth is not None:
            pv.truth = truth.value(probs)
        if baseline is not None and q is not None:
            pv.difference = estimate_difference(occ, probs, targets[baseline], q, level)
            if truth is not None:
                pv.true_difference = pv.truth - truth.value(targets[baseline])
        out.append(pv)
    return out


def results_frame(values: list[PolicyValue]) -> pd.DataFrame:
    """One row per policy x estimator: value, interval, ESS, truth and whether it is covered."""
    rows = []
    for pv in values:
        found = [(est, pv.truth) for est in pv.estimates.values()]
        if pv.difference is not None:
            found.append((pv.difference, pv.true_difference))
        for est, truth in found:
            rows.append(
                {
                    "policy": pv.name,
                    "estimator": est.estimator,
                    "value": est.value,
                    "se": est.se,
                    "low": est.low,
                    "high": est.high,
                    "ess": pv.ess,
                    "contact_share": pv.contact_share,
                    "truth": truth,
                    "covered": est.covers(truth) if truth is not None else None,
                }
            )
    return pd.DataFrame(rows)


__all__ = [
    "NOTHING",
    "Estimate",
    "Occasions",
    "OccasionTruth",
    "PolicyValue",
    "always_contact",
    "estimate_difference",
    "estimate_value",
    "evaluate_policies",
    "load_contact_truth",
    "logging_policy",
    "never_contact",
    "occasion_truth",
    "occasions_from_contacts",
    "person_outcomes",
    "policy_probabilities",
    "results_frame",
    "reward_check",
    "reward_model",
]
