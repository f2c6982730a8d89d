"""The maturity report as one offline HTML page (plots as base64 PNG, no network) and an MLflow
run of the experiment `nba-maturity` with its metrics, the page and the plots as artifacts."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from features.ingest.contract import CHANNEL
from serving.campaign_job import write_atomically
from serving.campaign_report import table_html
from serving.maturity import Maturity

EXPERIMENT = "nba-maturity"
COLOURS = ["#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb"]


def figures(m: Maturity) -> dict[str, Figure]:
    """The report's plots, by artifact file name."""
    out: dict[str, Figure] = {}
    r = m.recognition
    fig = Figure(figsize=(9, 3.2))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(r.channels_seen["channels"], r.channels_seen["share"], color=COLOURS[0])
    ax1.set(title="customers seen on k channels", xlabel="channels", ylabel="share of customers")
    shares = r.shares
    ax2.bar(list(shares), list(shares.values()), color=COLOURS[1])
    ax2.set(title="share on identifiers linked to no other", ylim=(0, 1))
    fig.tight_layout()
    out["recognition.png"] = fig

    cov = m.coverage
    fig = Figure(figsize=(9, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    for i, (ch, g) in enumerate(cov.groupby(CHANNEL, sort=False)):
        ax1.plot(pd.to_datetime(g["month"]), g["coverage"], label=ch, color=COLOURS[i % 7])
    ax1.set(title="consent coverage at each month's end", ylabel="share of known customers")
    ax1.set_ylim(0, 1)
    if len(cov):
        ax1.legend(fontsize=7)
        by_month = cov.groupby("month")[["grants", "revocations"]].sum()
        x = pd.to_datetime(by_month.index)
        ax2.bar(x, by_month["grants"], width=20, color=COLOURS[2], label="grants")
        ax2.bar(x, -by_month["revocations"], width=20, color=COLOURS[1], label="revocations")
        ax2.legend(fontsize=7)
        later = by_month["grants"].iloc[1:]
        if len(later) and by_month["grants"].iloc[0] > 3 * max(later.max(), 1):
            # the first month holds the consents the history opens with: keep the rest readable
            top = 1.3 * max(later.max(), by_month["revocations"].max(), 1)
            ax2.set_ylim(-top, top)
            ax2.annotate(
                f"{by_month['grants'].iloc[0]:,}", (x[0], top * 0.9), ha="center", fontsize=7
            )
    ax2.axhline(0, color="k", lw=0.8)
    ax2.set(title="grants and revocations per month (all channels)", ylabel="events")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    out["consent_coverage.png"] = fig

    ct = m.consent.table
    fig = Figure(figsize=(9, 3.4))
    ax1, ax2 = fig.subplots(1, 2)
    if len(ct):
        x = np.arange(len(ct))
        ax1.bar(x - 0.2, ct["value_mean"], 0.4, label="mean", color=COLOURS[0])
        ax1.bar(x + 0.2, ct["value_top_decile"], 0.4, label="top decile", color=COLOURS[2])
        ax1.set_xticks(x, ct[CHANNEL], fontsize=8)
        ax1.legend(fontsize=7)
        for i, (ch, per) in enumerate(m.consent.per_customer.items()):
            v = per.loc[~per["has_consent"], "value"].to_numpy()
            if len(v) and np.ptp(v) > 0:
                ax2.hist(v, bins=40, histtype="step", label=ch, color=COLOURS[i % 7])
        ax2.legend(fontsize=7)
    ax1.set(title="a consent's worth a year (customers without it)", ylabel="money a year")
    ax2.set(title="its distribution", xlabel="money a year", ylabel="customers")
    ax2.set_yscale("log")
    fig.tight_layout()
    out["consent_value.png"] = fig

    rv = m.recognition_value
    names = ["attributes", "split", "estimate"]
    values = [rv.attribute.value_per_year, rv.split.value_per_year, rv.estimate]
    if rv.truth is not None:
        names.append("truth")
        values.append(rv.truth.value_per_year)
    fig = Figure(figsize=(9, 3.0))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.bar(names, values, color=[COLOURS[0], COLOURS[0], COLOURS[2], COLOURS[1]][: len(names)])
    ax1.axhline(0, color="k", lw=0.8)
    ax1.set(title="recognition's worth a year", ylabel="money a year")
    d = m.data_use.decisions
    counts = d["history_channels"].clip(upper=6).value_counts().sort_index()
    ax2.bar(counts.index.astype(str), counts.to_numpy(), color=COLOURS[0])
    ax2.set(title="channels of history behind each decision", xlabel="channels (6 = 6+)")
    fig.tight_layout()
    out["recognition_value_and_data_use.png"] = fig
    return out


def png_base64(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _pct(v: float) -> str:
    return f"{v:.1%}"


def render(m: Maturity, figs: dict[str, Figure]) -> str:
    """The report as one self-contained HTML page."""
    r, rv, use = m.recognition, m.recognition_value, m.data_use
    img = {
        name: f'<img alt="{name}" src="data:image/png;base64,{png_base64(f)}">'
        for name, f in figs.items()
    }
    ct = m.consent.table
    sentences = "".join(
        f"<li>a <b>{html.escape(row[CHANNEL])}</b> consent is worth <b>{row['value_mean']:,.2f}</b>"
        f" a year on average; the top decile <b>{row['value_top_decile']:,.2f}</b> "
        f"({row['without_consent']:,} customers without it, {row['value_total']:,.0f} in all); "
        f"losing one costs {row['loss_mean']:,.2f} a year ({row['with_consent']:,} with it)</li>"
        for _, row in ct.iterrows()
    )
    coverage_now = (
        m.coverage.sort_values("month").groupby(CHANNEL, sort=False).tail(1)
        if len(m.coverage)
        else m.coverage
    )
    by_month = (
        m.coverage.pivot_table(index="month", columns=CHANNEL, values="coverage").reset_index()
        if len(m.coverage)
        else m.coverage
    )
    merges = [rv.attribute, rv.split] + ([rv.truth] if rv.truth is not None else [])
    merge_table = pd.DataFrame(
        [
            {
                "re-resolution": v.method,
                "fragments": v.fragments,
                "merged into": f"{v.merged:,}" if v.merged else "—",
                "value a year": v.value_per_year,
                "true profit a year": v.true_value_per_year,
                "note": v.note,
            }
            for v in merges
        ]
    )
    check = (
        f"The estimate, <b>{rv.estimate:,.2f}</b> a year, stands beside the truth "
        f"(merging every person's fragments): <b>{rv.truth.value_per_year:,.2f}</b>; the "
        f"truth's own incremental profit of those same decisions, merged minus apart, is "
        f"{rv.truth.true_value_per_year:,.2f} a year (a lower bound: the truth knows one "
        f"contact's effect, so every fragment's contact to the same person counts in full)."
        if rv.truth is not None
        else "No truth table in this data directory: the estimate cannot be checked here."
    )
    steps = (
        "".join(
            f"<li>{html.escape(s.text)}: <b>{s.value_per_year:,.0f}</b> a year</li>"
            for s in m.steps
        )
        or "<li>nothing this report can value: no consent or recognition gain found</li>"
    )
    note = f'<p class="note">{html.escape(m.consent.note)}</p>' if m.consent.note else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Omnichannel maturity</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:0.6em 0;font-size:0.9em}}td,th{{padding:3px 9px;
text-align:right;border-bottom:1px solid #ddd}}th{{background:#f3f3f3}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}
.note{{color:#555;font-size:0.9em}}</style></head><body>
<h1>Omnichannel maturity</h1>
<p>Data up to {html.escape(str(m.as_of))}; champion models v{html.escape(m.model_version)},
{html.escape(m.policy_version)}; {m.customers_scored:,} customers scored, the policy expects
<b>{m.policy_value_per_year:,.0f}</b> incremental profit a year from them. Money is the policy's
expected incremental profit of one decision (eligibility, scores and choice of the real policy)
times {m.decisions_per_year:g} decisions a year (<code>maturity.decisions_per_year</code>).</p>
<h2>1. Recognition</h2>
<p>{r.identifiers:,} identifiers resolve to <b>{r.customers:,}</b> customers
({r.identifiers / max(r.customers, 1):.2f} identifiers each); {r.single_customers:,} customers are
one identifier linked to no other. On those: {_pct(r.shares["events"])} of the events,
{_pct(r.shares["purchases"])} of the purchases and {_pct(r.shares["revenue"])} of the revenue
({r.single_revenue:,.0f} of {r.revenue:,.0f}). The shared-identifier guard cut
{int(r.shared["identifiers"].sum()) if len(r.shared) else 0:,} identifiers.</p>
{img["recognition.png"]}
{table_html(r.channels_seen)}{table_html(r.by_type)}{table_html(r.shared)}
<h2>2. Consent coverage</h2>
{table_html(coverage_now)}
{img["consent_coverage.png"]}
<details><summary>coverage per month</summary>{table_html(by_month)}</details>
<h2>3. What a consent is worth</h2>{note}
<ul>{sentences}</ul>
{table_html(ct)}
{img["consent_value.png"]}
<p class="note">For customers without the consent: the policy decides with it (the channel's
actions eligible under the contact policy, the model fed consent = 1) and without it; the
difference in expected incremental profit. For those with it, the same switched off. The other
channels' actions are scored on the features as they are, so a channel without any action in the
catalogue is worth 0.</p>
<h2>4. What recognition is worth</h2>
{table_html(merge_table)}{table_html(rv.split_table)}
<p>{check}</p>
{img["recognition_value_and_data_use.png"]}
<h2>5. What data is used</h2>
<p>Decisions: {html.escape(use.source)}. Channels of history behind each decision (its features
draw on every channel it had events on), channels its reasons cite, and the expected incremental
profit of the decisions that could use cross-channel history against those that could not.</p>
{table_html(use.summary)}
<h2>Next steps, ranked by money</h2>
<ol>{steps}</ol>
</body></html>
"""


def summary(m: Maturity) -> dict:
    return {
        "as_of": str(m.as_of),
        "model_version": m.model_version,
        "policy_version": m.policy_version,
        "decisions_per_year": m.decisions_per_year,
        "metrics": m.metrics(),
        "next_steps": [{"text": s.text, "value_per_year": s.value_per_year} for s in m.steps],
    }


def write_report(m: Maturity, out: Path, data_root: Path, log_mlflow: bool = True) -> Path:
    """Write the page to `out` (renamed into place when complete) and log the run to MLflow."""
    figs = figures(m)
    page = render(m, figs)
    target = write_atomically(Path(out), lambda p: p.write_text(page))
    if log_mlflow:
        _log_mlflow(m, figs, target, data_root)
    return target


def _log_mlflow(m: Maturity, figs: dict[str, Figure], report: Path, root: Path) -> None:
    import mlflow

    from training import registry

    tracking = registry.configure_tracking(root)
    exp = registry.experiment(EXPERIMENT, tracking)
    with mlflow.start_run(experiment_id=exp, run_name=f"maturity {m.as_of:%Y-%m-%d}"):
        mlflow.log_params(
            {
                "as_of": str(m.as_of),
                "model_version": m.model_version,
                "policy_version": m.policy_version,
                "decisions_per_year": m.decisions_per_year,
            }
        )
        mlflow.log_metrics({k: float(v) for k, v in m.metrics().items() if np.isfinite(v)})
        for name, fig in figs.items():
            mlflow.log_figure(fig, name)
        mlflow.log_artifact(str(report))
        mlflow.log_text(json.dumps(summary(m), indent=2, default=float), "maturity.json")
