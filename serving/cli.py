"""The `nba` command line: every command of every package, registered on one application.

It lives in `serving` because serving is the one package allowed to import the other two.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from features import cli as features_cli
from serving import audit_cli, erasure_cli, maturity_cli
from serving.cli_errors import NbaGroup
from training import cli as training_cli

app = typer.Typer(
    name="nba",
    help="Omnichannel next-best-action: synthetic data, validation, features, training, decisions.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    cls=NbaGroup,  # a user's error is one line and exit code 2 (serving/cli_errors.py)
)


@app.callback()
def _root(
    debug: Annotated[
        bool,
        typer.Option(
            "--debug",
            envvar="NBA_DEBUG",
            help="Show tracebacks of user errors (bad data or configuration) and MLflow's own "
            "logging; accepted anywhere on the line.",
        ),
    ] = False,
) -> None:
    """Omnichannel next-best-action: synthetic data, validation, features, training, decisions."""


app.command("synth")(features_cli.synth)
app.command("validate")(features_cli.validate)
app.command("ingest")(features_cli.ingest)
app.command("features")(features_cli.features)
app.command("training-set")(training_cli.training_set)
app.command("train")(training_cli.train)
app.command("evaluate")(training_cli.evaluate)
app.command("audit")(audit_cli.audit)
app.command("forget")(erasure_cli.forget)
app.command("maturity")(maturity_cli.maturity)


def _policy_inputs(data: Path, config: Path | None, alias: str, strict: bool = False):
    """Configuration, the event store, the feature engine and the policy over bundle `alias`;
    catalogue actions the data cannot support are left out and reported once (`strict`: an
    error)."""
    from features.config import load_data_config, load_section
    from features.store.batch import BatchEngine
    from features.store.definitions import FeatureConfig, FeatureSet
    from serving.config import load_policy_config
    from serving.policy import load_policy

    data_cfg = load_data_config(config)
    fs = FeatureSet(data_cfg, load_section(config, "features", FeatureConfig))
    con = features_cli._open_current_store(data, config)
    engine = BatchEngine(fs, con, customers="customers")
    policy = load_policy(
        data,
        load_policy_config(config),
        data_cfg,
        alias=alias,
        strict=strict,
        warn=lambda m: features_cli.console.print(f"[yellow]{m}[/yellow]", highlight=False),
    )
    return con, engine, policy


def _resolve_customer(con, key: str) -> str:
    """A customer_id from a customer_id or any of the customer's identifiers (`type:value`)."""
    found = con.execute(
        "SELECT DISTINCT customer_id FROM identity WHERE identifier = ? OR customer_id = ?",
        [key, key],
    ).fetchall()
    if not found:
        raise typer.BadParameter(
            f"{key[:80]!r}{'...' if len(key) > 80 else ''} is neither a customer_id nor a "
            "known identifier (type:value)",
            param_hint="--customer",
        )
    return found[0][0]


def _print_one(decisions, console) -> None:
    from rich.table import Table

    row = decisions.table.iloc[0]
    console.print(
        f"customer [bold]{row['customer_id']}[/bold] at {row['as_of']}: "
        f"[bold green]{row['action_id']}[/bold green]"
        + (f" on {row['channel']} at {int(row['send_hour']):02d}:00 UTC" if row["channel"] else "")
        + f"  (decision {row['decision_id']}, models v{row['model_version']}, "
        f"{row['policy_version']})"
    )
    table = Table(title="candidates, best first (expected incremental profit)")
    for col in (
        "action",
        "score",
        "P(resp)",
        "P(buy|contact)",
        "P(buy|none)",
        "value",
        "margin",
        "cost",
        "blocked by",
    ):
        table.add_column(
            col,
            justify="left" if col in ("action", "blocked by") else "right",
            no_wrap=col == "action",
        )
    for _, c in decisions.ranked(0).iterrows():

        def f(v, fmt):
            return "" if v != v or v in (float("inf"), float("-inf")) else format(v, fmt)

        table.add_row(
            c["action_id"],
            f(c["score"], ".4f"),
            f(c["p_response"], ".4f"),
            f(c["p_purchase_treated"], ".4f"),
            f(c["p_purchase_control"], ".4f"),
            f(c["value"], ".1f"),
            f(c["margin"], ".2f"),
            f(c["cost"], ".3f"),
            c["blocked_by"],
        )
    console.print(table)
    reasons = [row[c] for c in row.index if c.startswith("reason_") and row[c]]
    console.print("reasons: " + ("; ".join(reasons) if reasons else "none"))


