"""The service's door: bearer token, body size and well-formed JSON, checked before BentoML.

A pure ASGI middleware, so a refused request costs no parsing: a missing or wrong token is a
401 (a token in the query string is never accepted: URLs end up in logs), a body over the limit
a 413 (read no further), a body that is not strict JSON a 400 naming where it breaks: not UTF-8
(a UTF-8 byte-order mark is dropped), a key twice in one object, NaN or Infinity (not JSON
numbers), nesting too deep to parse. Every refusal is a JSON body `{"error": ..., "field": ...}`, never a stack trace;
BentoML's own 400 for a request that fails its pydantic model is rewritten into the same shape
(its `detail` is a list where its OpenAPI description promises a string).
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UTF8_BOM = b"\xef\xbb\xbf"
QUERY_TOKEN_NAMES = (b"token", b"access_token", b"api_key", b"apikey", b"bearer")


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="nba"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


class StrictJSONError(ValueError):
    """A body that Python's json would read but that is not strict JSON."""


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise StrictJSONError(f"the key {key!r} appears twice in one object")
        seen[key] = value
    return seen


def _no_constant(name: str) -> Any:
    raise StrictJSONError(f"{name} is not a JSON number")


def parse_strict_json(body: bytes) -> Any:
    """The body as JSON, strictly: UTF-8 (a leading byte-order mark dropped), each key once per
    object, no NaN or Infinity. Raises ValueError with a message that says what is wrong."""
    if body.startswith(UTF8_BOM):
        body = body[len(UTF8_BOM) :]
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StrictJSONError(
            f"the body is not UTF-8 (byte {exc.start} is 0x{body[exc.start]:02x}): send JSON "
            "in UTF-8"
        ) from None
    try:
        return json.loads(text, object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise StrictJSONError(
            f"the body is not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        raise StrictJSONError("the body is nested too deeply to parse") from None


def field_path(loc: list[Any]) -> str:
    """pydantic's error location as one path: ["events", 0, "ts"] -> "events[0].ts"."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def plain_error(body: dict[str, Any]) -> dict[str, Any]:
    """BentoML's validation answer `{"error", "detail": [pydantic errors]}` in our shape: the
    first field and what was expected, every error in one `detail` string."""
    errors = [e for e in body["detail"] if isinstance(e, dict)]
    # an error without a location is about the body
    said = [
        f"{field_path(e.get('loc') or []) or 'body'}: {e.get('msg', 'invalid')}" for e in errors
    ]
    first = field_path(errors[0].get("loc") or []) if errors else "body"
    more = f" (and {len(said) - 1} more)" if len(said) > 1 else ""
    return {
        "error": (said[0] if said else body.get("error", "invalid request")) + more,
        "field": first or "body",
        "detail": "; ".join(said),
    }


def plain_validation_errors(send: Send) -> Send:
    """`send` with a 400 whose `detail` is a list of pydantic errors rewritten by plain_error."""
    held: Message | None = None
    chunks = bytearray()

    async def wrapped(message: Message) -> None:
        nonlocal held
        if message["type"] == "http.response.start" and message.get("status") == 400:
            held = message
            return
        if held is None:
            await send(message)
            return
        chunks.extend(message.get("body", b""))
        if message.get("more_body"):
            return
        payload = bytes(chunks)
        try:
            parsed = json.loads(payload)
            if isinstance(parsed, dict) and isinstance(parsed.get("detail"), list):
                payload = json.dumps(plain_error(parsed)).encode()
        except (UnicodeDecodeError, json.JSONDecodeError):
            pass
        headers = [(k, v) for k, v in held.get("headers") or [] if k != b"content-length"]
        headers.append((b"content-length", b"%d" % len(payload)))
        await send({**held, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    return wrapped


def json_not_found(send: Send, path: str) -> Send:
    """`send` with the framework's plain-text 404 and 405 (no such route, e.g. a path that
    climbs out with `..`) answered as JSON naming the path, like every other refusal."""
    replaced = False

    async def wrapped(message: Message) -> None:
        nonlocal replaced
        if message["type"] == "http.response.start" and message.get("status") in (404, 405):
            kind = dict(message.get("headers") or []).get(b"content-type", b"")
            if not kind.startswith(b"application/json"):
                replaced = True
                what = "no such endpoint" if message["status"] == 404 else "method not allowed"
                shown = path if len(path) <= 200 else f"{path[:200]}..."
                await send_json(
                    send, message["status"], {"error": f"{what}: {shown}", "field": "path"}
                )
                return
        if replaced:
            return  # the framework's own body of the replaced answer
        await send(message)

    return wrapped


class HttpGuard:
    """Token on `protected` paths, body limit and JSON check on every POST."""

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        protected: tuple[str, ...],
        max_body_bytes: int,
        disabled: tuple[str, ...] = (),
    ) -> None:
        self.app = app
        self.token = token.encode() if token else None
        self.protected = protected
        self.max_body_bytes = max_body_bytes
        self.disabled = disabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in self.disabled:
            await send_json(
                send, 403, {"error": f"{path} is disabled on this service (service.writes_enabled)"}
            )
            return
        if path in self.protected and not self._authorised(scope):
            error = "missing or wrong bearer token"
            if _query_token(scope):
                error += (
                    " (a token in the query string is not accepted, it would end up in logs: "
                    "send the header Authorization: Bearer <token>)"
                )
            await send_json(send, 401, {"error": error, "field": "Authorization"})
            return
        if scope.get("method") != "POST":
            await self.app(scope, receive, json_not_found(send, path))
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if len(body) > self.max_body_bytes:
                await self._too_large(send)
                return
            if not message.get("more_body"):
                break
        try:
            parsed = parse_strict_json(bytes(body)) if body else None
        except StrictJSONError as exc:
            await send_json(send, 400, {"error": str(exc), "field": "body"})
            return
        if body.startswith(UTF8_BOM):  # read past above; BentoML's parser would not
            del body[: len(UTF8_BOM)]
        if not isinstance(parsed, dict):
            await send_json(send, 400, {"error": "the body must be a JSON object", "field": "body"})
            return
        # the body is JSON whatever the client declared (curl -d says form-urlencoded)
        scope = dict(scope)
        scope["headers"] = [(k, v) for k, v in scope.get("headers") or [] if k != b"content-type"]
        scope["headers"].append((b"content-type", b"application/json"))
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()

        await self.app(scope, replay, plain_validation_errors(json_not_found(send, path)))

    def _authorised(self, scope: Scope) -> bool:
        """The Authorization header's bearer token matches; never a token in the URL."""
        if self.token is None:
            return False
        for name, value in scope.get("headers") or []:
            if name == b"authorization":
                scheme, _, given = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(
                    given.strip(), self.token
                )
        return False

    async def _too_large(self, send: Send) -> None:
        await send_json(
            send,
            413,
            {
                "error": f"request body over {self.max_body_bytes:,} bytes (service.max_body_bytes)",
                "field": "body",
            },
        )


def _query_token(scope: Scope) -> bool:
    """Whether the query string carries something named like a token."""
    query = (scope.get("query_string") or b"").lower()
    names = {part.partition(b"=")[0] for part in query.split(b"&")}
    return any(name in names for name in QUERY_TOKEN_NAMES)
