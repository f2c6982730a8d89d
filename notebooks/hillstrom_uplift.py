# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Uplift on the Hillstrom e-mail experiment
#
# 64,000 customers were randomly sent a men's e-mail, a women's e-mail, or nothing
# (`../shared/data/hillstrom/`). Because treatment was randomised, we can measure how well a
# model finds the customers an e-mail *changes*, not merely the ones who respond.
#
# We compare, on held-out halves (repeated random splits):
# * the project's uplift learner, `training.models.UpliftRLearner` (R-learner: out-of-fold
#   baseline m(x), the treated share e, a regularised LightGBM model of the effect),
# * for conversions, the same learner **through the visit**, `UpliftThroughStep`: a conversion
#   needs a visit, so the e-mail's effect on conversion is ranked by its effect on visits
#   (learned from 15% of customers instead of 0.9%) times P(conversion | visit, x),
# * the project's previous learner, `UpliftSLearner` (LightGBM with the treatment as a feature),
# * a naive T-learner (two default LightGBM models, treated and control),
# * a plain **response model** (P(outcome | treated), i.e. "send where response is likeliest"),
#
# by Qini coefficient, and by the value of targeting against sending to everyone, to no one,
# and to the customers the response model ranks first.

# %%
import os
import time
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd

from training.metrics import qini_coefficient, uplift_at
from training.models import (
    CHANNEL_FEATURE,
    CalibratedClassifier,
    LGBMParams,
    UpliftParams,
    UpliftRLearner,
    UpliftSLearner,
    UpliftThroughStep,
)

STARTED = time.perf_counter()
DATA = Path(os.environ.get("HILLSTROM_CSV", "../../shared/data/hillstrom/hillstrom.csv"))
if not DATA.exists():  # run from the repository root
    DATA = Path("../shared/data/hillstrom/hillstrom.csv")
SAMPLE = float(os.environ.get("NBA_NOTEBOOK_SAMPLE", "1.0"))  # CI may run on a sample
df = pd.read_csv(DATA).sample(frac=SAMPLE, random_state=0).reset_index(drop=True)
df.groupby("segment")[["visit", "conversion", "spend"]].mean()

# %% [markdown]
# Features are Hillstrom's own columns. Hillstrom's `channel` is the channel the customer
# *bought* from (Phone, Web, Multichannel); the R-learner reserves the `channel` column for the
# channel it is *contacting* on (it estimates the treated share e per contact channel), so
# Hillstrom's column is renamed `purchase_channel` and kept as a feature, and every row gets
# the contact channel `email`. The randomisation is the same for every customer, so e is one
# number per treatment comparison.

# %%
df = df.rename(columns={"channel": "purchase_channel"})
df[CHANNEL_FEATURE] = "email"
FEATURES = ["recency", "history", "mens", "womens", "zip_code", "newbie", "purchase_channel"]
R_FEATURES = [*FEATURES, CHANNEL_FEATURE]  # the R-learner also reads the contact channel
TREATMENTS = {
    "any e-mail": ["Mens E-Mail", "Womens E-Mail"],
    "mens": ["Mens E-Mail"],
    "womens": ["Womens E-Mail"],
}
OUTCOMES = ["visit", "conversion"]
REPEATS = int(os.environ.get("NBA_NOTEBOOK_REPEATS", "3"))

# %% [markdown]
# ## Set-up
#
# Each repetition holds out a random half for evaluation (the experiment has no time axis). Of
# the other half, 70% trains and 30% is the later slice that calibrates the classifiers and
# early-stops the R-learner's effect model. Qini estimates on ~300 conversions are noisy, so the
# verdict is on the mean over `REPEATS` splits.
#
# The classifiers (the R-learner's baseline, the S-learner, the response model) are heavily
# regularised (trees of 3 leaves, at least 1,000 customers a leaf): effects are a fraction of a
# point, and a flexible model mostly fits noise, which is why the naive T-learner fails here.
# LightGBM runs on one thread: the models are small, and two threads on a busy 2-core machine
# are many times slower.
#
# **The R-learner's effect-model settings.** `UpliftParams()` defaults (4 leaves of at least
# 20,000 contacts) are set for the synthetic world's hundreds of thousands of contacts; here
# the effect model trains on 15,000-22,000 customers, where they allow no split. Rather than
# guess, each split picks one of three settings — a medium surface (7 leaves of at least 2,000,
# shrinkage 50, the defaults before December 2026), a coarser one (3 leaves of at least 4,000)
# and a finer one (7 leaves of at least 500, at most 100 trees) — by 2-fold
# cross-validated Qini **within its training half**; the test half is never looked at. The
# chosen setting is refitted on the whole training half.

