"""The campaign's assignment: at most one action per customer, best total under global limits.

maximise  sum_i s[i, a_i]  over a_i in {nothing} + allowed actions of i
subject to  sum_i W[k, a_i] <= limit_k  for every global constraint k (channel capacities, action
caps: W is 0/1; the budget: W is the action's cost).

A million customers cannot go into an exact solver, but there are only a few global constraints.
With a price p_k on each, the problem splits: each customer takes the action of the best
*reduced* score s[i, j] - sum_k p_k W[k, j], or nothing if none is positive. The prices are found
by coordinate search on the dual: a count constraint's price is set exactly (the (limit+1)-th
largest of the customers' thresholds, the price at which each would leave it), the budget's by
bisection on a fixed lattice; rounds repeat until the prices settle, then only raise until every
limit holds. What the prices leave unused is filled greedily by gain. The dual value at the final
prices bounds the optimum from above, so every run reports how far from optimal it can be at most.
The prices are the shadow prices: what one more unit of each limit is worth.

The search only asks a backend for per-action counts, the top thresholds and a few candidate
rows: `NumpyScores` answers on one machine; `serving.spark_campaign` answers with per-partition
sums on Spark, and both reach the same prices, hence the same assignments. `solve_lp` solves the
LP relaxation (and optionally the integer programme) exactly with SciPy's HiGHS, for instances of
a few thousand customers, to check the large-scale answer against.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from serving.campaign import Campaign
from serving.catalogue import Catalogue

LATTICE_BITS = 30  # the budget price is the smallest feasible point of hi * i / 2**30
RELATIVE_BUMP = 1e-9  # a count price sits just above its threshold: ties leave, never join
MAX_ROUNDS = 40
GAIN_EPS = 1e-12


@dataclass
class Limits:
    """The global constraints: sum over customers of weights[k, chosen action] <= limit[k]."""

    names: list[str]
    kinds: list[str]  # channel | action | budget
    weights: np.ndarray  # constraints x actions
    limit: np.ndarray

    def __len__(self) -> int:
        return len(self.names)

    def usage(self, counts: np.ndarray) -> np.ndarray:
        """Use of each constraint by per-action counts of the chosen actions."""
        return self.weights @ counts.astype(float)

    def penalty(self, prices: np.ndarray) -> np.ndarray:
        """What the prices charge for each action."""
        return prices @ self.weights


def build_limits(campaign: Campaign, offered: Catalogue) -> Limits:
    """The campaign's capacities, caps and budget over the offered actions, in that order; an
    action's catalogue `max_per_run` is a cap too (the smaller one holds)."""
    actions = offered.actions
    names, kinds, rows, limits = [], [], [], []
    for channel, n in campaign.capacities.items():
        names.append(f"{channel} capacity")
        kinds.append("channel")
        rows.append([float(a.channel == channel) for a in actions])
        limits.append(float(n))
    for j, a in enumerate(actions):
        caps = [c for c in (campaign.caps.get(a.id), a.max_per_run) if c is not None]
        if caps:
            names.append(f"{a.id} cap")
            kinds.append("action")
            rows.append([float(i == j) for i in range(len(actions))])
            limits.append(float(min(caps)))
    if campaign.budget is not None:
        names.append("budget")
        kinds.append("budget")
        rows.append([a.cost for a in actions])
        limits.append(float(campaign.budget))
    weights = np.array(rows, dtype=float).reshape(len(rows), len(actions))
    return Limits(names, kinds, weights, np.array(limits, dtype=float))


