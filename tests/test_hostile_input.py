"""Hostile input catalogue (issue #23, item 6), part 1: the loaders, the command line, the
configuration and the catalogue and campaign files, without a trained model.

Every case is bad input a user or an attacker can give. Each must end in a clear error naming the
file, row or field (the command line: exit code 2 and one line, no traceback) or in a quarantined
row with its reason, and must leave nothing half-written. Part 2, the service and the commands
that need a trained bundle, is tests/test_serving/test_hostile_service.py. Kinds tested elsewhere
are not repeated here (a missing column, a header-only CSV, an unknown identifier type, unknown
settings inside a section, campaign field errors: see test_validation.py, test_clear_failures.py,
test_campaign_file.py, test_catalogue.py).
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from typer.testing import CliRunner

from features.config import DataConfig
from features.errors import UserError
from features.ingest.contract import DataDir
from features.ingest.event_store import open_store, store_is_current
from features.ingest.validation import validate_events
from serving.campaign import load_campaign
from serving.catalogue import load_catalogue
from serving.cli import app

NOW = pd.Timestamp("2026-12-06T12:00:00Z")
HEADER = "event_id,ts,customer_key,channel,event_type,amount\n"
GOOD = (
    "g1,2026-01-05T10:00:00Z,loyalty:1,store,purchase,12.5\n"
    "g2,2026-01-06T10:00:00Z,loyalty:2,web,visit,\n"
)
GOOD_CAMPAIGN = "name: spring\nactions: [email_newin, dm_catalog]\ncapacities: {call_centre: 10}\n"


def nba(*args: object):
    """`nba ARGS` in this process (the command line's own error handling included)."""
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result, command: str) -> str:
    """The single error line of a refused command: exit code 2, no traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("nba ")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.stderr
    assert errors[0].startswith(f"nba {command}: "), errors[0]
    assert "Traceback" not in result.output
    return errors[0]


def data_dir(root: Path, files: dict[str, str | bytes]) -> Path:
    root.mkdir(parents=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def quarantine(path: Path) -> tuple[dict[int, str], list[tuple]]:
    """The validation of one events file: {row: reason} of rejected rows, the accepted rows."""
    con = duckdb.connect()
    result = validate_events([path], DataConfig(), con, now=NOW.to_pydatetime())
    report = result.report
    assert report.accepted + report.rejected == report.received
    rejected = dict(con.execute(f"SELECT source_row, reason FROM {result.rejected}").fetchall())
    accepted = con.execute(
        f"SELECT event_id, CAST(ts AS VARCHAR), customer_key FROM {result.accepted}"
    ).fetchall()
    return rejected, accepted


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ---------------------------------------------------------------------------- loaders: rows


@pytest.mark.parametrize(
    ("kind", "row", "reason"),
    [
        ("NUL in an identifier", "e1,2026-01-05T10:00:00Z,loyalty:1\x00,store,visit,", "malformed"),
        (
            "1 MB identifier",
            f"e1,2026-01-05T10:00:00Z,loyalty:{'a' * 1_000_000},store,visit,",
            "malformed",
        ),
        (
            "amount inf",
            "e1,2026-01-05T10:00:00Z,loyalty:1,store,purchase,inf",
            "non_numeric_amount",
        ),
        (
            "amount -Infinity",
            "e1,2026-01-05T10:00:00Z,loyalty:1,store,purchase,-Infinity",
            "non_numeric_amount",
        ),
        (
            "timestamp in 1970",
            "e1,1970-01-01T00:00:00Z,loyalty:1,store,visit,",
            "ancient_timestamp",
        ),
        (
            "timestamp in year 0",
            "e1,0000-01-01T00:00:00Z,loyalty:1,store,visit,",
            "ancient_timestamp",
        ),
        ("timestamp in 2100", "e1,2100-01-01T00:00:00Z,loyalty:1,store,visit,", "future_timestamp"),
    ],
)
def test_hostile_rows_are_quarantined_with_their_reason(tmp_path, kind, row, reason):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + row + "\n" + GOOD)
    rejected, accepted = quarantine(path)
    assert rejected == {1: reason if reason != "malformed" else "malformed_customer_key"}, kind
    assert sorted(a[0] for a in accepted) == ["g1", "g2"]  # the good rows pass


def test_a_timestamp_without_a_zone_is_read_as_utc(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text(HEADER + "e1,2026-01-01 10:00:00,loyalty:1,store,visit,\n")
    rejected, accepted = quarantine(path)
    assert rejected == {} and accepted[0][1] == "2026-01-01 10:00:00+00"


def test_a_byte_order_mark_is_read_past(tmp_path):
    path = tmp_path / "events.csv"
    path.write_bytes(("\ufeff" + HEADER + GOOD).encode("utf-8"))
    rejected, accepted = quarantine(path)
    assert rejected == {} and [a[0] for a in accepted] == ["g1", "g2"]


def test_a_parquet_file_of_the_wrong_types_is_quarantined_row_by_row(tmp_path):
    """Numbers where identifiers belong and a nested object where a string is expected."""
    path = tmp_path / "events.parquet"
    pd.DataFrame(
        {
            "event_id": [1, 2],
            "ts": ["2026-01-01T00:00:00Z"] * 2,
            "customer_key": [1.5, 2.5],
            "channel": ["store"] * 2,
            "event_type": ["visit"] * 2,
        }
    ).to_parquet(path)
    assert quarantine(path)[0] == {1: "malformed_customer_key", 2: "malformed_customer_key"}
    nested = tmp_path / "nested.parquet"
    pd.DataFrame(
        {
            "event_id": ["e1"],
            "ts": ["2026-01-01T00:00:00Z"],
            "customer_key": [{"type": "loyalty", "value": "1"}],
            "channel": ["store"],
            "event_type": ["visit"],
        }
    ).to_parquet(nested)
    assert quarantine(nested)[0] == {1: "malformed_customer_key"}


def test_ten_thousand_identifiers_linked_to_one_card_do_not_merge(tmp_path):
    """A card shown by 10,000 devices (a shop's guest card): its links are cut, nobody merges."""
    n = 10_000
    frame = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "ts": ["2026-01-05T10:00:00Z"] * n,
            "customer_key": [f"device:{i}" for i in range(n)],
            "link_key": ["card:guest"] * n,
            "channel": ["store"] * n,
            "event_type": ["visit"] * n,
        }
    )
    root = data_dir(tmp_path / "card", {})
    frame.to_parquet(root / "events.parquet")
    result = nba("ingest", "--data", root, "--now", NOW.isoformat())
    assert result.exit_code == 0, result.output
    con = open_store(DataDir(root))
    largest = con.execute(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM identity GROUP BY customer_id)"
    ).fetchone()[0]
    assert largest == 1  # every device and the card a customer of its own
    assert con.execute("SELECT count(DISTINCT customer_id) FROM identity").fetchone()[0] == n + 1


