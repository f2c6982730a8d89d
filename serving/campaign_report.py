"""The campaign report: one offline HTML file, the same figures and numbers in an MLflow run.

What the plan does (contacts, cost, expected incremental purchases and profit per channel and
action), what the limits cost (use and shadow prices), the score distributions, and the same
campaign planned by simple alternatives on the same customers under the same limits:

* everyone on e-mail: each customer's best e-mail offer, whatever its score;
* the top propensity decile on the most valuable offer (the highest expected order value x
  margin): the tenth of its eligible customers most likely to respond;
* today's greedy fill: each customer's best action, each limit filled by score, the refused
  choosing again (what `nba decide` does with `max_per_run`, extended to channels and budget).

On a synthetic world each plan's true incremental profit, from `truth/customer_actions`
(margin x true uplift x true order value - cost, as the oracle values decisions), stands beside
the expected one. Plots are inline SVG: the file opens in a browser without a network.
"""

from __future__ import annotations

import html
import io
import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.ingest.contract import DataDir
from serving.assignment import Limits
from serving.campaign_job import CampaignRun, summary, write_atomically

REPORT = "report.html"
EXPERIMENT = "nba-campaigns"


def greedy_fill(order_score: np.ndarray, limits: Limits, positive_only: bool = True) -> np.ndarray:
    """Each customer's best action by `order_score` (-inf: not allowed); every limit keeps its
    best-scoring takers, the refused choose again among what is left (vectorised rounds)."""
    n, a = order_score.shape
    s = order_score.copy()
    accepted = np.zeros(n, dtype=bool)
    choice = np.full(n, -1, dtype=np.int64)
    full = np.zeros(len(limits), dtype=bool)
    for _ in range(a + 1):
        pending = np.flatnonzero(~accepted)
        if not len(pending):
            break
        sub = s[pending]
        best = np.argmax(sub, axis=1)
        val = sub[np.arange(len(sub)), best]
        ok = val > 0 if positive_only else np.isfinite(val)
        pending, best = pending[ok], best[ok]
        if not len(pending):
            break
        choice[pending] = best
        taken = np.zeros(n, dtype=bool)
        taken[pending] = True
        for k in range(len(limits)):
            w = limits.weights[k]
            rows = np.flatnonzero((taken | accepted) & (choice >= 0))
            rows = rows[w[choice[rows]] > 0]
            if not len(rows):
                continue
            # those accepted in an earlier round keep their place; the new come by score
            old = rows[accepted[rows]]
            new = rows[~accepted[rows]]
            new = new[np.argsort(-s[new, choice[new]], kind="stable")]
            room = limits.limit[k] - w[choice[old]].sum()
            cum = np.cumsum(w[choice[new]])
            refused = new[cum > room + 1e-9]
            if len(refused):
                full[k] = True
                s[refused, choice[refused]] = -np.inf
                choice[refused] = -1
                taken[refused] = False
        accepted |= taken
        for k in np.flatnonzero(full):  # a full limit: nobody else takes its actions
            s[np.ix_(~accepted, limits.weights[k] > 0)] = -np.inf
    return choice


def alternative_plans(run: CampaignRun) -> dict[str, np.ndarray]:
    """The simple alternatives' choices on the same customers under the same limits."""
    sc = run.scores.scored
    objective = run.scores.objective
    allowed = np.isfinite(sc.score)
    channels = np.array(sc.channels)
    plans = {"optimised (ours)": run.choice}
    email = channels == "email"
    if email.any():
        s = np.where(allowed & email[None, :], objective, -np.inf)
        plans["everyone on e-mail"] = greedy_fill(s, run.limits, positive_only=False)
    worth = np.nanmean(np.where(allowed, sc.value, np.nan), axis=0) * sc.margin
    if np.isfinite(worth).any():
        best = int(np.nanargmax(worth))
        elig = np.flatnonzero(allowed[:, best])
        decile = elig[np.argsort(-sc.p_response[elig, best], kind="stable")][
            : int(np.ceil(len(elig) / 10))
        ]
        s = np.full(objective.shape, -np.inf)
        s[decile, best] = sc.p_response[decile, best]
        plans[f"top decile on {sc.action_ids[best]}"] = greedy_fill(s, run.limits)
    plans["today's greedy fill"] = greedy_fill(objective, run.limits)
    return plans


def true_profit_matrix(run: CampaignRun, data_dir: DataDir, con) -> np.ndarray | None:
    """customers x offered actions: margin x true uplift x true order value - cost, from the
    synthetic world's truth (None on real data)."""
    from training.oracle import load_truth

    truth = load_truth(data_dir, con)
    ca = data_dir.truth / "customer_actions"
    if truth is None or not ca.exists():
        return None
    table = duckdb.sql(
        f"SELECT person_id, action_id, incremental, expected_value "
        f"FROM read_parquet('{ca}/*.parquet')"
    ).df()
    ids = run.scores.scored.action_ids
    persons = truth.person_of_customer.reindex(run.scores.customer_id).to_numpy()

    def wide(column: str) -> np.ndarray:
        m = table.pivot(index="person_id", columns="action_id", values=column)
        return m.reindex(index=persons, columns=ids).to_numpy(dtype=float)

    sc = run.scores.scored
    return sc.margin * wide("incremental") * wide("expected_value") - sc.cost