def _print_summary(table, console, show: int) -> None:
    from rich.table import Table

    acted = table[table["action_id"] != "do_nothing"]
    counts = table["action_id"].value_counts()
    summary = Table(title=f"{len(table):,} decisions")
    for col in ("action", "customers", "share", "mean score", "total expected profit"):
        summary.add_column(col, justify="left" if col == "action" else "right")
    for action, n in counts.items():
        sc = table.loc[table["action_id"] == action, "score"]
        summary.add_row(
            str(action), f"{n:,}", f"{n / len(table):.1%}", f"{sc.mean():.4f}", f"{sc.sum():,.2f}"
        )
    console.print(summary)
    for _, row in acted.sort_values("score", ascending=False).head(show).iterrows():
        reasons = "; ".join(row[c] for c in row.index if c.startswith("reason_") and row[c])
        console.print(
            f"  {row['customer_id']}: [green]{row['action_id']}[/green] at "
            f"{int(row['send_hour']):02d}:00, expected +{row['score']:.3f} — {reasons}"
        )


@app.command("decide")
def decide(
    data: features_cli.DataOption,
    customer: Annotated[
        str | None,
        typer.Option(help="One customer (customer_id or an identifier such as email:...)."),
    ] = None,
    as_of: Annotated[
        datetime | None,
        typer.Option("--as-of", help="Decision time (UTC); default: just after the last event."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Parquet file of the decisions; default DATA/decisions.parquet."),
    ] = None,
    alias: Annotated[str, typer.Option(help="Registry alias of the model bundle.")] = "champion",
    log: Annotated[
        bool,
        typer.Option(
            "--log",
            help="Record the decisions as sent/holdout events in DATA/events (the closed loop) "
            "and their full record in DATA/decisions/.",
        ),
    ] = False,
    show: Annotated[int, typer.Option(min=0, help="Decisions to print with reasons.")] = 5,
    config: features_cli.ConfigOption = None,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            help="An action of the catalogue the data cannot support (a rule naming a missing "
            "column, a channel that is not outbound) is an error; by default it is left out "
            "of the run and reported once.",
        ),
    ] = False,
) -> None:
    """Next best action for one customer (printed) or for every customer (a parquet file)."""
    import pandas as pd

    from features.ingest.contract import CUSTOMER_ID, DataDir
    from features.store.batch import AS_OF
    from serving.decision_log import write_decision_log
    from training.datasets import data_end

    console = features_cli.console
    con, engine, policy = _policy_inputs(data, config, alias, strict=strict)
    t = data_end(con) if as_of is None else pd.Timestamp(as_of)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    if customer is not None:
        cid = _resolve_customer(con, customer)
        query = pd.DataFrame({CUSTOMER_ID: [cid], AS_OF: [t]})
        feats = pd.concat([query, engine.at(query)], axis=1)
        decisions = policy.decide(feats, immediate=True)  # as a real-time request would
        _print_one(decisions, console)
    else:
        with console.status(f"features of every customer as of {t}"):
            feats = engine.snapshot(t)
        with console.status(f"deciding for {len(feats):,} customers"):
            decisions = policy.decide(feats)
        target = out or data / "decisions.parquet"
        decisions.table.to_parquet(target, index=False)
        _print_summary(decisions.table, console, show)
        console.print(f"[green]wrote[/green] {target}")
    if log:
        events, record = write_decision_log(decisions.table, DataDir(data), con)
        console.print(f"[green]logged[/green] {events} and {record} (ingest to learn from them)")


