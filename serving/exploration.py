"""Choosing among the candidates, greedily or exploring, with the exact probability of each pick.

Candidates are column 0, "do nothing" (score 0, always available), then the catalogue's actions
(score -inf when not eligible). Every decision records the probability its choice had, which is
what makes off-policy evaluation of other policies possible later.
"""

from __future__ import annotations

import numpy as np

from serving.config import Exploration


def with_nothing(scores: np.ndarray) -> np.ndarray:
    """Scores with the do-nothing column (0) in front."""
    return np.column_stack([np.zeros(len(scores)), scores])


def choice_probabilities(scores: np.ndarray, cfg: Exploration) -> np.ndarray:
    """P(pick candidate) per customer over [nothing, *actions]; rows sum to 1, ineligible get 0.

    Greedy: the best candidate, do nothing on ties (an action must strictly beat doing nothing).
    Epsilon-greedy: (1 - eps) on the best plus eps spread evenly over the eligible candidates.
    Softmax: exp(score / temperature), normalised over the eligible candidates.
    """
    s = with_nothing(scores)
    eligible = np.isfinite(s)
    best = np.argmax(s, axis=1)  # first maximum: do nothing wins ties
    greedy = np.zeros_like(s)
    greedy[np.arange(len(s)), best] = 1.0
    if cfg.mode == "none":
        return greedy
    if cfg.mode == "epsilon_greedy":
        uniform = eligible / eligible.sum(axis=1, keepdims=True)
        return (1.0 - cfg.epsilon) * greedy + cfg.epsilon * uniform
    z = np.where(eligible, s / cfg.temperature, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    w = np.exp(z)
    return w / w.sum(axis=1, keepdims=True)


def sample(probabilities: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One candidate index per row, drawn with the row's probabilities (vectorised)."""
    cum = np.cumsum(probabilities, axis=1)
    u = rng.random(len(probabilities)) * cum[:, -1]
    picked = (cum <= u[:, None]).sum(axis=1)
    # a pick never lands on a zero-probability candidate (float round-off at the top end)
    return np.minimum(picked, probabilities.shape[1] - 1)