# %%
params = LGBMParams(
    num_leaves=3,
    learning_rate=0.05,
    min_child_samples=1000,
    n_estimators=300,
    colsample_bytree=1.0,
    n_jobs=1,
)
MEDIUM = dict(
    num_leaves=7,
    min_child_samples=2000,
    learning_rate=0.03,
    early_stopping_rounds=30,
    other_surfaces=[],
)
UPLIFT_GRID = {
    "medium": UpliftParams(**MEDIUM, n_estimators=300),
    "coarse": UpliftParams(
        **MEDIUM | {"num_leaves": 3, "min_child_samples": 4000}, n_estimators=300
    ),
    "fine": UpliftParams(**MEDIUM | {"min_child_samples": 500}, n_estimators=100),
}


def fit_r_learner(
    up: UpliftParams, X: pd.DataFrame, t: np.ndarray, y: np.ndarray, seed: int
) -> UpliftRLearner:
    """The R-learner on X, with a random 30% of it as the calibration / early-stopping slice."""
    cal = np.random.default_rng(seed).random(len(X)) < 0.3
    return UpliftRLearner(params, up).fit(X[~cal], t[~cal], y[~cal], X[cal], t[cal], y[cal])


def choose_uplift_params(X: pd.DataFrame, t: np.ndarray, y: np.ndarray, seed: int) -> str:
    """The UPLIFT_GRID entry with the best 2-fold cross-validated Qini on the training half."""
    fold = np.random.default_rng(seed + 1000).random(len(X)) < 0.5
    cv = {}
    for name, up in UPLIFT_GRID.items():
        q = []
        for k in (True, False):
            fit = fold != k  # fit on one fold, score the other
            model = fit_r_learner(up, X[fit], t[fit], y[fit], seed)
            q.append(qini_coefficient(y[~fit], t[~fit], model.predict_uplift(X[~fit])))
        cv[name] = float(np.mean(q))
    return max(cv, key=cv.get)


def naive_t_learner(tr: pd.DataFrame, t: np.ndarray, y: str, X_test: pd.DataFrame) -> np.ndarray:
    """Two default LightGBM classifiers: the learner the issue says is not good enough."""
    X = pd.get_dummies(tr[FEATURES], dtype=float)
    Xt = pd.get_dummies(X_test[FEATURES], dtype=float).reindex(columns=X.columns, fill_value=0)
    m1 = lgb.LGBMClassifier(verbose=-1, n_jobs=1).fit(X[t], tr.loc[t, y])
    m0 = lgb.LGBMClassifier(verbose=-1, n_jobs=1).fit(X[~t], tr.loc[~t, y])
    return m1.predict_proba(Xt)[:, 1] - m0.predict_proba(Xt)[:, 1]


def rankings(
    d: pd.DataFrame,
    treated: np.ndarray,
    outcome: str,
    seed: int,
    visit_learner: UpliftRLearner | None = None,
):
    """Fit the rankings on one random split; return test scores, test rows, treatment, the
    chosen R-learner setting and the R-learner. For conversions, `visit_learner` is the split's
    R-learner of visits (the same seed gives the same split), reused by the through-visit one."""
    rng = np.random.default_rng(seed)
    test = rng.random(len(d)) < 0.5
    cal = ~test & (rng.random(len(d)) < 0.3)
    tr = ~test & ~cal
    y = d[outcome].to_numpy()
    half = d[~test].reset_index(drop=True)
    chosen = choose_uplift_params(half[R_FEATURES], treated[~test], y[~test], seed)
    r_learner = UpliftRLearner(params, UPLIFT_GRID[chosen]).fit(
        d.loc[tr, R_FEATURES], treated[tr], y[tr], d.loc[cal, R_FEATURES], treated[cal], y[cal]
    )
    s_learner = UpliftSLearner(params).fit(
        d.loc[tr, FEATURES], treated[tr], y[tr], d.loc[cal, FEATURES], treated[cal], y[cal]
    )
    response = CalibratedClassifier(params).fit(
        d.loc[tr & treated, FEATURES],
        y[tr & treated],
        d.loc[cal & treated, FEATURES],
        y[cal & treated],
    )
    te = d[test].reset_index(drop=True)
    scores = {
        "R-learner": r_learner.predict_uplift(te[R_FEATURES]),
        "S-learner": s_learner.predict_uplift(te[FEATURES]),
        "naive T-learner": naive_t_learner(d[tr].reset_index(drop=True), treated[tr], outcome, te),
        "response model": response.predict_proba(te[FEATURES]),
    }
    if outcome == "conversion":
        visit = d["visit"].to_numpy()
        through_visit = UpliftThroughStep(visit_learner or UpliftRLearner(params)).fit(
            d.loc[tr, R_FEATURES], treated[tr], visit[tr], y[tr],
            d.loc[cal, R_FEATURES], treated[cal], visit[cal], y[cal],
        )  # fmt: skip
        scores["R-learner via visit"] = through_visit.predict_uplift(te[R_FEATURES])
    return scores, te, treated[test], chosen, r_learner


