"""The service's door: bearer token, body size and well-formed JSON, checked before BentoML.

A pure ASGI middleware, so a refused request costs no parsing: a missing or wrong token is a
401, a body over the limit a 413 (read no further), a body that is not JSON a 400 naming where
it breaks. Every refusal is a JSON body `{"error": ..., "field": ...}`, never a stack trace.
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


async def send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    payload = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(payload))]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="nba"'))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


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
            await send_json(
                send,
                401,
                {"error": "missing or wrong bearer token", "field": "Authorization"},
            )
            return
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
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
            parsed = json.loads(body) if body else None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            where = f" at line {exc.lineno} column {exc.colno}" if hasattr(exc, "lineno") else ""
            await send_json(send, 400, {"error": f"the body is not valid JSON{where}: {exc}"})
            return
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

        await self.app(scope, replay, send)

    def _authorised(self, scope: Scope) -> bool:
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
