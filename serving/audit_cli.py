"""`nba audit`: the consent and contact-policy audit on the command line (serving/audit.py replays,
this prints the table, writes the file and sets the exit status)."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer

from features import cli as features_cli

EXIT_VIOLATIONS = 1


def audit(
    data: features_cli.DataOption,
    out: Annotated[
        Path | None,
        typer.Option(
            help="File of the violations: parquet, or CSV when it ends in .csv; default "
            "DATA/audit/violations.parquet (written even when empty)."
        ),
    ] = None,
    since: Annotated[
        datetime | None,
        typer.Option(
            "--since", help="Audit contacts at or after this time (UTC); earlier ones are history."
        ),
    ] = None,
    until: Annotated[
        datetime | None, typer.Option("--until", help="Audit contacts before this time (UTC).")
    ] = None,
    assignments: Annotated[
        list[Path] | None,
        typer.Option(
            "--assignments",
            help="A campaign's assignments.parquet written outside DATA/campaigns/ (repeatable).",
        ),
    ] = None,
    show: Annotated[int, typer.Option(min=0, help="Violations to print.")] = 20,
    config: features_cli.ConfigOption = None,
) -> None:
    """Replay every contact (the event store's `sent` events, ours or an outside system's, the
    decisions logged under DATA/decisions/ and the campaigns' assignments) against consent and
    the contact history as they stood when it went out, and report each contact that broke
    consent, a cap, the cool-down or quiet hours, with the rule and the evidence. Exit status:
    0 no violation, 1 violations found, 2 bad input or configuration."""
    from features.config import load_data_config, load_section
    from features.store.definitions import FeatureConfig
    from serving.audit import AuditRules, logged_contacts, replay, write_violations
    from serving.config import load_policy_config

    console = features_cli.console
    rules = AuditRules.of(
        load_data_config(config),
        load_section(config, "features", FeatureConfig),
        load_policy_config(config),
    )
    con = features_cli._open_current_store(data, config)
    report = replay(
        con,
        logged_contacts(data, assignments),
        rules,
        since=_utc(since),
        until=_utc(until),
    )
    target = write_violations(report.violations, out or data / "audit" / "violations.parquet")
    _print(report, console, show)
    console.print(f"[green]wrote[/green] {target}")
    if len(report.violations):
        raise typer.Exit(EXIT_VIOLATIONS)


def _utc(t: datetime | None):
    """A time given on the line as a UTC Timestamp (a time without a zone is UTC)."""
    import pandas as pd

    if t is None:
        return None
    t = pd.Timestamp(t)
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def _print(report, console, show: int) -> None:
    from rich.table import Table

    v = report.violations
    sources = ", ".join(f"{n:,} {s}" for s, n in report.audited.items()) or "none"
    span = ""
    if report.since is not None or report.until is not None:
        span = f" from {report.since or 'the start'} to {report.until or 'the end'}"
    if not len(v):
        console.print(
            f"[green]no violation[/green]: audited {report.contacts:,} contacts{span} ({sources})"
        )
        return
    console.print(
        f"[red]{report.violating_contacts:,} of {report.contacts:,} contacts{span} broke a rule"
        f"[/red] ({len(v):,} violations; contacts audited: {sources})"
    )
    per = Table(title="violations per rule")
    for col in ("rule", "reason", "violations"):
        per.add_column(col, justify="right" if col == "violations" else "left")
    for (rule, reason), n in v.groupby(["rule", "reason"]).size().items():
        per.add_row(rule, reason, f"{n:,}")
    console.print(per)
    table = Table(title=f"violations, first {min(show, len(v))} by time")
    for col in ("contact (source)", "channel", "sent at (UTC)", "rule", "evidence"):
        table.add_column(col, overflow="fold", ratio=3 if col == "evidence" else 1)
    for r in v.head(show).itertuples():
        table.add_row(
            f"{r.contact_id} ({r.source}, customer {r.customer_id})",
            r.channel,
            f"{r.ts:%Y-%m-%d %H:%M:%S}",
            r.rule,
            r.evidence,
        )
    console.print(table)