# %% [markdown]
# ## Value of targeting
#
# For a targeting rule "e-mail the top k% by score", the experiment's randomisation gives an
# unbiased estimate of the spend per customer it would earn: treated customers inside the
# target, control customers outside it, each re-weighted by the share assigned to their arm
# (inverse propensity weighting). An e-mail costs `COST`; spend earns `MARGIN`. Every ranking
# is valued in dollars of profit per customer on the same test half, whichever outcome (visit
# or conversion) it was trained for. `k = 0` is sending to no one, `k = 1` sending to everyone.

# %%
COST, MARGIN = 0.10, 0.30
FRACTIONS = [0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]


def policy_value(y: np.ndarray, treated: np.ndarray, target: np.ndarray) -> float:
    """Estimated profit per customer of e-mailing exactly the `target` customers."""
    e = treated.mean()
    gain = np.where(target & treated, y / e, 0.0) + np.where(~target & ~treated, y / (1 - e), 0.0)
    return float(np.mean(gain) * MARGIN - COST * target.mean())


def top(score: np.ndarray, k: float) -> np.ndarray:
    target = np.zeros(len(score), dtype=bool)
    target[np.argsort(-score, kind="stable")[: int(round(k * len(score)))]] = True
    return target


# %% [markdown]
# ## Qini on the held-out halves

# %%
rows, values, choices = [], [], []
for name, arms in TREATMENTS.items():
    d = df[df.segment.isin([*arms, "No E-Mail"])].reset_index(drop=True)
    treated = d.segment.isin(arms).to_numpy()
    visit_learners = {}  # seed -> the split's R-learner of visits, reused for conversions
    for outcome in OUTCOMES:
        for seed in range(REPEATS):
            scores, te, t_te, chosen, learner = rankings(
                d, treated, outcome, seed, visit_learners.get(seed)
            )
            if outcome == "visit":
                visit_learners[seed] = learner
            choices.append({"treatment": name, "outcome": outcome, "seed": seed, "chosen": chosen})
            y, spend = te[outcome].to_numpy(), te["spend"].to_numpy()
            for model, s in scores.items():
                rows.append(
                    {
                        "treatment": name,
                        "outcome": outcome,
                        "model": model,
                        "seed": seed,
                        "qini": qini_coefficient(y, t_te, s),
                        "uplift@30%": uplift_at(y, t_te, s, 0.3),
                    }
                )
                for k in FRACTIONS:
                    values.append(
                        {
                            "treatment": name,
                            "outcome": outcome,
                            "model": model,
                            "seed": seed,
                            "targeted": k,
                            "profit": policy_value(spend, t_te, top(s, k)),
                        }
                    )
runs = pd.DataFrame(rows)
MODELS = ["R-learner", "R-learner via visit", "S-learner", "naive T-learner", "response model"]
qini = runs.pivot_table(
    index=["treatment", "outcome"], columns="model", values="qini", aggfunc="mean"
)[MODELS]
(qini * 1e4).round(2)  # Qini coefficient x 10^4, mean over the splits

# %% [markdown]
# The spread over splits (standard deviation of the Qini x 10^4), and the R-learner setting
# each split chose on its training half:

# %%
spread = runs.pivot_table(
    index=["treatment", "outcome"], columns="model", values="qini", aggfunc="std"
)[MODELS]
(spread * 1e4).round(2)

# %%
pd.DataFrame(choices).pivot_table(
    index=["treatment", "outcome"], columns="seed", values="chosen", aggfunc="first"
)

# %% [markdown]
# Uplift among the top 30% (treated minus control rate, mean over splits):

# %%
runs.pivot_table(
    index=["treatment", "outcome"], columns="model", values="uplift@30%", aggfunc="mean"
)[MODELS].round(4)

# %% [markdown]
# ## Value of targeting, mean over splits
#
# Profit per customer (dollars) of e-mailing the top k by each ranking. Columns 0 and 1 are
# sending to no one and to everyone (the same for every ranking).

