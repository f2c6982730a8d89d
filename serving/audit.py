"""The consent and contact-policy audit: every contact replayed against the history of its moment.

A contact is a `sent` event in the event store (ours or an outside system's), a logged decision
that chose to send (DATA/decisions/: `nba decide --log`, `nba campaign --log`, the service's
real-time log) or a campaign assignment (DATA/campaigns/*/assignments.parquet); one id is one
contact (a decision's `sent` event carries its decision id). Each is checked at the time it went
out against `serving.contact_policy`'s rules as the feature definitions compute them: consent on
the channel (a grant before it, not revoked since), every cap (the contacts in [t - window, t);
one at the same instant counts first when its id sorts first), the cool-down after an opt-out, and
quiet hours on real-time channels. Each rule is one DuckDB query (window counts and as-of joins
over the event store), not a loop over contacts.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from features.config import DataConfig
from features.errors import UserError
from features.ingest.contract import CUSTOMER_ID, DataDir
from features.store.definitions import US_PER_DAY, FeatureConfig
from serving.campaign_job import ASSIGNMENTS, write_atomically
from serving.config import Cap, ContactPolicy, PolicyConfig
from serving.contact_policy import COOLDOWN, NO_CONSENT, QUIET, cap_reason, local_hour
from serving.decision_log import DECISIONS_DIR, read_realtime_decisions, send_times
from serving.policy import SENT, caps_on_configured_channels

# the rule a violation broke (the `rule` column); `reason` says it in the policy's own words
NO_CONSENT_RULE = "no_consent"
REVOKED_RULE = "consent_revoked"
COOLDOWN_RULE = "cooldown"
QUIET_RULE = "quiet_hours"
CAP_RULE = "cap"

# where a contact was found, in the order one found in several places is named by
SOURCE_DECISION = "decision"
SOURCE_CAMPAIGN = "campaign"
SOURCE_SERVICE = "service"
SOURCE_EVENTS = "event store"
_PRIORITY = {SOURCE_DECISION: 0, SOURCE_CAMPAIGN: 1, SOURCE_SERVICE: 2, SOURCE_EVENTS: 3}

CONTACT_COLUMNS = ["contact_id", "source", CUSTOMER_ID, "channel", "action_id", "ts", "decided_at"]
VIOLATION_COLUMNS = [
    *CONTACT_COLUMNS,
    "in_event_store",
    "rule",
    "reason",
    "evidence",
    "evidence_ids",
    "evidence_ts",
]
_RECORD_COLUMNS = ["decision_id", CUSTOMER_ID, "as_of", "action_id", "channel", "logged_as"]
_TIME = "%Y-%m-%d %H:%M:%S"


@dataclass(frozen=True)
class AuditRules:
    """What the audit checks, from the same configuration the policy and the features run."""

    policy: ContactPolicy
    contact_types: tuple[str, ...]
    consent_granted: str
    revoking_types: tuple[str, ...]
    negative_types: tuple[str, ...]
    outbound: tuple[str, ...]
    realtime: tuple[str, ...]

    @classmethod
    def of(cls, data: DataConfig, features: FeatureConfig, policy: PolicyConfig) -> AuditRules:
        return cls(
            policy=caps_on_configured_channels(policy, data).contact_policy,
            contact_types=tuple(features.contact_event_types),
            consent_granted=data.event_types.consent_granted,
            revoking_types=tuple(features.revoking_event_types),
            negative_types=tuple(features.negative_event_types),
            outbound=tuple(data.outbound_channels),
            realtime=tuple(c.name for c in data.channels if c.realtime),
        )


@dataclass
class AuditReport:
    """The violations found, and what was audited: contacts per source in the audited span."""

    violations: pd.DataFrame
    audited: dict[str, int]
    since: pd.Timestamp | None
    until: pd.Timestamp | None

    @property
    def contacts(self) -> int:
        return sum(self.audited.values())

    @property
    def violating_contacts(self) -> int:
        return int(self.violations["contact_id"].nunique())


# ------------------------------------------------------------------ the contacts we made


def _empty_contacts() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "contact_id": pd.Series(dtype=object),
            "source": pd.Series(dtype=object),
            CUSTOMER_ID: pd.Series(dtype=object),
            "channel": pd.Series(dtype=object),
            "action_id": pd.Series(dtype=object),
            "ts": pd.Series(dtype="datetime64[us, UTC]"),
            "decided_at": pd.Series(dtype="datetime64[us, UTC]"),
        }
    )


def _check_record(columns: list[str], where: str, needed: list[str]) -> None:
    missing = [c for c in needed if c not in columns]
    if missing:
        raise UserError(
            f"{where}: a decision record needs columns {missing} (written by nba decide --log, "
            "nba campaign or the service)"
        )


def _sent(records: pd.DataFrame, source: str, immediate: bool) -> pd.DataFrame:
    """The records that chose to send, as contacts: at the decision time (a real-time answer)
    or at the first send hour after it (a batch run's schedule, as its `sent` event is)."""
    sent = records[records["logged_as"] == SENT]
    decided = pd.to_datetime(sent["as_of"], utc=True)
    ts = decided if immediate else send_times(decided, sent["send_hour"].astype("int64"))
    return pd.DataFrame(
        {
            "contact_id": sent["decision_id"].astype(str).to_numpy(),
            "source": source,
            CUSTOMER_ID: sent[CUSTOMER_ID].astype(str).to_numpy(),
            "channel": sent["channel"].astype(str).to_numpy(),
            "action_id": sent["action_id"].astype(str).to_numpy(),
            "ts": ts.astype("datetime64[us, UTC]").to_numpy(),
            "decided_at": decided.astype("datetime64[us, UTC]").to_numpy(),
        }
    )


def _batch_file(path: Path) -> pd.DataFrame:
    """A batch run's decision record or a campaign's assignments: the ones that chose to send."""
    try:
        names = pq.ParquetDataset(path).schema.names  # a file, or a folder of parts (Spark)
    except (OSError, pa.ArrowInvalid) as exc:
        raise UserError(f"{path}: not a readable parquet file ({exc})") from None
    _check_record(names, str(path), [*_RECORD_COLUMNS, "send_hour"])
    records = pd.read_parquet(path, columns=[*_RECORD_COLUMNS, "send_hour"])
    source = SOURCE_CAMPAIGN if "campaign" in names else SOURCE_DECISION
    return _sent(records, source, immediate=False)


def logged_contacts(root: Path, assignments: list[Path] | None = None) -> pd.DataFrame:
    """Every contact our own decisions made (CONTACT_COLUMNS): the decision records under
    DATA/decisions/ (batch runs, logged campaigns, the service's real-time log) and the
    campaigns' assignments (DATA/campaigns/*/assignments.parquet and `assignments`)."""
    files = sorted((root / DECISIONS_DIR).glob("*.parquet"))
    files += sorted((root / "campaigns").glob(f"*/{ASSIGNMENTS}"))
    files += [Path(p) for p in assignments or []]
    frames = [_batch_file(p) for p in files]
    realtime = read_realtime_decisions(DataDir(root))
    if len(realtime):
        where = str(root / DECISIONS_DIR / "realtime-*.jsonl")
        _check_record(list(realtime.columns), where, _RECORD_COLUMNS)
        frames.append(_sent(realtime, SOURCE_SERVICE, immediate=True))
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else _empty_contacts()


# ------------------------------------------------------------------ the replay


def _text(value: str) -> str:
    """A SQL string literal (configuration values, never data)."""
    return "'" + value.replace("'", "''") + "'"


def _list(values: list[str] | tuple[str, ...]) -> str:
    """A SQL list of string literals."""
    return "(" + ", ".join([_text(v) for v in values] or ["NULL"]) + ")"


def _contacts_table(con: duckdb.DuckDBPyConnection, logged: pd.DataFrame, rules: AuditRules):
    """_audit_contacts: one row a contact id, from the event store's contact events and our
    logged decisions (`audited` is set later for the span under audit); _audit_history: the
    store's consent and opt-out events."""
    frame = logged.copy()
    frame["priority"] = frame["source"].map(_PRIORITY).astype("int64")
    con.register("_audit_logged", frame)
    try:
        con.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE _audit_contacts AS
            WITH store AS (
                SELECT event_id::VARCHAR AS contact_id, customer_id::VARCHAR AS customer_id,
                       channel::VARCHAR AS channel, action_id::VARCHAR AS action_id,
                       ts::TIMESTAMPTZ AS ts
                FROM events WHERE event_type IN {_list(rules.contact_types)}
            ),
            logged AS (
                SELECT contact_id::VARCHAR AS contact_id, source::VARCHAR AS source,
                       customer_id::VARCHAR AS customer_id, channel::VARCHAR AS channel,
                       action_id::VARCHAR AS action_id, ts::TIMESTAMPTZ AS ts,
                       decided_at::TIMESTAMPTZ AS decided_at
                FROM _audit_logged
                QUALIFY row_number() OVER (PARTITION BY contact_id ORDER BY priority) = 1
            ),
            merged AS (
                SELECT l.*, l.contact_id IN (SELECT contact_id FROM store) AS in_event_store
                FROM logged l
                UNION ALL
                SELECT s.contact_id, {_text(SOURCE_EVENTS)} AS source, s.customer_id,
                       s.channel, s.action_id, s.ts, NULL::TIMESTAMPTZ AS decided_at,
                       true AS in_event_store
                FROM store s ANTI JOIN logged l ON s.contact_id = l.contact_id
            )
            SELECT *, epoch_us(ts) AS ts_us, true AS audited FROM merged
            """
        )
    finally:
        con.unregister("_audit_logged")
    kinds = (rules.consent_granted, *rules.revoking_types, *rules.negative_types)
    con.execute(  # the consent and opt-out events, read from the store once for every rule
        "CREATE OR REPLACE TEMP TABLE _audit_history AS SELECT customer_id::VARCHAR AS "
        "customer_id, channel::VARCHAR AS channel, ts::TIMESTAMPTZ AS ts, event_id::VARCHAR AS "
        f"event_id, event_type::VARCHAR AS event_type FROM events WHERE event_type IN {_list(kinds)}"
    )


def _consent_sql(rules: AuditRules) -> str:
    """Contacts on an outbound channel without a grant before them, or revoked since: the
    feature `<channel>_consent` is 1 only when the last grant is later than the last revocation."""
    granted = _text(rules.consent_granted)
    return f"""
        WITH c AS (
            SELECT contact_id, customer_id, channel, ts FROM _audit_contacts
            WHERE audited AND channel IN {_list(rules.outbound)}
        ),
        g AS (
            SELECT customer_id, channel, ts, event_id FROM _audit_history
            WHERE event_type = {granted}
        ),
        r AS (
            SELECT customer_id, channel, ts, event_id, event_type FROM _audit_history
            WHERE event_type IN {_list(rules.revoking_types)}
        ),
        j AS (
            SELECT c.*, g.event_id AS g_id, g.ts AS g_ts, r.event_id AS r_id, r.ts AS r_ts,
                   r.event_type AS r_type
            FROM c
            ASOF LEFT JOIN g ON c.customer_id = g.customer_id AND c.channel = g.channel
                AND c.ts > g.ts
            ASOF LEFT JOIN r ON c.customer_id = r.customer_id AND c.channel = r.channel
                AND c.ts > r.ts
        )
        SELECT contact_id,
            CASE WHEN g_id IS NULL THEN {_text(NO_CONSENT_RULE)} ELSE {_text(REVOKED_RULE)}
                END AS rule,
            {_text(NO_CONSENT)} AS reason,
            CASE
                WHEN g_id IS NULL AND r_id IS NULL THEN
                    format('no {{}} on {{}} before it', {granted}, channel)
                WHEN g_id IS NULL THEN
                    format('no {{}} on {{}} before it; last {{}} {{}} at {{}}', {granted},
                        channel, r_type, r_id, strftime(r_ts, '{_TIME}'))
                ELSE format('{{}} {{}} at {{}}, after {{}} {{}} at {{}}', r_type, r_id,
                        strftime(r_ts, '{_TIME}'), {granted}, g_id, strftime(g_ts, '{_TIME}'))
            END AS evidence,
            CASE WHEN g_id IS NULL AND r_id IS NULL THEN []::VARCHAR[]
                 WHEN g_id IS NULL THEN [r_id] ELSE [g_id, r_id] END AS evidence_ids,
            CASE WHEN g_id IS NULL AND r_id IS NULL THEN []::TIMESTAMPTZ[]
                 WHEN g_id IS NULL THEN [r_ts] ELSE [g_ts, r_ts] END AS evidence_ts
        FROM j
        WHERE g_id IS NULL OR (r_id IS NOT NULL AND r_ts >= g_ts)
    """


def _cooldown_sql(rules: AuditRules) -> str:
    """Contacts fewer than `cooldown_days` after the customer's last opt-out on any channel
    (the feature `all_negative_days_since` < cooldown_days)."""
    days = float(rules.policy.cooldown_days)
    return f"""
        WITH c AS (SELECT contact_id, customer_id, ts, ts_us FROM _audit_contacts WHERE audited),
        n AS (
            SELECT customer_id, channel, ts, event_id, event_type FROM _audit_history
            WHERE event_type IN {_list(rules.negative_types)}
        ),
        j AS (
            SELECT c.contact_id, n.*, (c.ts_us - epoch_us(n.ts)) / {US_PER_DAY}.0 AS days
            FROM c ASOF JOIN n ON c.customer_id = n.customer_id AND c.ts > n.ts
        )
        SELECT contact_id, {_text(COOLDOWN_RULE)} AS rule, {_text(COOLDOWN)} AS reason,
            format('{{}} {{}} on {{}} at {{}}, {{}} days before it (cool-down {days:g} days)',
                event_type, event_id, channel, strftime(ts, '{_TIME}'),
                round(days, 2)) AS evidence,
            [event_id] AS evidence_ids, [ts] AS evidence_ts
        FROM j WHERE days < {days!r}
    """


def _cap_sql(cap: Cap) -> str:
    """Contacts whose cap window [t - window, t) already held `max_contacts` contacts (the
    feature `<channel|all>_contact_count_<w>d`), with those contacts as the evidence."""
    w_us = int(round(cap.window_days * US_PER_DAY))
    where = f"channel = {_text(cap.channel)}" if cap.channel else "true"
    what = f"{cap.channel} contacts" if cap.channel else "contacts on all channels"
    return f"""
        WITH scope AS (SELECT contact_id, customer_id, ts, ts_us, audited FROM _audit_contacts
                       WHERE {where}),
        w AS (
            SELECT *,
                count(*) OVER (PARTITION BY customer_id ORDER BY ts_us
                               RANGE BETWEEN {w_us} PRECEDING AND 1 PRECEDING)
                + row_number() OVER (PARTITION BY customer_id, ts_us ORDER BY contact_id) - 1
                AS earlier
            FROM scope
        ),
        v AS (SELECT * FROM w WHERE audited AND earlier >= {cap.max_contacts}),
        e AS (
            SELECT v.contact_id, v.earlier, s.contact_id AS e_id, s.ts AS e_ts, s.ts_us AS e_us
            FROM v LEFT JOIN scope s ON s.customer_id = v.customer_id
                AND s.ts_us >= v.ts_us - {w_us}
                AND (s.ts_us < v.ts_us OR (s.ts_us = v.ts_us AND s.contact_id < v.contact_id))
        )
        SELECT contact_id, {_text(CAP_RULE)} AS rule, {_text(cap_reason(cap))} AS reason,
            format('{{}} earlier {what} in {cap.window_days} days (cap {cap.max_contacts}){{}}',
                earlier,
                coalesce(': ' || string_agg(e_id || ' at ' || strftime(e_ts, '{_TIME}'), ', '
                                            ORDER BY e_us, e_id), '')) AS evidence,
            coalesce(list(e_id ORDER BY e_us, e_id) FILTER (WHERE e_id IS NOT NULL),
                     []::VARCHAR[]) AS evidence_ids,
            coalesce(list(e_ts ORDER BY e_us, e_id) FILTER (WHERE e_id IS NOT NULL),
                     []::TIMESTAMPTZ[]) AS evidence_ts
        FROM e GROUP BY contact_id, earlier
    """


def _quiet(con: duckdb.DuckDBPyConnection, rules: AuditRules) -> pd.DataFrame:
    """Contacts on a real-time channel inside quiet hours of the customer's local day (the
    policy's own `local_hour` and `QuietHours.is_quiet`, on every contact's time at once)."""
    q = rules.policy.quiet_hours
    c = con.sql(
        f"SELECT contact_id, channel, ts FROM _audit_contacts "
        f"WHERE audited AND channel IN {_list(rules.realtime)}"
    ).df()
    ts = pd.to_datetime(c["ts"], utc=True)
    quiet = np.asarray(q.is_quiet(local_hour(ts, len(c), q.utc_offset_hours)), dtype=bool)
    if not quiet.any():
        return pd.DataFrame({"contact_id": pd.Series(dtype=str), "evidence": pd.Series(dtype=str)})
    v, ts = c[quiet], ts[quiet]
    local = (ts + pd.to_timedelta(q.utc_offset_hours, unit="h")).dt.strftime("%H:%M")
    span = f"quiet {q.start_hour:02d}:00-{q.end_hour:02d}:00 (UTC{q.utc_offset_hours:+g})"
    evidence = "on " + v["channel"].astype(str) + " at " + local + " local time, " + span
    return pd.DataFrame(
        {"contact_id": v["contact_id"].astype(str).to_numpy(), "evidence": evidence.to_numpy()}
    )


def replay(
    con: duckdb.DuckDBPyConnection,
    logged: pd.DataFrame,
    rules: AuditRules,
    since: pd.Timestamp | None = None,
    until: pd.Timestamp | None = None,
) -> AuditReport:
    """Audit the contacts at or after `since` and before `until` (all by default) on `con`,
    whose `events` relation is the event store (event_id, ts, customer_id, channel,
    event_type, action_id); `logged` holds our decisions' contacts (`logged_contacts`).
    Earlier contacts are history: they fill caps, but are not themselves audited."""
    _contacts_table(con, logged, rules)
    bounds = []
    if since is not None:
        bounds.append(f"ts >= TIMESTAMPTZ '{pd.Timestamp(since).isoformat()}'")
    if until is not None:
        bounds.append(f"ts < TIMESTAMPTZ '{pd.Timestamp(until).isoformat()}'")
    if bounds:
        con.execute(f"UPDATE _audit_contacts SET audited = ({' AND '.join(bounds)})")
    queries = [_cooldown_sql(rules)] + [_cap_sql(cap) for cap in rules.policy.caps]
    if rules.policy.require_consent:
        queries.insert(0, _consent_sql(rules))
    con.register("_audit_quiet", _quiet(con, rules))
    try:
        parts = " UNION ALL BY NAME ".join(f"({q})" for q in queries)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _audit_violations AS "
            f"SELECT * FROM ({parts}) UNION ALL BY NAME "
            f"SELECT contact_id::VARCHAR AS contact_id, {_text(QUIET_RULE)} AS rule, "
            f"{_text(QUIET)} AS reason, evidence::VARCHAR AS evidence, "
            "[]::VARCHAR[] AS evidence_ids, []::TIMESTAMPTZ[] AS evidence_ts FROM _audit_quiet"
        )
    finally:
        con.unregister("_audit_quiet")
    violations = con.sql(
        f"SELECT {', '.join('c.' + c for c in VIOLATION_COLUMNS[:8])}, v.rule, v.reason, "
        "v.evidence, v.evidence_ids, v.evidence_ts "
        "FROM _audit_violations v JOIN _audit_contacts c USING (contact_id) "
        "ORDER BY c.ts, c.contact_id, v.rule, v.reason"
    ).df()
    audited = dict(
        con.execute(
            "SELECT source, count(*) FROM _audit_contacts WHERE audited GROUP BY source "
            "ORDER BY source"
        ).fetchall()
    )
    return AuditReport(violations, audited, since, until)


def write_violations(violations: pd.DataFrame, path: Path) -> Path:
    """The violations as parquet, or CSV when `path` ends in .csv (the evidence lists joined
    by '; '), renamed into place when complete."""
    if path.suffix.lower() == ".csv":
        flat = violations.copy()
        flat["evidence_ids"] = flat["evidence_ids"].map(lambda ids: "; ".join(map(str, ids)))
        flat["evidence_ts"] = flat["evidence_ts"].map(
            lambda ts: "; ".join(pd.Timestamp(t).isoformat() for t in ts)
        )
        return write_atomically(path, lambda p: flat.to_csv(p, index=False))
    return write_atomically(path, lambda p: violations.to_parquet(p, index=False))