# ---------------------------------------------------------------------------- loaders: files


def _truncated_parquet() -> bytes:
    buffer = io.BytesIO()
    pd.read_csv(io.StringIO(HEADER + GOOD)).to_parquet(buffer)
    whole = buffer.getvalue()
    return whole[: len(whole) // 2]


@pytest.mark.parametrize(
    ("kind", "files", "expected"),
    [
        (
            "Latin-1 CSV",
            {
                "events.csv": (
                    HEADER + "e1,2026-01-05T10:00:00Z,loyalty:caf\xe9,store,visit,\n"
                ).encode("latin-1")
            },
            "events.csv: not UTF-8 text",
        ),
        (
            "UTF-16 CSV",
            {"events.csv": (HEADER + GOOD).encode("utf-16")},
            "events.csv: not UTF-8 text",
        ),
        (
            "binary garbage as CSV",
            {"events.csv": bytes(range(128, 256)) * 40},
            "events.csv: not UTF-8 text",
        ),
        (
            "Latin-1 deep in a CSV",
            {
                "events.csv": (
                    HEADER + GOOD * 5000 + "e9,2026-01-05T10:00:00Z,loyalty:caf\xe9,store,visit,\n"
                ).encode("latin-1")
            },
            "events.csv",
        ),
        (
            "a 2 MB line",
            {
                "events.csv": HEADER
                + f"e1,2026-01-05T10:00:00Z,loyalty:{'a' * 2_100_000},store,visit,\n"
            },
            "events.csv: CSV Error on Line: 2; Maximum line size",
        ),
        (
            "truncated parquet",
            {"events.parquet": _truncated_parquet()},
            "events.parquet: cannot read the file: No magic bytes",
        ),
        (
            "zero-byte parquet",
            {"events.parquet": b""},
            "events.parquet: cannot read the file: File",
        ),
        ("parquet of zero rows", {"events.parquet": b"ZERO_ROWS"}, "the events files hold no rows"),
        ("unsupported file only", {"events/x.json": '{"event_id": "e1"}'}, "no events found"),
    ],
)
def test_unreadable_files_are_one_line_and_write_no_store(tmp_path, kind, files, expected):
    if files.get("events.parquet") == b"ZERO_ROWS":
        root = data_dir(tmp_path / "d", {})
        pd.read_csv(io.StringIO(HEADER + GOOD)).head(0).astype(str).to_parquet(
            root / "events.parquet"
        )
    else:
        root = data_dir(tmp_path / "d", files)
    line = one_line(nba("ingest", "--data", root, "--now", NOW.isoformat()), "ingest")
    assert expected in line, (kind, line)
    assert len(line) < 600, kind  # no 2 MB line echoed back
    assert tree_digest(root / "store") == {}, kind  # no file written (empty work folders)


def test_a_failed_ingest_leaves_the_previous_store_unchanged_or_not_current(tmp_path):
    root = data_dir(tmp_path / "d", {"events.csv": HEADER + GOOD})
    assert nba("ingest", "--data", root, "--now", NOW.isoformat()).exit_code == 0
    before = tree_digest(root / "store")
    (root / "events.csv").unlink()
    (root / "events.parquet").write_bytes(_truncated_parquet())
    one_line(nba("ingest", "--data", root, "--now", NOW.isoformat()), "ingest")
    after = tree_digest(root / "store")
    # unchanged, or at least never taken for a current store of the new input
    assert after == before or not store_is_current(DataDir(root))


def test_symlinks_out_of_the_data_directory_are_refused(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_text(HEADER + GOOD)
    for name, target in (("near", outside), ("passwd", Path("/etc/passwd"))):
        root = data_dir(tmp_path / name, {})
        (root / "events.csv").symlink_to(target)
        line = one_line(nba("validate", "--data", root), "validate")
        assert f"events.csv: links to {target}, outside the data directory" in line
        assert not (root / "quarantine").exists()
    inside = data_dir(tmp_path / "inside", {"raw/e.csv": HEADER + GOOD})
    (inside / "events.csv").symlink_to(inside / "raw" / "e.csv")  # within: fine
    assert nba("validate", "--data", inside, "--now", NOW.isoformat()).exit_code == 0


def test_path_traversal_in_the_data_argument_reads_no_foreign_file(tmp_path):
    root = data_dir(tmp_path / "d", {"events.csv": HEADER + GOOD})
    traversal = root / ".." / ".." / ".." / ".." / ".." / ".." / "etc"
    line = one_line(nba("validate", "--data", traversal), "validate")
    assert "no events found" in line
    line = one_line(nba("validate", "--data", root / "events.csv"), "validate")
    assert "--data" in line  # a file where a directory is expected: the option named


# ---------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kind", "text", "expected"),
    [
        (
            "unknown section",
            "featurs:\n  half_lives_days: [7]\n",
            "unknown section(s) featurs (known: data, features",
        ),
        (
            "wrong type",
            "data:\n  identity:\n    identifier_types: loyalty\n",
            "data.identity.identifier_types: input should be a valid list, got 'loyalty'",
        ),
        ("section that is a number", "data: 5\n", "data: input should be a valid dictionary"),
        (
            "a list, not a mapping",
            "- data\n- features\n",
            "expected a mapping of sections at the top level",
        ),
        (
            "duplicate key",
            "data:\n  validation:\n    min_accepted_share: 0.5\n    min_accepted_share: 0.9\n",
            "the key 'min_accepted_share' appears twice",
        ),
        (
            "python object tag",
            "data: !!python/object/apply:os.system ['echo pwned']\n",
            "not valid YAML: could not determine a constructor",
        ),
        (
            "Latin-1 bytes",
            "data:\n  identity:\n    identifier_types: [caf\xe9]\n".encode("latin-1"),
            "not UTF-8 text",
        ),
        (
            "NaN setting",
            "data:\n  validation:\n    min_accepted_share: .nan\n",
            "data.validation.min_accepted_share",
        ),
        (
            "negative tolerance",
            "data:\n  validation:\n    future_tolerance_seconds: -5\n",
            "data.validation.future_tolerance_seconds: input should be greater than or equal to 0",
        ),
        (
            "huge nested anchors",
            "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\ndata:\n  identity:\n    identifier_types: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n",
            "unknown section(s) a, b, c",
        ),
    ],
)
def test_configuration_mistakes_are_one_line(tmp_path, kind, text, expected):
    root = data_dir(tmp_path / "d", {"events.csv": HEADER + GOOD})
    config = tmp_path / "nba.yaml"
    if isinstance(text, bytes):
        config.write_bytes(text)
    else:
        config.write_text(text)
    line = one_line(nba("validate", "--data", root, "--config", config), "validate")
    assert expected in line, (kind, line)
    assert not (root / "quarantine").exists(), kind  # refused before anything was written


def test_configuration_paths_that_are_not_files(tmp_path):
    root = data_dir(tmp_path / "d", {"events.csv": HEADER + GOOD})
    line = one_line(nba("validate", "--data", root, "--config", tmp_path), "validate")
    assert "is a directory, not a YAML file" in line
    line = one_line(nba("validate", "--data", root, "--config", "/dev/zero"), "validate")
    assert "/dev/zero is not a regular file" in line
    line = one_line(nba("validate", "--data", root, "--config", root / "events.csv"), "validate")
    assert "expected a mapping of sections" in line
    bom = tmp_path / "bom.yaml"
    bom.write_bytes("\ufeffdata:\n  validation:\n    min_accepted_share: 0.5\n".encode())
    assert nba("validate", "--data", root, "--config", bom, "--now", NOW.isoformat()).exit_code == 0


def test_policy_settings_are_checked_before_the_service_starts(tmp_path, monkeypatch):
    """Negative caps and wrong types in the policy stop `nba serve` in one line, first."""
    monkeypatch.setenv("NBA_API_TOKEN", "t")
    root = data_dir(tmp_path / "d", {"events.csv": HEADER + GOOD})
    for text, expected in (
        (
            "policy:\n  contact_policy:\n    caps:\n      - {channel: email, max_contacts: -1, "
            "window_days: 7}\n",
            "max_contacts",
        ),
        ("service:\n  port: http\n", "service.port"),
        ("service:\n  max_body_bytes: -1\n", "service.max_body_bytes"),
    ):
        config = tmp_path / "nba.yaml"
        config.write_text(text)
        line = one_line(nba("serve", "--data", root, "--config", config), "serve")
        assert expected in line and "configuration" in line, line


# ---------------------------------------------------------------------------- catalogue, campaign


def test_catalogue_files(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("actions: []\n")
    with pytest.raises(UserError, match="the catalogue has no actions"):
        load_catalogue(empty)
    twice = tmp_path / "twice.yaml"
    twice.write_text("actions:\n  - id: a\n    id: b\n")
    with pytest.raises(UserError, match="twice.yaml: not valid YAML: the key 'id' appears twice"):
        load_catalogue(twice)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes("actions:\n  - id: caf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="latin.yaml: not UTF-8 text"):
        load_catalogue(latin)


def test_campaign_files(tmp_path):
    twice = tmp_path / "twice.yaml"
    twice.write_text(GOOD_CAMPAIGN + "budget: 10\nbudget: 1000000\n")
    with pytest.raises(UserError, match="the key 'budget' appears twice"):
        load_campaign(twice)
    traversal = tmp_path / ".." / ".." / ".." / ".." / ".." / "etc" / "passwd"
    with pytest.raises(ValueError, match="a campaign is a mapping|not valid YAML"):
        load_campaign(traversal)
    with pytest.raises(UserError, match="is a directory"):
        load_campaign(tmp_path)
    nan = tmp_path / "nan.yaml"
    nan.write_text(GOOD_CAMPAIGN + "budget: .nan\n")
    with pytest.raises(ValueError, match="budget"):
        load_campaign(nan)
    bom = tmp_path / "bom.yaml"
    bom.write_bytes(("\ufeff" + GOOD_CAMPAIGN).encode())
    assert load_campaign(bom)[0].name == "spring"
    for when in ("1970-01-01T00:00:00Z", "2100-01-01T00:00:00Z", "2026-03-01 09:00"):
        dated = tmp_path / "dated.yaml"
        dated.write_text(GOOD_CAMPAIGN + f"decision_date: '{when}'\n")
        try:
            plan = load_campaign(dated)[0]
        except ValueError as exc:
            assert "decision_date" in str(exc), exc
        else:  # accepted: read as UTC
            assert plan.decision_time().tzinfo is not None


def test_unreadable_environment_is_not_a_traceback(tmp_path):
    """The synthetic world's own command refuses nonsense sizes in one line."""
    line = one_line(nba("synth", "--customers", -5, "--out", tmp_path / "w"), "synth")
    assert "--customers" in line
    assert not (tmp_path / "w").exists()
    assert os.environ.get("NBA_DEBUG", "") in ("", "0")


def test_ten_thousand_identifiers_linked_to_one_card_online(opener):
    """The same card through POST /events' path (both backends): the card's customer takes
    links up to the shared-identifier limit, then each device stays a customer of its own."""
    store = opener()
    ts = pd.Timestamp.now(tz="UTC").isoformat()
    unmerged = 0
    try:
        for batch in range(10):
            rows = [
                {
                    "event_id": f"e{batch}-{i}",
                    "ts": ts,
                    "customer_key": f"device:{batch}-{i}",
                    "link_key": "card:guest",
                    "channel": "store",
                    "event_type": "visit",
                }
                for i in range(1000)
            ]
            report = store.apply_records(rows, log=True)
            assert report.applied == report.received == 1000
            unmerged += report.unmerged_links
        limit = DataConfig().identity.limit_for("card")
        card = store.identifiers(store.resolve("card:guest"))
        assert 1 < len(card) <= limit + 2, len(card)
        assert unmerged == 10_000 - (len(card) - 1)
        assert store.identifiers(store.resolve("device:9-999")) == ["device:9-999"]
    finally:
        store.close()