# %%
value = pd.DataFrame(values).pivot_table(
    index=["treatment", "outcome", "model"], columns="targeted", values="profit", aggfunc="mean"
)
value.round(4)

# %% [markdown]
# At a fixed campaign of the top 30% (chosen in advance, not on the test halves), against
# sending to everyone and to no one:

# %%
at30 = value[0.3].unstack("model")[MODELS]
targeting = at30.assign(
    **{"send to everyone": value[1.0].unstack("model").iloc[:, 0]},
    **{"send to no one": value[0.0].unstack("model").iloc[:, 0]},
)
targeting.round(4)

# %% [markdown]
# ## Verdict
#
# The goal: the uplift ranking's Qini beats the response model's (which ranks the customers who
# would visit or buy anyway first). The project's ranking is fixed in advance per outcome: the
# R-learner for visits, and the R-learner through the visit for conversions (a conversion needs
# a visit, and visits are 16 times as many events). The table below is computed from the runs
# above: the mean Qini difference over splits, how many splits the project's ranking won, and
# whether it beats the response model, the direct R-learner and the naive T-learner on average.

# %%
PROJECT = {"visit": "R-learner", "conversion": "R-learner via visit"}
per_split = runs.pivot_table(index=["treatment", "outcome", "seed"], columns="model", values="qini")
outcome_of = per_split.index.get_level_values("outcome")
project = pd.Series(
    np.where(outcome_of == "visit", per_split["R-learner"], per_split["R-learner via visit"]),
    index=per_split.index,
)
diff = (project - per_split["response model"]).groupby(level=["treatment", "outcome"])
project_qini = project.groupby(level=["treatment", "outcome"]).mean()
verdict = pd.DataFrame(
    {
        "ranking": [PROJECT[o] for o in project_qini.index.get_level_values("outcome")],
        "project - response (x1e4)": diff.mean() * 1e4,
        "splits won vs response": diff.apply(lambda x: f"{(x > 0).sum()}/{len(x)}"),
        "beats response": project_qini > qini["response model"],
        # only conversions rank by another learner than the direct R-learner
        "beats R-learner direct": (project_qini > qini["R-learner"]).where(
            project_qini.index.get_level_values("outcome") == "conversion"
        ),
        "beats naive T": project_qini > qini["naive T-learner"],
    }
)
print(
    f"The project's uplift ranking beats the response model's Qini on "
    f"{int(verdict['beats response'].sum())} of {len(verdict)} treatment/outcome pairs and the "
    f"naive T-learner's on {int(verdict['beats naive T'].sum())} (mean over {REPEATS} splits); "
    f"notebook ran in {time.perf_counter() - STARTED:.0f}s."
)
verdict.round(2)

# %% [markdown]
# **As measured when this notebook was last revised** (full file; the cells above are the live
# result). The split-to-split spread of a Qini (standard deviation 2-12 x1e4) is as large as
# most of the differences, so the verdict is read from 10 splits
# (`NBA_NOTEBOOK_REPEATS=10`, 523 s); CI runs 3. Mean Qini x1e4, the project's ranking against
# the response model, and the splits it won:
#
# | treatment / outcome | project's ranking | response model | splits won | direct R-learner |
# |---|---|---|---|---|
# | any e-mail / visit | 40.6 | 27.3 | 9/10 | |
# | any e-mail / conversion | 2.84 (via visit) | 1.98 | 7/10 | -0.64 |
# | mens / visit | 26.2 | 26.0 | 7/10 | |
# | mens / conversion | 3.34 (via visit) | 2.08 | 9/10 | 2.42 |
# | womens / visit | 72.3 | 47.9 | 10/10 | |
# | womens / conversion | 6.83 (via visit) | 2.19 | 9/10 | 2.62 |
#
# So the goal is met on all 6 pairs on the mean over 10 splits, clearly on four of them; on
# mens/visit (+0.3) and any-e-mail/conversion (+0.9) the margin is well inside the spread. With
# 3 splits (seeds 0-2, as CI runs) it is 4 of 6: those two conversion pairs lose by 0.1-0.2.
# Ranking conversions by the e-mail's effect on visits is what turned conversions around: the
# direct R-learner on conversions lost on any-e-mail (-0.64 against 1.98) and was within the
# noise elsewhere, because 0.9% of customers convert against 15% who visit. Each action's
# effect starts from one shape in the baseline m(x), a constant, b * m(x) or a + b * m(x),
# whichever has the lowest 5-fold cross-fitted R-loss: the visit effects grow with the visit
# rate, so a line is chosen on most splits. At this cost and margin no top-30% campaign beats
# e-mailing everyone (the average e-mail pays for itself).
