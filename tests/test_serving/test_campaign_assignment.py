"""The large-scale assignment against the exact optimum, and its limits, on score matrices.

Instances of a few thousand customers with the shapes of a campaign (several channels, a nested
action cap, a budget, forbidden pairs, heavy-tailed scores, customers tied exactly): the
Lagrangian answer is never over a limit, never takes a forbidden pair, and is within 0.5% of the
LP optimum, which bounds every assignment (HiGHS; the integer optimum is checked too).
"""

from __future__ import annotations

import numpy as np
import pytest

from serving.assignment import (
    Limits,
    NumpyScores,
    assignment_value,
    check_limits,
    lagrangian_choice,
    solve,
    solve_lp,
)

CHANNEL = np.array([0, 0, 0, 1, 2, 2, 3])  # e-mail x3, sms, direct mail x2, call centre
COST = np.array([0.002, 0.002, 0.002, 0.03, 0.8, 0.8, 4.0])


def instance(seed: int, n: int = 3000, ties: bool = False, coarse: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    a = len(CHANNEL)
    # heavy-tailed value per customer, action effects with a channel level, costs subtracted
    scale = rng.lognormal(0.0, 1.0, (n, 1))
    s = scale * rng.normal([0.3, 0.2, 0.25, 0.4, 1.0, 1.2, 4.5], 1.0, (n, a)) - COST
    s[rng.random((n, a)) < 0.35] = -np.inf  # hard rules: forbidden pairs
    if coarse:  # few distinct scores, as a calibrated (isotonic) probability gives: tie blocks
        s = np.round(s, 1)
    if ties:  # the same customer many times over (a resampled base): exact ties at every price
        s = np.repeat(s[: n // 20], 20, axis=0)
    return s


def limits(kind: str, n: int) -> Limits:
    a = len(CHANNEL)
    rows, names, kinds, lim = [], [], [], []

    def add(name, k, w, v):
        names.append(name)
        kinds.append(k)
        rows.append(w)
        lim.append(v)

    if kind in ("all", "channels"):
        add("email capacity", "channel", (CHANNEL == 0).astype(float), 0.4 * n)
        add("direct_mail capacity", "channel", (CHANNEL == 2).astype(float), 0.05 * n)
        add("call_centre capacity", "channel", (CHANNEL == 3).astype(float), 0.02 * n)
    if kind in ("all", "caps"):
        add("dm 5 cap", "action", np.eye(a)[5], 0.03 * n)  # nested inside direct mail
        add("sms cap", "action", np.eye(a)[3], 0.1 * n)
    if kind in ("all", "budget"):
        add("budget", "budget", COST.astype(float), 0.12 * n)
    return Limits(names, kinds, np.array(rows), np.array(lim, dtype=float))


CASES = [(seed, kind, False) for seed in (1, 2, 3) for kind in ("all", "channels", "budget")] + [
    (4, "caps", False),
    (5, "all", True),
    (6, "budget", True),
]
COARSE = [(7, "all"), (8, "budget"), (9, "channels")]


@pytest.mark.parametrize(("seed", "kind", "ties"), CASES)
def test_within_half_a_percent_of_the_lp_and_never_over_a_limit(seed, kind, ties):
    s = instance(seed, ties=ties)
    lim = limits(kind, len(s))
    keys = np.array([f"c{i:06d}" for i in range(len(s))], dtype=object)
    choice, sol = lagrangian_choice(s, keys, lim)

    used = check_limits(lim, choice, s.shape[1])
    assert (used <= lim.limit + 1e-9).all(), dict(zip(lim.names, used, strict=True))
    taken = choice >= 0
    assert np.isfinite(s[taken, choice[taken]]).all(), "a forbidden pair was assigned"

    lp = solve_lp(s, lim)
    ours = assignment_value(s, choice)
    assert ours == pytest.approx(sol.objective)
    assert ours >= (1 - 0.005) * lp.objective, f"ours {ours:.3f}, LP {lp.objective:.3f}"
    assert ours <= lp.objective + 1e-6  # the LP bounds every assignment: the check can fail
    assert sol.dual_bound >= lp.objective - 1e-6 * abs(lp.objective)  # a true upper bound
    assert sol.gap_bound < 0.005


@pytest.mark.parametrize(("seed", "kind"), COARSE)
def test_tie_blocks_are_split_near_the_optimum(seed, kind):
    """With few distinct scores whole blocks of customers are tied at the prices; they are
    split by an LP over them alone, within what the decided customers leave."""
    s = instance(seed, coarse=True)
    lim = limits(kind, len(s))
    choice, sol = lagrangian_choice(s, np.arange(len(s)), lim)
    assert (check_limits(lim, choice, s.shape[1]) <= lim.limit + 1e-9).all()
    lp = solve_lp(s, lim)
    assert sol.objective >= (1 - 0.005) * lp.objective, (sol.objective, lp.objective)


def test_integer_optimum_is_between_ours_and_the_lp():
    s = instance(7, n=1500)
    lim = limits("all", len(s))
    choice, sol = lagrangian_choice(s, np.arange(len(s)), lim)
    ip = solve_lp(s, lim, integer=True)
    lp = solve_lp(s, lim)
    assert (check_limits(lim, ip.choice, s.shape[1]) <= lim.limit + 1e-6).all()
    assert sol.objective <= ip.objective + 1e-6 <= lp.objective + 2e-6
    assert sol.objective >= 0.995 * ip.objective


def test_shadow_prices_are_what_one_more_unit_is_worth():
    """Each price lies between the LP optimum's gain from one more unit of its limit and its
    loss from one unit fewer (the LP value is concave in the limit: any valid price does)."""
    s = instance(8)
    lim = limits("all", len(s))
    _, sol = lagrangian_choice(s, np.arange(len(s)), lim)
    base = solve_lp(s, lim).objective
    for k, name in enumerate(lim.names):
        step = 1.0

        def at(delta, k=k):
            moved = Limits(lim.names, lim.kinds, lim.weights, lim.limit.copy())
            moved.limit[k] += delta
            return solve_lp(s, moved).objective

        gain, loss = at(step) - base, base - at(-step)
        price = sol.shadow_prices[k]
        assert gain - 1e-6 <= price * step <= loss + 1e-6, (name, gain, price, loss)


def test_a_limit_of_zero_and_no_limits():
    s = instance(9, n=500)
    zero = Limits(["call_centre capacity"], ["channel"], (CHANNEL == 3)[None, :] * 1.0, [0.0])
    zero.limit = np.array([0.0])
    choice, _ = lagrangian_choice(s, np.arange(len(s)), zero)
    assert not (CHANNEL[choice[choice >= 0]] == 3).any()
    none = Limits([], [], np.zeros((0, s.shape[1])), np.zeros(0))
    choice, sol = lagrangian_choice(s, np.arange(len(s)), none)
    best = np.where(np.max(s, axis=1) > 0, np.argmax(s, axis=1), -1)
    np.testing.assert_array_equal(choice, best)  # unconstrained: each customer's best
    assert sol.gap_bound == pytest.approx(0.0, abs=1e-12)


def test_the_search_does_not_depend_on_how_the_customers_are_split():
    """Blocks of customers (as Spark partitions them) and the budget grid change nothing."""
    s = instance(10)
    lim = limits("all", len(s))
    keys = np.array([f"c{i:06d}" for i in range(len(s))], dtype=object)
    a = solve(NumpyScores(s, keys), lim, s.shape[1])
    b = solve(NumpyScores(s, keys, block=337), lim, s.shape[1], grid=15)
    np.testing.assert_array_equal(a.prices, b.prices)
    assert a.moves == b.moves