def plan_table(run: CampaignRun, plans: dict[str, np.ndarray], truth: np.ndarray | None):
    """Per plan: contacts, cost, expected incremental purchases and profit, true profit."""
    sc = run.scores.scored
    rows = []
    for name, choice in plans.items():
        r = np.flatnonzero(choice >= 0)
        j = choice[r]
        use = run.limits.usage(np.bincount(j, minlength=len(sc.action_ids)))
        row = {
            "plan": name,
            "contacts": len(r),
            "cost": float(sc.cost[j].sum()),
            "expected incremental purchases": float(np.nansum(sc.uplift[r, j])),
            "expected profit": float(sc.score[r, j].sum()),
            "true profit": float(np.nansum(truth[r, j])) if truth is not None else np.nan,
            "within limits": bool((use <= run.limits.limit + 1e-6).all()),
        }
        rows.append(row)
    return pd.DataFrame(rows)


def per_action_table(run: CampaignRun) -> pd.DataFrame:
    t = run.table[run.table["action_id"] != "do_nothing"]
    return (
        t.groupby(["channel", "action_id"])
        .agg(
            contacts=("customer_id", "size"),
            held_out=("holdout", "sum"),
            cost=("cost", "sum"),
            expected_incremental_purchases=("uplift", "sum"),
            expected_profit=("score", "sum"),
        )
        .reset_index()
    )


def _svg(fig: Figure) -> str:
    """The figure as inline SVG, without the XML prolog and the RDF metadata block."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return text[text.index("<svg") :]


def figures(run: CampaignRun, comparison: pd.DataFrame) -> dict[str, Figure]:
    """The report's plots, by file name."""
    out = {}
    per = per_action_table(run)
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.barh(per["action_id"], per["contacts"], color="#4477aa")
    ax1.set(title="contacts per action", xlabel="customers")
    ax2.barh(per["action_id"], per["expected_profit"], color="#228833", label="expected profit")
    ax2.barh(per["action_id"], -per["cost"], color="#cc6677", label="cost")
    ax2.set(title="expected incremental profit and cost", xlabel="money")
    ax2.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out["per_action.svg"] = fig

    lim = run.limits
    fig = Figure(figsize=(9, 0.5 + 0.45 * max(1, len(lim))))
    ax = fig.subplots()
    if len(lim):
        share = run.solution.usage / np.maximum(lim.limit, 1e-12)
        ax.barh(lim.names, share, color=np.where(share >= 0.99, "#cc6677", "#4477aa"))
        for y, (s, p) in enumerate(zip(share, run.solution.shadow_prices, strict=True)):
            ax.text(min(s, 1.0) + 0.01, y, f"shadow price {p:.3f}", va="center", fontsize=8)
        ax.set_xlim(0, 1.35)
    ax.set(title="capacity use (share of each limit) and shadow prices", xlabel="used / limit")
    fig.tight_layout()
    out["limits.svg"] = fig

    sc = run.scores.scored
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    obj = run.scores.objective
    finite = obj[np.isfinite(obj)]
    lo, hi = np.percentile(finite, [1, 99]) if len(finite) else (0, 1)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 40)
    for j, a in enumerate(sc.action_ids):
        v = obj[np.isfinite(obj[:, j]), j]
        if len(v):
            ax1.hist(np.clip(v, lo, hi), bins=bins, histtype="step", label=a)
    ax1.axvline(0, color="k", lw=0.8)
    ax1.set(title=f"{run.campaign.objective} of eligible pairs", xlabel="score", ylabel="pairs")
    ax1.legend(fontsize=6)
    chosen = run.table.loc[run.table["action_id"] != "do_nothing", "objective_score"]
    ax2.hist(chosen, bins=40, color="#228833")
    ax2.set(title="score of the assigned", xlabel="score", ylabel="customers")
    fig.tight_layout()
    out["scores.svg"] = fig

    fig = Figure(figsize=(9, 3.4))
    ax = fig.subplots()
    x = np.arange(len(comparison))
    ax.bar(x - 0.2, comparison["expected profit"], 0.4, label="expected", color="#4477aa")
    if comparison["true profit"].notna().any():
        ax.bar(x + 0.2, comparison["true profit"], 0.4, label="true (truth table)", color="#228833")
    ax.set_xticks(x, comparison["plan"], fontsize=8)
    ax.axhline(0, color="k", lw=0.8)
    ax.set(title="incremental profit by plan", ylabel="money")
    ax.legend()
    fig.tight_layout()
    out["plans.svg"] = fig
    return out


def table_html(frame: pd.DataFrame) -> str:
    """A table of a self-contained report page: no index, two decimals, a dash when missing."""
    return frame.to_html(index=False, float_format=lambda v: f"{v:,.2f}", border=0, na_rep="—")


