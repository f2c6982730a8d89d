"""Bad input never gets a 500: the running service (`nba serve` as a process) answers every
malformed request with a 4xx naming the field, and a property-based run of schemathesis against
its own OpenAPI description finds no 5xx and no answer that breaks the schema."""

from __future__ import annotations

import json

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

pytestmark = pytest.mark.integration


def post_raw(svc, path: str, content: bytes, token: str | None = None) -> httpx.Response:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(svc.url + path, content=content, headers=headers, timeout=60)


def error_text(r: httpx.Response) -> str:
    """The answer's body as one string, for asserting that it names a field."""
    return json.dumps(r.json())


@pytest.mark.parametrize(
    ("path", "body", "status", "named"),
    [
        ("/recommend", b"{bad", 400, "not valid JSON"),
        ("/recommend", b"[1, 2]", 400, "JSON object"),
        ("/recommend", b'{"channel": "web"}', 400, "customer"),
        ("/recommend", b'{"customer": "x", "channel": "fax"}', 422, "channel"),
        ("/recommend", b'{"customer": "x", "channel": "web", "k": 0}', 400, '"k"'),
        ("/recommend", b'{"customer": "x", "channel": "web", "k": 21}', 400, '"k"'),
        ("/recommend", b'{"customer": "x", "channel": "web", "k": "three"}', 400, '"k"'),
        ("/recommend", b'{"customer": 17, "channel": "web"}', 400, "customer"),
        ("/recommend", b'{"customer": "x", "channel": "web", "explain": []}', 400, "explain"),
        ("/score", b'{"customers": []}', 400, "customers"),
        ("/score", b'{"customers": "c1"}', 400, "customers"),
        ("/events", b'{"events": []}', 400, "events"),
        ("/events", b'{"events": {"event_id": "e"}}', 400, "events"),
        ("/events", b'{"rows": []}', 400, "events"),
    ],
)
def test_malformed_requests_get_a_4xx_naming_the_field(served_world, path, body, status, named):
    r = post_raw(served_world, path, body, token=served_world.token)
    assert r.status_code == status, r.text
    assert named in error_text(r)


def test_over_the_limits(served_world):
    too_many = {"events": [{"event_id": f"x{i}"} for i in range(1001)]}
    r = served_world.post("/events", too_many)
    assert r.status_code == 400 and "events" in error_text(r)
    scores = {"customers": [f"c{i}" for i in range(10_001)]}
    r = served_world.post("/score", scores)
    assert r.status_code == 400 and "customers" in error_text(r)
    huge = json.dumps({"customer": "x" * 5_000_000, "channel": "web"}).encode()
    r = post_raw(served_world, "/recommend", huge)
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]


def test_wrong_tokens_get_401_not_a_stack_trace(served_world):
    event = {"events": [{"event_id": "t", "customer_key": "c1"}]}
    for header in (
        None,
        "Bearer wrong",
        "Bearer",
        "bearer test-tokenx",
        "Basic dGVzdA==",
        "x" * 10_000,
    ):
        headers = {} if header is None else {"Authorization": header}
        r = httpx.post(served_world.url + "/events", json=event, headers=headers, timeout=60)
        assert r.status_code == 401, (header, r.text)
        assert "token" in r.json()["error"] and "Traceback" not in r.text


def test_invalid_rows_of_a_batch_are_rejected_with_their_reason_not_the_batch(served_world):
    rows = [
        {"event_id": "bad-1"},
        {"event_id": "bad-2", "ts": "yesterday", "customer_key": "email:a@b", "channel": "email"},
        {
            "event_id": "bad-3",
            "ts": "2026-01-01T00:00:00Z",
            "customer_key": "email:a@b",
            "channel": "fax",
            "event_type": "open",
        },
    ]
    r = served_world.post("/events", {"events": rows})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["received"] == 3 and answer["accepted"] + answer["rejected"] == 3
    assert all(row["status"] == "rejected" and row["reason"] for row in answer["results"])


def post_operations(served_world) -> list:
    """The POST operations of the service's own OpenAPI description."""
    schema = schemathesis.openapi.from_url(served_world.url + "/docs.json")
    operations = [r.ok() for r in schema.include(method="POST").get_all_operations()]
    assert {op.path for op in operations} >= {"/recommend", "/events", "/score"}
    return operations


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_generated_requests_never_get_a_server_error(served_world, mode):
    """Schemathesis' valid and invalid requests of every POST endpoint: no 5xx, no answer that
    breaks the schema (schemathesis' pytest plugin does not load under pytest 9, so the
    strategies are drawn with Hypothesis directly)."""
    headers = {"Authorization": f"Bearer {served_world.token}"}
    for operation in post_operations(served_world):

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=40,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        def check(case) -> None:
            case.call_and_validate(
                base_url=served_world.url,
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance],
                timeout=60,
            )

        check()
