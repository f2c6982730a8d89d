"""Hostile input catalogue (issue #23, item 6), part 2: the running service and the commands
that need a trained bundle.

One `nba serve` for the whole module (the session's served_world). Every malformed request gets
a 4xx JSON body naming the field, never a 500; a rejected event leaves nothing in the store; an
/events answer always has accepted + rejected = received. The cases already in
test_service_bad_input.py (bad JSON, wrong types, limits, wrong tokens) are not repeated.
Part 1 (loaders, configuration, files) is tests/test_hostile_input.py.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from datetime import UTC, datetime

import httpx
import pytest
from typer.testing import CliRunner

from serving.cli import app

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).isoformat()


def post_raw(svc, path: str, content, headers: dict | None = None) -> httpx.Response:
    given = {"Content-Type": "application/json", "Authorization": f"Bearer {svc.token}"}
    return httpx.post(
        svc.url + path, content=content, headers={**given, **(headers or {})}, timeout=120
    )


def refused(r: httpx.Response, status: int, words: str, field: str | None = None) -> dict:
    """A 4xx JSON answer of `status` whose error says `words` (and names `field`)."""
    assert r.status_code == status, r.text
    body = r.json()
    assert words in body["error"], body
    if field is not None:
        assert body.get("field") == field, body
    assert "Traceback" not in r.text
    return body


def event(**fields) -> dict:
    base = {
        "event_id": f"hostile-{uuid.uuid4().hex}",
        "ts": NOW,
        "customer_key": f"device:hostile-{uuid.uuid4().hex[:8]}",
        "channel": "web",
        "event_type": "visit",
    }
    return {**base, **fields}


def events_answer(svc, rows: list[dict]) -> dict:
    r = svc.post("/events", {"events": rows})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["accepted"] + answer["rejected"] == answer["received"] == len(rows)
    return answer


# ---------------------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    ("kind", "body", "words", "field"),
    [
        (
            "duplicate JSON keys",
            b'{"customer": "a", "customer": "b", "channel": "web"}',
            "the key 'customer' appears twice",
            "body",
        ),
        (
            "Latin-1 body",
            '{"customer": "caf\xe9", "channel": "web"}'.encode("latin-1"),
            "the body is not UTF-8",
            "body",
        ),
        (
            "UTF-16 body",
            '{"customer": "cafe", "channel": "web"}'.encode("utf-16"),
            "the body is not UTF-8",
            "body",
        ),
        (
            "NaN literal",
            b'{"customer": "a", "channel": "web", "k": NaN}',
            "NaN is not a JSON number",
            "body",
        ),
        (
            "Infinity literal",
            b'{"customer": "a", "channel": "web", "k": -Infinity}',
            "-Infinity is not a JSON number",
            "body",
        ),
        (
            "number overflowing a float",
            b'{"customer": "a", "channel": "web", "k": 1e400}',
            "finite number",
            "k",
        ),
        (
            "nesting 50,000 deep",
            b'{"customer": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
            "nested too deeply",
            "body",
        ),
        (
            "object where a string is expected",
            b'{"customer": {"$ne": null}, "channel": "web"}',
            "valid string",
            "customer",
        ),
        (
            "list where a string is expected",
            b'{"customer": "a", "channel": ["web", "sms"]}',
            "valid string",
            "channel",
        ),
        (
            "object in the context",
            b'{"customer": "a", "channel": "web", "context": {"page": {"x": 1}}}',
            "valid string",
            "context.page",
        ),
        ("lone surrogate", b'{"customer": "\\ud800", "channel": "web"}', "Invalid JSON", "body"),
        (
            "100,000-character customer",
            json.dumps({"customer": "x" * 100_000, "channel": "web"}).encode(),
            "at most 500 characters",
            "customer",
        ),
    ],
)
def test_hostile_bodies_get_a_4xx_naming_the_field(served_world, kind, body, words, field):
    refused(post_raw(served_world, "/recommend", body), 400, words, field)


def test_a_byte_order_mark_is_read_past(served_world):
    body = '\ufeff{"customer": "device:bom", "channel": "web"}'.encode()
    r = post_raw(served_world, "/recommend", body)
    assert r.status_code == 200, r.text


@pytest.mark.parametrize(
    ("kind", "fields", "where"),
    [
        (
            "nested object as identifier",
            {"customer_key": {"type": "device", "value": "1"}},
            "events[0].customer_key",
        ),
        ("list as channel", {"channel": ["web"]}, "events[0].channel"),
        (
            "600-character identifier",
            {"customer_key": "device:" + "a" * 600},
            "events[0].customer_key",
        ),
        ("1,000-character event id", {"event_id": "x" * 1000}, "events[0].event_id"),
        ("timestamp as a number", {"ts": 1_700_000_000}, "events[0].ts"),
    ],
)
def test_hostile_events_are_refused_and_leave_nothing(served_world, kind, fields, where):
    row = event(**fields)
    r = served_world.post("/events", {"events": [row]})
    refused(r, 400, "", where)
    if isinstance(row["event_id"], str) and len(row["event_id"]) <= 200:
        # nothing of the refused request was applied: the same id, well-formed, is new
        answer = events_answer(served_world, [event(event_id=row["event_id"])])
        assert answer["accepted"] == 1, answer


def test_nan_and_infinity_in_events_are_refused_whole(served_world):
    for literal in (b"NaN", b"Infinity", b"-Infinity"):
        row = json.dumps(event(channel="store", event_type="purchase", amount=1.0)).encode()
        body = b'{"events": [' + row.replace(b'"amount": 1.0', b'"amount": ' + literal) + b"]}"
        refused(post_raw(served_world, "/events", body), 400, "is not a JSON number", "body")


@pytest.mark.parametrize(
    ("kind", "fields", "reason"),
    [
        ("timestamp in 1970", {"ts": "1970-01-01T00:00:00Z"}, "ancient_timestamp"),
        ("timestamp in year 1", {"ts": "0001-01-01T00:00:00Z"}, "ancient_timestamp"),
        ("timestamp in 2100", {"ts": "2100-01-01T00:00:00Z"}, "future_timestamp"),
        ("timestamp in year 99999", {"ts": "99999-01-01T00:00:00Z"}, "unparseable_timestamp"),
        ("NUL in an identifier", {"customer_key": "device:a\u0000b"}, "malformed_customer_key"),
        ("control character in a link", {"link_key": "card:\u0007"}, "malformed_link_key"),
        ("identifier of spaces", {"customer_key": "device:   "}, "malformed_customer_key"),
        ("NUL in a channel", {"channel": "web\u0000"}, "unknown_channel"),
    ],
)
def test_hostile_rows_are_rejected_with_their_reason(served_world, kind, fields, reason):
    good = event()
    answer = events_answer(served_world, [event(**fields), good])
    assert [r["status"] for r in answer["results"]] == ["rejected", "accepted"], answer
    assert answer["results"][0]["reason"] == reason, (kind, answer)


def test_a_timestamp_without_a_zone_is_utc(served_world):
    naive = datetime.now(UTC).replace(tzinfo=None).isoformat()
    answer = events_answer(served_world, [event(ts=naive)])
    assert answer["accepted"] == 1, answer


# ---------------------------------------------------------------------------- size and time


def test_a_100_mb_body_streamed_is_refused_without_being_read(served_world):
    def chunks():
        yield b'{"customer": "'
        for _ in range(100):
            yield b"a" * (1 << 20)
        yield b'", "channel": "web"}'

    start = time.monotonic()
    r = httpx.post(
        served_world.url + "/recommend",
        content=chunks(),  # chunked: no Content-Length to refuse it by
        headers={"Content-Type": "application/json"},
        timeout=120,
    )
    refused(r, 413, "max_body_bytes", "body")
    assert time.monotonic() - start < 60
    with socket.create_connection(("127.0.0.1", _port(served_world))) as s:
        s.sendall(
            b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 104857600\r\n\r\n"
        )
        s.settimeout(30)
        assert s.recv(64).startswith(b"HTTP/1.1 413")  # declared: refused before any byte
    assert served_world.get("/readyz").status_code == 200


def _port(svc) -> int:
    return int(svc.url.rsplit(":", 1)[1])


def test_slow_clients_holding_connections_do_not_stop_the_service(served_world):
    """Slowloris, bounded: 100 connections sending headers a piece at a time, 50 of them then a
    body that never ends; meanwhile every normal request is answered promptly."""
    port = _port(served_world)
    held = []
    try:
        for _ in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(b"POST /recommend HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        for rounds in range(3):
            for i, s in enumerate(held):
                if rounds == 2 and i < 50:
                    s.sendall(b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
                else:
                    s.sendall(b"X-Slow: %d\r\n" % rounds)
            start = time.monotonic()
            r = httpx.post(
                served_world.url + "/recommend",
                json={"customer": "device:slowloris", "channel": "web"},
                timeout=30,
            )
            assert r.status_code == 200, r.text
            assert time.monotonic() - start < 10
            time.sleep(1)
    finally:
        for s in held:
            s.close()
    assert served_world.get("/readyz").status_code == 200


# ---------------------------------------------------------------------------- tokens and paths


@pytest.mark.parametrize("name", ["token", "access_token", "api_key"])
def test_a_token_in_the_query_string_is_refused(served_world, name):
    r = httpx.post(
        f"{served_world.url}/events?{name}={served_world.token}",
        json={"events": [event()]},
        timeout=60,
    )
    body = refused(r, 401, "not accepted", "Authorization")
    assert "Authorization: Bearer" in body["error"]
    assert served_world.token not in r.text  # not echoed back


@pytest.mark.parametrize(
    "path",
    [
        "/customers/../../../../etc/passwd",
        "/customers/..%2f..%2f..%2fetc%2fpasswd",
        "/customers/%2e%2e/%2e%2e/etc/passwd",
        "/customers/%00",
        "/customers/%ff%fe",
        "/customers/" + "x" * 5000,
    ],
)
def test_path_traversal_in_the_360_view_finds_nobody(served_world, path):
    r = httpx.get(served_world.url + path, timeout=60)
    assert 400 <= r.status_code < 500, r.text
    assert "root:" not in r.text and "Traceback" not in r.text
    assert r.json()["error"]  # JSON naming what is wrong, even for a path the client collapsed


def test_path_traversal_past_the_agent_page_serves_no_file(served_world):
    for path in ("/agent/../../../../etc/passwd", "/agent/..%2f..%2f..%2fetc%2fpasswd"):
        r = httpx.get(served_world.url + path, timeout=60)
        assert r.status_code in (400, 404), (path, r.status_code)
        assert "root:" not in r.text and r.json()["error"]


# ---------------------------------------------------------------------------- commands with a bundle


def nba(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args])


def one_line(result, command: str) -> str:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"nba {command}: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def test_commands_with_hostile_arguments(online_world, tmp_path):
    data = online_world.data_dir.root
    line = one_line(nba("decide", "--data", data, "--out", tmp_path), "decide")
    assert str(tmp_path) in line  # --out a folder
    assert list(tmp_path.iterdir()) == []
    line = one_line(
        nba("decide", "--data", data, "--customer", "device:" + "a" * 100_000), "decide"
    )
    assert "--customer" in line and len(line) < 300
    campaign = tmp_path / "negative.yaml"
    campaign.write_text("name: hostile\nactions: [email_newin]\ncapacities: {email: -100}\n")
    line = one_line(nba("campaign", "--data", data, "--campaign", campaign), "campaign")
    assert "capacities" in line and ">= 0" in line
    traversal = data / ".." / ".." / ".." / ".." / ".." / ".." / "etc" / "passwd"
    line = one_line(nba("campaign", "--data", data, "--campaign", traversal), "campaign")
    assert "--campaign" in line
    assert not (data / "campaigns" / "hostile").exists()
    line = one_line(nba("predict", "--data", data, "--out", tmp_path), "predict")
    assert "Is a directory" in line and str(tmp_path) in line
    assert list(tmp_path.iterdir()) == [campaign]  # no temporary file left behind