class ScoreBackend(Protocol):
    """What the price search asks of the customers' objective scores (rows: customers, columns:
    offered actions, -inf where a hard rule forbids the action)."""

    def counts(self, penalties: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each row of `penalties` (P x actions): customers choosing each action (P x A,
        int64) and the dual's customer term, sum_i max(0, max_j s_ij - penalty_j) (P)."""
        ...

    def kth_threshold(self, members: np.ndarray, penalty: np.ndarray, k: int) -> float:
        """The (k+1)-th largest positive threshold b_in - b_out over customers (0.0 if fewer
        than k+1 are positive): b_in the best reduced score among actions `members`, b_out the
        best elsewhere or nothing."""
        ...

    def max_ratio(self, cost: np.ndarray) -> float:
        """The largest s_ij / cost_j over allowed pairs with cost > 0 (0 if none)."""
        ...

    def candidates(
        self, penalty: np.ndarray, open_actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Customers who gain by moving from their choice at `penalty` to an action of
        `open_actions`: their keys, current choice (-1 nothing) and score rows."""
        ...

    def ambiguous(
        self, penalty: np.ndarray, eps: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Customers whose best two options at `penalty` (nothing included) are within `eps`:
        keys, choice at the prices and score rows."""
        ...

    def marginal(
        self, penalty: np.ndarray, actions: np.ndarray, m: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The m customers choosing one of `actions` at `penalty` who lose least by leaving
        it (reduced margin over their best other option): keys, choice, margin, score rows."""
        ...


class NumpyScores:
    """The score matrix in memory; only customers with some positive score are kept (the rest
    do nothing at any prices). `block` rows at a time bound the temporaries."""

    def __init__(self, score: np.ndarray, keys: np.ndarray, block: int = 200_000) -> None:
        active = np.flatnonzero((score > 0).any(axis=1)) if score.size else np.array([], int)
        self.rows = active
        self.s = np.ascontiguousarray(score[active])
        self.keys = np.asarray(keys)[active]
        self.block = block

    def _blocks(self):
        for start in range(0, len(self.s), self.block):
            yield self.s[start : start + self.block]

    def counts(self, penalties: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        penalties = np.atleast_2d(penalties)
        a = self.s.shape[1]
        out = np.zeros((len(penalties), a), dtype=np.int64)
        dual = np.zeros(len(penalties))
        for s in self._blocks():
            for p, penalty in enumerate(penalties):
                c, d = partition_counts(s, penalty)
                out[p] += c
                dual[p] += d
        return out, dual

    def kth_threshold(self, members: np.ndarray, penalty: np.ndarray, k: int) -> float:
        parts = [top_thresholds(s, members, penalty, k + 1) for s in self._blocks()]
        return kth_of(parts, k)

    def max_ratio(self, cost: np.ndarray) -> float:
        return max([partition_max_ratio(s, cost) for s in self._blocks()], default=0.0)

    def candidates(
        self, penalty: np.ndarray, open_actions: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = [
            partition_candidates(s, penalty, open_actions)
            for s in (self.s[i : i + self.block] for i in range(0, len(self.s), self.block))
        ]
        offsets = np.arange(0, len(self.s), self.block)
        rows = [r + o for (r, _, _), o in zip(found, offsets, strict=True)]
        rows = np.concatenate(rows) if rows else np.array([], dtype=np.int64)
        current = np.concatenate([c for _, c, _ in found]) if found else np.array([], int)
        score = np.vstack([s for _, _, s in found]) if found else np.empty((0, self.s.shape[1]))
        return self.keys[rows], current, score

    def ambiguous(
        self, penalty: np.ndarray, eps: float
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        found = [
            (r + start, c)
            for start in range(0, len(self.s), self.block)
            for r, c in [partition_ambiguous(self.s[start : start + self.block], penalty, eps)]
        ]
        rows = np.concatenate([r for r, _ in found]) if found else np.array([], dtype=np.int64)
        cur = np.concatenate([c for _, c in found]) if found else np.array([], dtype=np.int64)
        return self.keys[rows], cur, self.s[rows]

    def marginal(
        self, penalty: np.ndarray, actions: np.ndarray, m: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        parts = []
        for start in range(0, len(self.s), self.block):
            rows, cur, margin = partition_marginal(
                self.s[start : start + self.block], penalty, actions, m
            )
            parts.append((rows + start, cur, margin))
        rows = np.concatenate([p[0] for p in parts]) if parts else np.array([], dtype=np.int64)
        cur = np.concatenate([p[1] for p in parts]) if parts else np.array([], dtype=np.int64)
        margin = np.concatenate([p[2] for p in parts]) if parts else np.array([])
        keys = self.keys[rows]
        keep = np.lexsort((keys, margin))[:m]
        return keys[keep], cur[keep], margin[keep], self.s[rows[keep]]

    def choices(self, penalty: np.ndarray) -> np.ndarray:
        """The action index each kept customer takes at `penalty` (-1: nothing)."""
        return np.concatenate([choose(s, penalty) for s in self._blocks()] or [np.array([], int)])


# --- per-partition arithmetic, shared by NumpyScores and the Spark job ----------------------------


def choose(s: np.ndarray, penalty: np.ndarray) -> np.ndarray:
    """Each row's best action by reduced score, or -1 when none is positive (nothing wins ties)."""
    if s.shape[1] == 0 or len(s) == 0:
        return np.full(len(s), -1, dtype=np.int64)
    r = s - penalty
    best = np.argmax(r, axis=1)
    val = r[np.arange(len(r)), best]
    return np.where(val > 0, best, -1)


def partition_counts(s: np.ndarray, penalty: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-action counts of the choices at `penalty` and the dual's customer term."""
    a = s.shape[1]
    if len(s) == 0 or a == 0:
        return np.zeros(a, dtype=np.int64), 0.0
    r = s - penalty
    best = np.argmax(r, axis=1)
    val = r[np.arange(len(r)), best]
    chosen = val > 0
    return np.bincount(best[chosen], minlength=a).astype(np.int64), float(val[chosen].sum())


def top_thresholds(s: np.ndarray, members: np.ndarray, penalty: np.ndarray, m: int) -> np.ndarray:
    """The m largest positive thresholds of a block (any order): the price on `members` at
    which each customer would stop choosing one of them."""
    if len(s) == 0 or not members.any():
        return np.array([])
    base = s - penalty
    b_in = base[:, members].max(axis=1)
    b_out = base[:, ~members].max(axis=1, initial=0.0) if (~members).any() else 0.0
    thr = b_in - np.maximum(b_out, 0.0)
    thr = thr[thr > 0]
    if len(thr) > m:
        thr = np.partition(thr, len(thr) - m)[len(thr) - m :]
    return thr


def kth_of(parts: list[np.ndarray], k: int) -> float:
    """The (k+1)-th largest value of the blocks' top thresholds (0.0 if there are at most k)."""
    allv = np.concatenate(parts) if parts else np.array([])
    if len(allv) <= k:
        return 0.0
    return float(np.partition(allv, len(allv) - k - 1)[len(allv) - k - 1])


def partition_max_ratio(s: np.ndarray, cost: np.ndarray) -> float:
    paid = cost > 0
    if len(s) == 0 or not paid.any():
        return 0.0
    ratio = s[:, paid] / cost[paid]
    finite = ratio[np.isfinite(ratio)]
    return float(finite.max()) if len(finite) else 0.0


def partition_candidates(
    s: np.ndarray, penalty: np.ndarray, open_actions: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows that gain (raw score) by moving from their choice at `penalty` to an open action."""
    if len(s) == 0 or not open_actions.any():
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64), s[:0]
    current = choose(s, penalty)
    have = np.where(current >= 0, s[np.arange(len(s)), np.maximum(current, 0)], 0.0)
    best_open = np.where(open_actions, s, -np.inf).max(axis=1)
    rows = np.flatnonzero(best_open > have + GAIN_EPS)
    return rows, current[rows], s[rows]


def partition_ambiguous(
    s: np.ndarray, penalty: np.ndarray, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Rows whose best and second-best reduced options (nothing = 0 included) are within eps,
    with their choice at the prices: the customers the prices leave undecided."""
    if len(s) == 0 or s.shape[1] == 0:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64)
    r = np.column_stack([s - penalty, np.zeros(len(s))])
    top2 = -np.partition(-r, 1, axis=1)[:, :2] if r.shape[1] > 1 else np.column_stack([r, r])
    rows = np.flatnonzero((top2[:, 0] - top2[:, 1] <= eps) & np.isfinite(top2[:, 1]))
    return rows, choose(s[rows], penalty)


def partition_marginal(
    s: np.ndarray, penalty: np.ndarray, actions: np.ndarray, m: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows (at most m) choosing one of `actions` with the smallest reduced margin."""
    if len(s) == 0 or m <= 0:
        return np.array([], dtype=np.int64), np.array([], dtype=np.int64), np.array([])
    current = choose(s, penalty)
    rows = np.flatnonzero((current >= 0) & actions[np.maximum(current, 0)])
    if not len(rows):
        return rows, current[rows], np.array([])
    r = s[rows] - penalty
    own = r[np.arange(len(rows)), current[rows]]
    r[np.arange(len(rows)), current[rows]] = -np.inf
    margin = own - np.maximum(r.max(axis=1), 0.0)
    if len(rows) > m:
        keep = np.argpartition(margin, m - 1)[:m]
        rows, margin = rows[keep], margin[keep]
    return rows, current[rows], margin


# --- the price search ----------------------------------------------------------------------------


@dataclass
class Solution:
    """Prices (shadow prices), the moves the fill made, and how good the plan is."""

    prices: np.ndarray
    penalty: np.ndarray
    moves: dict[object, int]  # customer key -> action index the fill gave them (-1: nothing)
    counts: np.ndarray  # per action, after the fill
    usage: np.ndarray  # per constraint
    objective: float  # sum of the chosen scores
    dual_bound: float  # an upper bound on the LP optimum (hence on any assignment)
    rounds: int
    history: list[dict[str, float]] = field(default_factory=list)
    shadow_prices: np.ndarray | None = None  # the prices of the lowest dual value found

    def __post_init__(self) -> None:
        if self.shadow_prices is None:
            self.shadow_prices = self.prices

    @property
    def gap_bound(self) -> float:
        """At most this share of the optimum is missed."""
        if self.dual_bound <= 0:
            return 0.0
        return max(0.0, (self.dual_bound - self.objective) / self.dual_bound)


def _bumped(t: float) -> float:
    return t + max(abs(t) * RELATIVE_BUMP, 1e-12) if t > 0 else 0.0


def _budget_price(
    backend: ScoreBackend, limits: Limits, k: int, penalty_others: np.ndarray, hi: float, grid: int
) -> float:
    """The smallest lattice price hi * i / 2**LATTICE_BITS at which the constraint holds
    (chosen cost is non-increasing in its price); `grid` points are evaluated per pass."""
    w = limits.weights[k]
    top = 2**LATTICE_BITS

    def feasible(idx: np.ndarray) -> np.ndarray:
        pens = penalty_others[None, :] + (hi * idx / top)[:, None] * w[None, :]
        counts, _ = backend.counts(pens)
        return counts @ w <= limits.limit[k] + 1e-9

    if feasible(np.array([0]))[0]:
        return 0.0
    lo, up = 0, top  # lo infeasible; at hi every paid action is unattractive: up feasible
    while up - lo > 1:
        step = max(1, (up - lo) // (grid + 1))
        idx = np.unique(np.clip(lo + step * np.arange(1, grid + 1), lo + 1, up - 1))
        ok = feasible(idx)
        if ok.any():
            first = int(np.argmax(ok))
            up = int(idx[first])
            lo = int(idx[first - 1]) if first > 0 else lo
        else:
            lo = int(idx[-1])
    return hi * up / top


def solve(
    backend: ScoreBackend,
    limits: Limits,
    n_actions: int,
    grid: int = 1,
    max_rounds: int = MAX_ROUNDS,
    say=None,
) -> Solution:
    """Lagrangian prices on the global constraints, then repair and fill (see the module)."""
    m = len(limits)
    prices = np.zeros(m)
    cost_hi = {}
    for k in range(m):
        if limits.kinds[k] == "budget":
            cost_hi[k] = backend.max_ratio(limits.weights[k]) * (1 + 1e-6) + 1e-9
    history = []

    def update(k: int) -> None:
        others = prices.copy()
        others[k] = 0.0
        pen = limits.penalty(others)
        if limits.kinds[k] == "budget":
            t = _budget_price(backend, limits, k, pen, cost_hi[k], grid)
        else:
            members = limits.weights[k] > 0
            t = _bumped(backend.kth_threshold(members, pen, int(limits.limit[k])))
        prices[k] = t

    def descend(start: np.ndarray) -> int:
        """Coordinate rounds from `start` until the prices settle; returns the rounds."""
        prices[:] = start
        for rounds in range(1, max_rounds + 1):
            before = prices.copy()
            for k in range(m):
                update(k)
            _, dual = backend.counts(limits.penalty(prices)[None, :])
            history.append(
                {"round": len(history) + 1, "dual": float(dual[0] + prices @ limits.limit)}
                | {n: float(p) for n, p in zip(limits.names, prices, strict=True)}
            )
            if say:
                say(f"round {len(history)}: prices {np.round(prices, 4).tolist()}")
            if np.all(np.abs(prices - before) <= 1e-9 * (1 + np.abs(before))):
                return rounds
        return max_rounds

    rounds = descend(prices)
    best = _finish(backend, limits, prices.copy())
    if m > 1 and best.gap_bound > BUNDLE_GAP:
        # coordinate steps can stall at a kink of the dual where only a joint move of several
        # prices descends: cutting planes from that point, then coordinate rounds again
        start, bound = _cutting_planes(backend, limits, prices.copy(), say)
        rounds += descend(start)
        other = _finish(backend, limits, prices.copy())
        shadow = other.prices if other.dual_bound <= best.dual_bound else best.prices
        bound = min(other.dual_bound, bound, best.dual_bound)
        if other.objective > best.objective:
            best = other
        best.dual_bound, best.shadow_prices = bound, shadow
    best.rounds = rounds
    best.history = history
    return best


BUNDLE_GAP = 1e-3  # above this bound on the gap, the cutting planes run


def _finish(backend: ScoreBackend, limits: Limits, prices: np.ndarray) -> Solution:
    """The assignment at `prices`, repaired and filled, with its value and the dual bound."""
    penalty = limits.penalty(prices)
    counts, dual = backend.counts(penalty[None, :])
    counts = counts[0]
    dual_bound = float(dual[0] + prices @ limits.limit)
    at_prices = float(dual[0] + penalty @ counts)  # sum of reduced scores + what they paid
    repaired = _split_ties(backend, limits, penalty, counts)
    if repaired is not None:
        keys, was, now, score = repaired
        np.subtract.at(counts, was[was >= 0], 1)
        np.add.at(counts, now[now >= 0], 1)
    else:
        repaired, counts = _repair(backend, limits, penalty, counts)
    moves, counts, delta = _fill(backend, limits, penalty, counts, repaired)
    return Solution(
        prices=prices,
        penalty=penalty,
        moves=moves,
        counts=counts,
        usage=limits.usage(counts),
        objective=at_prices + delta,
        dual_bound=dual_bound,
        rounds=0,
    )


MAX_TIED = 300_000  # undecided customers beyond this are repaired greedily, not by an LP


def _split_ties(
    backend: ScoreBackend, limits: Limits, penalty: np.ndarray, counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """The customers the prices leave undecided (ties, e.g. a calibrated model's equal scores)
    assigned by the exact LP over them alone, in what the decided ones leave of each limit;
    fractional ones get nothing. None when the decided ones alone break a limit, or too many
    are undecided (the greedy repair takes over)."""
    if not len(limits):
        return None
    eps = 1e-7 * (1.0 + float(np.abs(penalty).max(initial=0.0)))
    keys, current, score = backend.ambiguous(penalty, eps)
    if not len(keys) or len(keys) > MAX_TIED:
        return None
    order = np.argsort(keys, kind="stable")  # a fixed order, whatever the partitioning
    keys, current, score = keys[order], current[order], score[order]
    fixed = counts - np.bincount(current[current >= 0], minlength=len(counts))
    room = limits.limit - limits.usage(fixed)
    if (room < -1e-9).any():
        return None
    room = np.maximum(room, 0.0)
    exact = solve_lp(score, Limits(limits.names, limits.kinds, limits.weights, room))
    now = exact.choice  # x > 0.5: the integral ones (fractional ones are at most one a limit)
    use = limits.usage(np.bincount(now[now >= 0], minlength=len(counts)))
    if (use > room + 1e-9).any():
        return None
    moved = now != current
    return keys[moved], current[moved], now[moved], score[moved]


def _cutting_planes(
    backend: ScoreBackend, limits: Limits, start: np.ndarray, say=None, iterations: int = 60
) -> tuple[np.ndarray, float]:
    """Minimise the dual D(p) = sum_i max(0, max_j s_ij - (pW)_j) + p.limit by cutting planes
    in a trust region (each evaluation gives a cut D(q) >= D(p) + (limit - use(p)).(q - p));
    returns the best prices found and the lowest dual value seen (an upper bound)."""
    from scipy.optimize import linprog

    m = len(limits)

    def evaluate(p: np.ndarray) -> tuple[float, np.ndarray]:
        counts, dual = backend.counts(limits.penalty(p)[None, :])
        return float(dual[0] + p @ limits.limit), limits.limit - limits.usage(counts[0])

    center = start.copy()
    d_center, g = evaluate(center)
    cuts_g, cuts_c = [g], [d_center - g @ center]
    radius = max(float(center.max()), 1e-3)
    for it in range(iterations):
        lo = np.maximum(center - radius, 0.0)
        hi = center + radius
        a_ub = np.column_stack([np.array(cuts_g), -np.ones(len(cuts_g))])
        res = linprog(
            np.r_[np.zeros(m), 1.0],
            A_ub=a_ub,
            b_ub=-np.array(cuts_c),
            bounds=[*zip(lo, hi, strict=True), (None, None)],
            method="highs",
        )
        if res.status != 0:
            break
        p, model = res.x[:m], float(res.x[m])
        predicted = d_center - model
        if predicted <= 1e-9 * max(1.0, abs(d_center)):
            if radius < 1e-9:
                break
            radius *= 0.5  # nothing to gain in this box at this precision: look closer
            continue
        d, g = evaluate(p)
        cuts_g.append(g)
        cuts_c.append(d - g @ p)
        if d <= d_center - 0.1 * predicted:  # a serious step: move, look wider
            center, d_center = p, d
            radius *= 2.0
        else:
            radius *= 0.5
        if say:
            say(f"cutting plane {it + 1}: dual {d_center:.6f}, radius {radius:.3g}")
    return center, d_center


def _repair(
    backend: ScoreBackend, limits: Limits, penalty: np.ndarray, counts: np.ndarray
) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], np.ndarray]:
    """Make every limit hold: customers of an over-used constraint who lose least leave it for
    their best raw alternative that fits, or nothing (a handful: those tied at the prices).
    Returns (keys, choice at the prices, new choice, score rows) of the customers moved."""
    counts = counts.copy()
    usage = limits.usage(counts)
    nothing = (np.array([]), np.array([], dtype=np.int64), np.array([], dtype=np.int64), None)
    over = usage > limits.limit + 1e-9
    if not over.any():
        return nothing, counts
    excess = usage - limits.limit
    want = 0
    for k in np.flatnonzero(over):
        w = limits.weights[k][limits.weights[k] > 0]
        want += int(np.ceil(excess[k] / w.min())) if len(w) else 0
    m = 2 * want + 16
    while True:
        bad = (limits.weights[over] > 0).any(axis=0)
        keys, current, margin, score = backend.marginal(penalty, bad, m)
        now, use = current.copy(), usage.copy()
        for i in range(len(keys)):  # a few customers, in order of least loss
            over_now = use > limits.limit + 1e-9
            if not over_now.any():
                break
            a = now[i]
            if not (limits.weights[over_now, a] > 0).any():
                continue
            fits = limits.weights <= (limits.limit - use + limits.weights[:, a])[:, None] + 1e-9
            fits = fits.all(axis=0) & ~(limits.weights[over_now] > 0).any(axis=0)
            options = np.where(fits, score[i], -np.inf)
            b = int(np.argmax(options))
            target = b if options[b] > 0 else -1
            use = use - limits.weights[:, a] + (limits.weights[:, target] if target >= 0 else 0.0)
            now[i] = target
        if not (use > limits.limit + 1e-9).any() or len(keys) < m:
            break
        m *= 4  # more customers tied than asked for: ask for more
    for a, b in zip(current, now, strict=True):
        if a != b:
            counts[a] -= 1
            if b >= 0:
                counts[b] += 1
    moved = now != current
    return (keys[moved], current[moved], now[moved], score[moved]), counts


def _fill(
    backend: ScoreBackend,
    limits: Limits,
    penalty: np.ndarray,
    counts: np.ndarray,
    repaired: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None],
) -> tuple[dict[object, int], np.ndarray, float]:
    """Use what the prices left unused: customers move to a better open action, best gain
    first, while every limit holds (a few rounds on the few customers near a threshold)."""
    counts = counts.copy()
    usage = limits.usage(counts)
    slack = limits.limit - usage

    def open_mask(slack: np.ndarray) -> np.ndarray:
        fits = (limits.weights <= slack[:, None] + 1e-9) | (limits.weights <= 0)
        return fits.all(axis=0)

    is_open = open_mask(slack)
    keys, current, score = backend.candidates(penalty, is_open)
    r_keys, r_from, r_to, r_score = repaired
    now = current.copy()
    if len(r_keys):  # the repaired customers start from their repaired choice
        again = np.isin(keys, r_keys)
        keys, current, now, score = keys[~again], current[~again], now[~again], score[~again]
        keys = np.concatenate([keys, r_keys])
        current = np.concatenate([current, r_from])
        now = np.concatenate([now, r_to])
        score = np.vstack([score, r_score])
    if not len(keys):
        return {}, counts, 0.0
    order = np.argsort(keys, kind="stable")  # a fixed order, whatever the partitioning
    keys, current, now, score = keys[order], current[order], now[order], score[order]
    raw = score.copy()  # `score` loses the targets that stopped fitting
    moved = now != current
    rows = np.arange(len(keys))
    for _ in range(200):
        is_open = open_mask(limits.limit - usage)
        have = np.where(now >= 0, score[rows, np.maximum(now, 0)], 0.0)
        target = np.argmax(np.where(is_open, score, -np.inf), axis=1)
        gain = score[rows, target] - have
        gain = np.where(is_open.any(), gain, -np.inf)
        cand = np.flatnonzero(gain > GAIN_EPS)
        if not len(cand):
            break
        cand = cand[np.argsort(-gain[cand], kind="stable")]
        w_to = limits.weights[:, target[cand]]
        w_from = np.where(now[cand] >= 0, limits.weights[:, np.maximum(now[cand], 0)], 0.0)
        cum = usage[:, None] + np.cumsum(w_to - w_from, axis=1)
        ok = (cum <= limits.limit[:, None] + 1e-9).all(axis=0)
        take = len(ok) if ok.all() else int(np.argmin(ok))
        if take == 0:
            # the best candidate does not fit any more: drop its target and go on
            score[cand[0], target[cand[0]]] = -np.inf
            continue
        acc = cand[:take]
        usage = cum[:, take - 1]
        np.subtract.at(counts, now[acc][now[acc] >= 0], 1)
        np.add.at(counts, target[acc], 1)
        now[acc] = target[acc]
        moved[acc] = True
    changed = moved & (now != current)
    gained = np.where(now >= 0, raw[rows, np.maximum(now, 0)], 0.0)
    had = np.where(current >= 0, raw[rows, np.maximum(current, 0)], 0.0)
    delta = float((gained - had)[changed].sum())
    moves = {k: int(a) for k, a in zip(keys[changed], now[changed], strict=True)}
    return moves, counts, delta


# --- the exact solution, for instances of a few thousand customers -------------------------------


@dataclass
class ExactSolution:
    objective: float
    choice: np.ndarray  # per customer, action index or -1 (the integer solution, if asked)
    duals: np.ndarray  # per constraint: the LP's shadow price (>= 0)
    integer: bool


def solve_lp(score: np.ndarray, limits: Limits, integer: bool = False) -> ExactSolution:
    """The exact optimum with HiGHS: the LP relaxation (`integer=False`; its value bounds every
    assignment) or the integer programme. Only allowed pairs with a positive score are
    variables (the others are never worth taking)."""
    from scipy import sparse
    from scipy.optimize import Bounds, LinearConstraint, linprog, milp

    n, a = score.shape
    rows, cols = np.nonzero(np.isfinite(score) & (score > 0))
    v = len(rows)
    c = -score[rows, cols]
    one = sparse.csr_matrix((np.ones(v), (rows, np.arange(v))), shape=(n, v))
    glob = sparse.csr_matrix(limits.weights[:, cols]) if len(limits) else sparse.csr_matrix((0, v))
    A = sparse.vstack([one, glob]).tocsr()
    b = np.concatenate([np.ones(n), limits.limit])
    if integer:
        res = milp(
            c,
            constraints=LinearConstraint(A, -np.inf, b),
            integrality=np.ones(v),
            bounds=Bounds(0, 1),
            options={"mip_rel_gap": 1e-9},
        )
        duals = np.full(len(limits), np.nan)
    else:
        res = linprog(c, A_ub=A, b_ub=b, bounds=(0, 1), method="highs")
        duals = -res.ineqlin.marginals[n:] if res.status == 0 else np.full(len(limits), np.nan)
    if res.status != 0:
        raise RuntimeError(f"HiGHS did not solve the campaign: {res.message}")
    x = res.x
    choice = np.full(n, -1, dtype=np.int64)
    taken = x > 0.5
    choice[rows[taken]] = cols[taken]
    return ExactSolution(float(-res.fun), choice, np.asarray(duals, dtype=float), integer)


def assignment_value(score: np.ndarray, choice: np.ndarray) -> float:
    """Sum of the chosen scores (-1: nothing, 0)."""
    rows = np.flatnonzero(choice >= 0)
    return float(score[rows, choice[rows]].sum())


def check_limits(limits: Limits, choice: np.ndarray, n_actions: int) -> np.ndarray:
    """Use of each constraint by a choice (per customer, -1 nothing)."""
    counts = np.bincount(choice[choice >= 0], minlength=n_actions)
    return limits.usage(counts)


def lagrangian_choice(
    score: np.ndarray, keys: np.ndarray, limits: Limits
) -> tuple[np.ndarray, Solution]:
    """The large-scale method on a score matrix in memory: per customer action index (-1
    nothing) and the solution (prices, bound)."""
    backend = NumpyScores(score, keys)
    sol = solve(backend, limits, score.shape[1])
    choice = apply_solution(score, keys, sol)
    sol.objective = assignment_value(score, choice)
    return choice, sol


def apply_solution(
    score: np.ndarray, keys: np.ndarray, sol: Solution, block: int = 200_000
) -> np.ndarray:
    """Each customer's action at the solution's prices, with the fill's moves."""
    choice = np.concatenate(
        [choose(score[i : i + block], sol.penalty) for i in range(0, len(score), block)]
        or [np.array([], dtype=np.int64)]
    )
    if sol.moves:
        import pandas as pd

        where = pd.Index(keys).get_indexer(list(sol.moves))
        choice[where] = list(sol.moves.values())
    return choice