@app.command("predict")
def predict(
    data: features_cli.DataOption,
    as_of: Annotated[
        datetime | None,
        typer.Option("--as-of", help="Score time (UTC); default: just after the last event."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Parquet file of the scores; default DATA/predictions.parquet."),
    ] = None,
    alias: Annotated[str, typer.Option(help="Registry alias of the model bundle.")] = "champion",
    config: features_cli.ConfigOption = None,
    days: Annotated[
        float | None,
        typer.Option(
            "--days",
            min=1,
            help="Also BG/NBD's P(purchase) and expected purchases over this many days, "
            "however long the training labels (270: nine months from 90-day labels).",
        ),
    ] = None,
) -> None:
    """Every customer's scores as of a time, without deciding: P(purchase) within the bundle's
    purchase horizon, spend if they buy and expected value, P(response) per outbound channel,
    uplift per catalogue action, BG/NBD's expected purchases and P(alive), where the bundle has
    those models. Written to a temporary name, then renamed."""
    import pandas as pd
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from features.config import load_data_config, load_section
    from features.store.batch import BatchEngine
    from features.store.definitions import FeatureConfig, FeatureSet
    from serving.catalogue import load_catalogue
    from serving.config import load_policy_config
    from serving.policy import NoBundle
    from serving.predict import predict_customers, write_parquet_atomic
    from training import registry
    from training.config import load_training_config
    from training.datasets import data_end
    from training.model_safety import load_verified

    console = features_cli.console
    data_cfg = load_data_config(config)
    fs = FeatureSet(data_cfg, load_section(config, "features", FeatureConfig))
    horizon = load_training_config(config).labels.purchase_horizon_days
    policy_cfg = load_policy_config(config)
    con = features_cli._open_current_store(data, config)
    registry.configure_tracking(data)
    version = registry.alias_version(alias)
    if version is None:
        raise NoBundle(f"no model bundle has the alias `{alias}`: run `nba train` first")
    bundle = load_verified(version)  # the registered files, checked against their SHA-256
    catalogue = load_catalogue(policy_cfg.catalogue)[0] if bundle.uplift is not None else None
    horizon = bundle.trained_on.get("purchase_horizon_days", horizon)
    t = data_end(con) if as_of is None else pd.Timestamp(as_of)
    t = t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    engine = BatchEngine(fs, con, customers="customers")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(f"features as of {t:%Y-%m-%d %H:%M}", total=None)
        feats = engine.snapshot(t)
        bar.update(task, total=len(feats), completed=0, description="scoring customers")
        table = predict_customers(
            bundle, feats, data_cfg, catalogue, step=lambda n: bar.advance(task, n), days=days
        )
    table.insert(2, "horizon_days", float(horizon))
    target = write_parquet_atomic(table, out or data / "predictions.parquet")
    scores = [c for c in table.columns if table[c].dtype.kind == "f" and c != "horizon_days"]
    missing = [f for f in ("purchase", "value", "response", "uplift") if f in bundle.skipped]
    console.print(
        f"[green]wrote[/green] {target}: {len(table):,} customers as of {t}, "
        f"{len(scores)} scores ({', '.join(scores)}); purchase horizon {horizon:g} days"
        + (f"; not in this bundle: {', '.join(missing)}" if missing else "")
    )


def _campaign_inputs(data: Path, config: Path | None, alias: str, campaign_file: Path | None):
    """The policy inputs and the campaign file, validated against the catalogue; a bad file is
    a usage error naming the field."""
    from serving.campaign import load_campaign

    con, engine, policy = _policy_inputs(data, config, alias)
    try:
        campaign, text = load_campaign(campaign_file, policy.catalogue, policy.data)
    except (ValueError, FileNotFoundError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--campaign") from None
    return con, engine, policy, campaign, text


@app.command("campaign")
def campaign(
    data: features_cli.DataOption,
    campaign_file: Annotated[
        Path | None,
        typer.Option(
            "--campaign",
            help="Campaign YAML (name, decision_date, actions, capacities, caps, budget, "
            "holdout, objective); default: the shipped serving/campaigns/example.yaml.",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder; default DATA/campaigns/<name>/."),
    ] = None,
    alias: Annotated[str, typer.Option(help="Registry alias of the model bundle.")] = "champion",
    log: Annotated[
        bool,
        typer.Option(
            "--log",
            help="Record the assignments as sent/holdout events in DATA/events (with their "
            "propensities) and their full record in DATA/decisions/, for `nba campaign-results` "
            "and the next uplift model.",
        ),
    ] = False,
    report: Annotated[
        bool,
        typer.Option(
            "--report/--no-report",
            help="Write report.html (plots inline, readable offline) and log it to MLflow.",
        ),
    ] = True,
    exact_max: Annotated[
        int,
        typer.Option(
            min=0,
            help="Also solve the exact LP with HiGHS when there are at most this many "
            "customers, and print the gap.",
        ),
    ] = 5000,
    config: features_cli.ConfigOption = None,
) -> None:
    """Plan a campaign: every eligible (customer, action) pair scored by the champion, then at
    most one action per customer maximising the objective under channel capacities, action caps,
    the budget and every hard rule; holdouts drawn; assignments.parquet and campaign.json
    written (renamed into place when complete), with shadow prices and a report."""
    import pandas as pd
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from features.ingest.contract import DataDir
    from serving.campaign_job import run_campaign, summary, write_run
    from serving.decision_log import write_decision_log
    from training.datasets import data_end

    console = features_cli.console
    con, engine, policy, plan, text = _campaign_inputs(data, config, alias, campaign_file)
    t = plan.decision_time() or data_end(con)
    out = out or data / "campaigns" / plan.name
    steps = ["features", "scoring and assignment", "writing"] + (["report"] if report else [])
    columns = (TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(f"features as of {t}", total=len(steps))
        feats = engine.snapshot(t)
        bar.update(task, advance=1, description=f"scoring {len(feats):,} customers, assigning")
        run = run_campaign(policy, plan, feats, pd.Timestamp(t), text=text)
        bar.update(task, advance=1, description="writing the assignments")
        target, summary_path = write_run(run, out)
        if report:
            bar.update(task, advance=1, description="the report: alternatives, plots, MLflow")
            from serving.campaign_report import build_report

            html = build_report(run, DataDir(data), con, out, data_root=data)
        bar.update(task, advance=1, description="done")
    _print_campaign(run, summary(run), console)
    if exact_max and len(feats) <= exact_max:
        from serving.assignment import solve_lp

        lp = solve_lp(run.scores.objective, run.limits)
        gap = (lp.objective - run.solution.objective) / lp.objective if lp.objective else 0.0
        console.print(
            f"exact LP (HiGHS): {lp.objective:,.2f}; ours {run.solution.objective:,.2f}, "
            f"{gap:.3%} below it; LP shadow prices "
            + ", ".join(f"{n} {d:.4f}" for n, d in zip(run.limits.names, lp.duals, strict=True))
        )
    console.print(f"[green]wrote[/green] {target} and {summary_path}")
    if report:
        console.print(f"[green]report[/green] {html}")
    if log:
        events, record = write_decision_log(run.table, DataDir(data), con)
        console.print(f"[green]logged[/green] {events} and {record} (ingest to learn from them)")


def _print_campaign(run, info: dict, console) -> None:
    from rich.table import Table

    t = Table(
        title=f"campaign {info['campaign']}: {info['assigned']:,} of "
        f"{info['customers']:,} customers assigned, {info['holdouts']:,} held out"
    )
    for col in ("constraint", "limit", "used", "shadow price"):
        t.add_column(col, justify="left" if col == "constraint" else "right")
    for c in info["constraints"]:
        t.add_row(c["name"], f"{c['limit']:,.2f}", f"{c['used']:,.2f}", f"{c['shadow_price']:.4f}")
    console.print(t)
    for c in info["constraints"]:
        unit = "unit of money" if c["kind"] == "budget" else c["name"].replace(" capacity", " slot")
        if c["kind"] == "action":
            unit = c["name"].replace(" cap", " assignment")
        console.print(f"  one more {unit} is worth {c['shadow_price']:.2f}")
    console.print(
        f"expected {info['objective']}: {info['expected_objective']:,.2f} (at most "
        f"{info['gap_bound']:.3%} below the optimum, by the dual bound {info['dual_bound']:,.2f}"
        f"); {info['rounds']} price rounds"
    )
    table = run.table
    acted = table[table["action_id"] != "do_nothing"]
    per = acted.groupby("action_id").agg(
        customers=("customer_id", "size"),
        held_out=("holdout", "sum"),
        cost=("cost", "sum"),
        expected_profit=("score", "sum"),
    )
    t = Table(title="per action")
    for col in ("action", "customers", "held out", "cost", "expected incremental profit"):
        t.add_column(col, justify="left" if col == "action" else "right")
    for a, r in per.iterrows():
        t.add_row(
            str(a),
            f"{int(r['customers']):,}",
            f"{int(r['held_out']):,}",
            f"{r['cost']:,.2f}",
            f"{r['expected_profit']:,.2f}",
        )
    console.print(t)


@app.command("campaign-results")
def campaign_results(
    data: features_cli.DataOption,
    campaign_name: Annotated[
        str, typer.Option("--campaign", help="The campaign's name (as in its file).")
    ],
    horizon_days: Annotated[
        float | None,
        typer.Option(
            min=0.1,
            help="Days after each send in which a purchase counts; default the training "
            "configuration's purchase horizon.",
        ),
    ] = None,
    level: Annotated[
        float, typer.Option(min=0.5, max=0.999, help="Confidence level of the intervals.")
    ] = 0.95,
    out: Annotated[
        Path | None, typer.Option(help="CSV of the results per action; not written if omitted.")
    ] = None,
    config: features_cli.ConfigOption = None,
) -> None:
    """After a logged campaign (`nba campaign --log`, then `nba ingest` of the events that
    followed): the measured incremental effect per action, contacted minus held out, with a
    confidence interval, beside what the plan expected."""
    from features.ingest.contract import DataDir
    from serving.campaign_results import measure, print_results
    from training.config import load_training_config

    console = features_cli.console
    con = features_cli._open_current_store(data, config)
    horizon = horizon_days or load_training_config(config).labels.purchase_horizon_days
    try:
        results = measure(DataDir(data), con, campaign_name, horizon, level)
    except LookupError as exc:
        raise typer.BadParameter(str(exc), param_hint="--campaign") from None
    print_results(results, console, level, horizon)
    if out is not None:
        results.to_csv(out, index=False)
        console.print(f"[green]wrote[/green] {out}")


class RewardKind(StrEnum):
    spend = "spend"
    purchase = "purchase"


def _occasion_since(bundle, since: datetime | None):
    """The first occasion time: `since`, else the bundle's contact test window (unseen by it)."""
    import pandas as pd

    if since is not None:
        t = pd.Timestamp(since)
        return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")
    described = (bundle.trained_on or {}).get("contacts") or {}
    start = described.get("test_from")
    return pd.Timestamp(start).tz_convert("UTC") if start else None


def _print_policy_values(frame, console, title: str, baseline: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    columns = ("policy", "contact", "ESS", "IPS", "SNIPS", "DR", "true", f"DR - {baseline}", "true")
    for col in columns:
        table.add_column(col, justify="left" if col == "policy" else "right")

    def cell(by, est: str) -> str:
        if est not in by.index:
            return ""
        e = by.loc[est]
        covered = e["covered"]
        mark = " [red]✗[/red]" if covered is not None and covered == covered and not covered else ""
        return f"{e['value']:.4f}\n[{e['low']:.4f}, {e['high']:.4f}]{mark}"

    def number(by, est: str) -> str:
        if est not in by.index:
            return ""
        truth = by.loc[est, "truth"]
        return "" if truth is None or truth != truth else f"{truth:.4f}"

    for name, rows in frame.groupby("policy", sort=False):
        by = rows.set_index("estimator")
        first = rows.iloc[0]
        table.add_row(
            str(name),
            f"{first['contact_share']:.1%}",
            f"{first['ess']:,.0f}",
            cell(by, "ips"),
            cell(by, "snips"),
            cell(by, "dr"),
            number(by, "dr"),
            cell(by, "dr_difference"),
            number(by, "dr_difference"),
        )
    console.print(table)


class Outcomes(StrEnum):
    customer = "customer"
    person = "person"


@app.command("evaluate-policy")
def evaluate_policy(
    data: features_cli.DataOption,
    candidate: Annotated[
        list[Path] | None,
        typer.Option(
            "--candidate",
            help="YAML file whose `policy` section (caps, scoring, exploration, catalogue with "
            "its levers) is a candidate policy to value; repeat for several.",
        ),
    ] = None,
    alias: Annotated[
        str,
        typer.Option(
            help="Registry alias of the model bundle the policies score with; its uplift and "
            "value models are the doubly robust estimator's reward model."
        ),
    ] = "champion",
    other_alias: Annotated[
        list[str] | None,
        typer.Option(
            "--other-alias",
            help="Also value the uplift policy on the bundle of this alias (new models); "
            "repeatable.",
        ),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since",
            help="Use logged contacts from this time (UTC) on; default: the bundle's contact "
            "test window, which its models never saw.",
        ),
    ] = None,
    reward: Annotated[
        RewardKind,
        typer.Option(
            help="spend: margin x spend in the purchase horizon - cost if contacted (model-free); "
            "purchase: margin x purchased x the value model's order value - cost."
        ),
    ] = RewardKind.spend,
    max_occasions: Annotated[
        int,
        typer.Option(min=100, help="Most recent logged contacts kept (features cost the most)."),
    ] = 200_000,
    outcomes: Annotated[
        Outcomes,
        typer.Option(
            help="customer: purchases of the contacted customer_id (what the product sees); "
            "person: of the whole person through the world's true identity (synthetic worlds "
            "only), coherent with the person-level truth.",
        ),
    ] = Outcomes.customer,
    level: Annotated[
        float, typer.Option(min=0.5, max=0.999, help="Confidence level of the intervals.")
    ] = 0.95,
    out: Annotated[
        Path | None,
        typer.Option(
            help="CSV file of every estimate (policy x estimator); not written if omitted."
        ),
    ] = None,
    config: features_cli.ConfigOption = None,
) -> None:
    """Value candidate policies off-policy (IPS, SNIPS, DR) from logged contacts and holdouts."""
    from features.ingest.contract import DataDir
    from serving import off_policy as ope
    from serving.config import load_policy_config
    from serving.policy import DecisionPolicy, load_policy
    from training.config import load_training_config
    from training.datasets import contact_training_set

    console = features_cli.console
    con, engine, policy = _policy_inputs(data, config, alias)
    labels = load_training_config(config).labels
    start = _occasion_since(policy.bundle, since)
    with console.status(f"logged contacts since {start} and their features"):
        contacts, report = contact_training_set(
            con, engine, policy.data, labels, since=start, max_rows=max_occasions
        )
    if report.rows == 0:
        console.print(f"[red]no logged contact with a complete label window since {start}[/red]")
        raise typer.Exit(code=1)
    data_dir = DataDir(data)
    has_truth = (data_dir.truth / "contacts").exists()
    if outcomes is Outcomes.person:
        if not has_truth:
            raise typer.BadParameter(
                "person outcomes need the synthetic world's truth/ folder", param_hint="--outcomes"
            )
        contacts = ope.person_outcomes(con, data_dir.truth, contacts, labels.purchase_horizon_days)
    occ = ope.occasions_from_contacts(contacts, policy.catalogue, reward.value, policy.bundle)
    console.print(
        f"{len(occ):,} occasions (logged contacts and holdouts) from {report.first_as_of} to "
        f"{report.last_as_of}; reward `{reward.value}` of the {outcomes.value} over "
        f"{labels.purchase_horizon_days:g} days"
        + "".join(f"; dropped {n:,}: {why}" for why, n in occ.dropped.items())
    )
    cfg = policy.cfg
    policies: dict[str, DecisionPolicy] = {f"uplift policy (ours, {alias})": policy}
    if policy.bundle.response is not None:
        policies["response-ranked"] = DecisionPolicy(
            policy.bundle,
            policy.model_version,
            cfg.model_copy(update={"scoring": "response"}),
            policy.data,
            policy.catalogue,
        )
    for other in other_alias or []:
        policies[f"uplift policy ({other})"] = load_policy(data, cfg, policy.data, alias=other)
    for path in candidate or []:
        policies[f"candidate {path.name}"] = DecisionPolicy(
            policy.bundle, policy.model_version, load_policy_config(path), policy.data
        )
    targets = {}
    with console.status("target policies' probabilities on every occasion"):
        for name, p in policies.items():
            targets[name] = ope.policy_probabilities(p, occ)
    targets["logging policy"] = ope.logging_policy(occ)
    targets["always contact"] = ope.always_contact(occ)
    targets["never contact"] = ope.never_contact(occ)
    q = ope.reward_model(policy.bundle, occ)
    truth = None
    if has_truth:
        truth = ope.occasion_truth(occ, ope.load_contact_truth(data_dir.truth, con))
    baseline = "logging policy"
    values = ope.evaluate_policies(occ, targets, q, truth, level, baseline=baseline)
    frame = ope.results_frame(values)
    _print_policy_values(
        frame,
        console,
        f"policy value per occasion ({level:.0%} intervals, cluster-robust by customer; "
        "✗: the interval misses the truth)",
        "logging",
    )
    if truth is not None:
        check = ope.reward_check(occ, truth)
        console.print("realised vs true mean reward on the log (the truth's own consistency):")
        for _, row in check.iterrows():
            console.print(
                f"  {row['arm']:22s} {row['occasions']:>8,}  realised {row['realised']:.4f}  "
                f"true {row['true']:.4f}  difference {row['difference']:+.4f} ± {row['se']:.4f}"
            )
    if out is not None:
        frame.to_csv(out, index=False)
        console.print(f"[green]wrote[/green] {out}")


def _serve_command(data: Path, config: Path | None, host: str, port: int) -> tuple[list, dict]:
    """The `bentoml serve` command line and environment of the service over `data`."""
    import os
    import shutil
    import sys

    from serving.service import CONFIG_VARIABLE, DATA_VARIABLE

    env = dict(os.environ)
    env[DATA_VARIABLE] = str(Path(data).resolve())
    if config is not None:
        env[CONFIG_VARIABLE] = str(Path(config).resolve())
    bentoml = shutil.which("bentoml", path=str(Path(sys.executable).parent)) or "bentoml"
    root = Path(__file__).resolve().parent.parent
    cmd = [bentoml, "serve", "serving.service:NextBestAction", "--host", host, "--port", str(port)]
    return [*cmd, "--working-dir", str(root)], env


def _preflight(data: Path, config: Path | None):
    """Open what the service opens, or exit with its one-line reason (code 2)."""
    from serving.runtime import ServingRuntime, StartupError

    try:
        runtime = ServingRuntime.open(data, config)
    except StartupError as exc:
        typer.echo(f"nba serve: {exc}", err=True)
        raise typer.Exit(code=2) from None
    runtime.close()
    return runtime


@app.command("serve")
def serve(
    data: features_cli.DataOption,
    config: features_cli.ConfigOption = None,
    port: Annotated[
        int | None, typer.Option(help="HTTP port; default service.port (3000).")
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on; default service.host (127.0.0.1).")
    ] = None,
) -> None:
    """Start the real-time service (BentoML): POST /recommend, /events, /score; /docs.json.

    Loads the champion bundle and opens the online store once; refuses to start, in one line,
    without a champion, an online store, a matching feature list or a token (NBA_API_TOKEN).
    """
    import os

    runtime = _preflight(data, config)
    svc = runtime.service
    cmd, env = _serve_command(data, config, host or svc.host, port or svc.port)
    features_cli.console.print(
        f"serving {data} on http://{host or svc.host}:{port or svc.port} "
        f"(champion v{runtime.policy.model_version}, {runtime.policy.version})"
    )
    os.execvpe(cmd[0], cmd, env)  # the service is this process: signals reach it directly


@app.command("bento")
def bento(
    data: features_cli.DataOption,
    alias: Annotated[str, typer.Option(help="Registry alias of the model bundle.")] = "champion",
) -> None:
    """Save the bundle behind `alias` into BentoML's model store (BENTOML_HOME) as
    `nba-bundle`, for `bentoml build` (bentofile.yaml) to pack with the service."""
    import os

    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")  # no usage reports leave the machine
    from serving.bento import save_bundle

    try:
        model = save_bundle(data, alias)
    except LookupError as exc:
        typer.echo(f"nba bento: {exc}", err=True)
        raise typer.Exit(code=2) from None
    features_cli.console.print(
        f"[green]saved[/green] {model.tag} (registry version {model.info.metadata['model_version']}"
        f", {alias}) at {model.path}\nnext: `bentoml build` in the project root packs it with the "
        "service; `bentoml serve nba:latest` with NBA_DATA set serves it"
    )


def _demo_calls(data: Path, url: str, token: str) -> None:
    """Call the running service as a channel would: a recommendation, an event, and again."""
    import json

    import httpx
    import pandas as pd

    from features.ingest.contract import DataDir
    from features.ingest.event_store import open_store

    console = features_cli.console
    con = open_store(DataDir(data))
    keys = [
        r[0]
        for r in con.execute(
            "SELECT identifier FROM identity WHERE identifier LIKE 'email:%' "
            "ORDER BY identifier LIMIT 100"
        ).fetchall()
    ]
    con.close()
    # a customer whose best actions include an e-mail, so that revoking the consent shows;
    # looked up in the 360 view, whose recommendation is a preview that records nothing
    key = next(
        (
            k
            for k in keys
            if any(
                a["channel"] == "email"
                for a in httpx.get(f"{url}/customers/{k}", timeout=30)
                .json()
                .get("recommendation", {})
                .get("actions", [])
            )
        ),
        keys[0],
    )
    body = {"customer": key, "channel": "web", "k": 3, "context": {"page": "/home"}}
    console.print(f"[bold]POST {url}/recommend[/bold] {json.dumps(body)}")
    first = httpx.post(f"{url}/recommend", json=body, timeout=30).json()
    console.print_json(json.dumps(first))
    now = pd.Timestamp.now(tz="UTC").isoformat()
    event = {
        "event_id": f"demo-{first['decision_id']}",
        "ts": now,
        "customer_key": key,
        "channel": "email",
        "event_type": "consent_revoked",
    }
    console.print(f"[bold]POST {url}/events[/bold] (the customer revokes e-mail consent)")
    answer = httpx.post(
        f"{url}/events",
        json={"events": [event]},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()
    console.print_json(json.dumps(answer))
    again = httpx.post(f"{url}/recommend", json=body, timeout=30).json()
    console.print(
        f"recommendation now: [bold green]{again['action_id']}[/bold green] on "
        f"{again['channel'] or '-'} (e-mail actions: "
        f"{[a['action_id'] for a in again['actions'] if a['channel'] == 'email'] or 'none'})"
    )
    if first.get("outcome") == "contact":
        console.print(
            f"(the first answer's {first['action_id']} contact was recorded as its sent event "
            f"before the answer, so it counts against the {first['channel']} caps now)"
        )


def _wait_ready(url: str, process, seconds: float = 180) -> None:
    import time

    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"the service at {url} was not ready after {seconds:.0f} s")


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Working directory of the demo.")] = Path("data/demo"),
    customers: Annotated[
        int, typer.Option(min=100, help="People in the synthetic world.")
    ] = 10_000,
    seed: Annotated[int, typer.Option(help="Random seed of the synthetic world.")] = 0,
    port: Annotated[int, typer.Option(help="Port of the demo's service.")] = 3000,
    exit_after_calls: Annotated[
        bool,
        typer.Option(
            "--exit-after-calls",
            envvar="NBA_DEMO_EXIT",
            help="Stop the service after the demo's calls instead of serving until Ctrl-C.",
        ),
    ] = False,
) -> None:
    """Run the whole loop on the embedded defaults: world, store, features, models, decisions,
    then the real-time service, called over HTTP."""
    import os
    import secrets
    import signal
    import subprocess

    console = features_cli.console
    console.rule("1. synthetic world with ground truth")
    features_cli.synth(out=out, customers=customers, seed=seed)
    console.rule("2. validation, identity resolution, event store")
    features_cli.ingest(data=out)
    console.rule("3. point-in-time features and the online store")
    features_cli.features(data=out, materialize=True)
    console.rule("4. training, evaluation against heuristics and the oracle, MLflow registry")
    training_cli.train(data=out)
    console.rule("5. next best actions for every customer, with reasons")
    decide(data=out, customer=None, as_of=None, out=None, alias="champion", log=False, show=5)
    console.rule("6. the real-time service")
    token = os.environ.get("NBA_API_TOKEN") or secrets.token_urlsafe(24)
    os.environ["NBA_API_TOKEN"] = token
    _preflight(out, None)
    cmd, env = _serve_command(out, None, "127.0.0.1", port)
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(cmd, env=env, start_new_session=True)
    try:
        _wait_ready(url, process)
        _demo_calls(out, url, token)
        console.print(
            f"[green]the service runs at {url}[/green] (OpenAPI: {url}/docs.json; writes need "
            f"`Authorization: Bearer {token}`)"
        )
        if not exit_after_calls:
            console.print("Ctrl-C stops it.")
            process.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)


if __name__ == "__main__":
    app()