def render(run: CampaignRun, comparison: pd.DataFrame, figs: dict[str, Figure]) -> str:
    """The report as one self-contained HTML page."""
    info = summary(run)
    lim = pd.DataFrame(info["constraints"])
    sentences = "".join(
        f"<li>one more {html.escape(c['name'])} unit is worth "
        f"<b>{c['shadow_price']:.2f}</b> ({c['used']:,.0f} of {c['limit']:,.0f} used)</li>"
        for c in info["constraints"]
    )
    has_truth = comparison["true profit"].notna().any()
    truth_note = (
        "True profit: the synthetic world's truth table (margin x true uplift x true order "
        "value - cost) for the same choices."
        if has_truth
        else "No truth table in this data directory: only expected profit is shown."
    )
    svgs = "".join(f"<figure>{_svg(f)}</figure>" for f in figs.values())
    verdict = ""
    if has_truth:
        true = comparison.set_index("plan")["true profit"]
        ours = true.iloc[0]
        better = [p for p, v in true.items() if v > ours + 1e-6]
        tied = [p for p, v in true.items() if abs(v - ours) <= 1e-6 and p != true.index[0]]
        verdict = (
            "On true profit ours is "
            + ("below " + ", ".join(better) if better else "the best")
            + (" (tied with " + ", ".join(tied) + ")" if tied else "")
            + "."
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Campaign {html.escape(run.campaign.name)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{padding:4px 10px;text-align:right;
border-bottom:1px solid #ddd}}th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}
figure{{margin:1em 0}}.note{{color:#555;font-size:0.9em}}</style></head><body>
<h1>Campaign {html.escape(run.campaign.name)}</h1>
<p>Decision time {html.escape(info["as_of"])}; objective <b>{info["objective"]}</b>;
{info["customers"]:,} customers, {info["assigned"]:,} assigned, {info["holdouts"]:,} held out
(not contacted, the control group). Expected {info["objective"]}
<b>{info["expected_objective"]:,.2f}</b>, at most {info["gap_bound"]:.3%} below the best
possible under these limits (dual bound {info["dual_bound"]:,.2f}).
Versions: {html.escape(run.campaign_version)}, models v{html.escape(str(run.table["model_version"].iloc[0]) if len(run.table) else "")}.</p>
<h2>The plan beside simple alternatives</h2>
{table_html(comparison)}
<p class="note">Same customers, same hard rules, same limits. {truth_note} {html.escape(verdict)}</p>
<h2>What the limits cost</h2><ul>{sentences}</ul>
{table_html(lim)}
<h2>Per channel and action</h2>
{table_html(per_action_table(run))}
<h2>Plots</h2>{svgs}
</body></html>
"""


def build_report(
    run: CampaignRun,
    data_dir: DataDir,
    con,
    out: Path,
    data_root: Path | None = None,
    log_mlflow: bool = True,
) -> Path:
    """Write report.html into `out` (renamed into place) and log it, its figures and numbers
    to an MLflow run of the experiment `nba-campaigns`."""
    plans = alternative_plans(run)
    truth = true_profit_matrix(run, data_dir, con)
    comparison = plan_table(run, plans, truth)
    figs = figures(run, comparison)
    page = render(run, comparison, figs)
    target = write_atomically(Path(out) / REPORT, lambda p: p.write_text(page))
    comparison_path = write_atomically(
        Path(out) / "plans.csv", lambda p: comparison.to_csv(p, index=False)
    )
    if log_mlflow:
        _log_mlflow(run, comparison, figs, target, comparison_path, data_root or data_dir.root)
    return target


def _log_mlflow(run, comparison, figs, report: Path, comparison_path: Path, root: Path) -> None:
    import mlflow

    from training import registry

    tracking = registry.configure_tracking(root)
    exp = registry.experiment(EXPERIMENT, tracking)
    info = summary(run)
    with mlflow.start_run(experiment_id=exp, run_name=run.campaign.name):
        mlflow.log_params(
            {
                "campaign": run.campaign.name,
                "campaign_version": run.campaign_version,
                "objective": run.campaign.objective,
                "actions": ",".join(run.campaign.actions),
                "budget": run.campaign.budget,
                "as_of": info["as_of"],
            }
        )
        metrics = {
            "expected_objective": info["expected_objective"],
            "dual_bound": info["dual_bound"],
            "gap_bound": info["gap_bound"],
            "assigned": info["assigned"],
            "holdouts": info["holdouts"],
        }
        for c in info["constraints"]:
            key = c["name"].replace(" ", "_")
            metrics[f"shadow_price.{key}"] = c["shadow_price"]
            metrics[f"used.{key}"] = c["used"]
        for _, r in comparison.iterrows():
            key = "".join(ch if ch.isalnum() else "_" for ch in r["plan"])
            metrics[f"expected_profit.{key}"] = r["expected profit"]
            if pd.notna(r["true profit"]):
                metrics[f"true_profit.{key}"] = r["true profit"]
        mlflow.log_metrics(metrics)
        for name, fig in figs.items():
            mlflow.log_figure(fig, name)
        mlflow.log_artifact(str(report))
        mlflow.log_artifact(str(comparison_path))
        mlflow.log_text(json.dumps(info, indent=2, default=float), "campaign.json")
