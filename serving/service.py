"""The real-time BentoML service: POST /recommend, /events and /score over the serving runtime.

Started by `nba serve` (or `bentoml serve serving.service:NextBestAction` with NBA_DATA and
optionally NBA_CONFIG set), or from a built Bento (`bentoml serve nba:<version>`), which serves
the bundle it carries (`serving/bento.py`) instead of the registry's champion. The bundle and the
online store are opened once per worker in `__init__`; each endpoint is a typed `@bentoml.api`
method, so BentoML validates the request against the pydantic models of `serving/api_models.py`
before the method runs. The guard in front (`serving/http_guard.py`) checks the bearer token, the body size and the JSON.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import bentoml
from fastapi import FastAPI, Query
from pydantic import Field
from starlette.responses import FileResponse, JSONResponse

from features.ingest.history import EventHistory
from serving.api_models import (
    Context,
    Customer360,
    EventIn,
    EventsResponse,
    ForgetResponse,
    RecommendResponse,
    ScoreResponse,
)
from serving.bento import bento_bundle
from serving.config import load_service_config
from serving.customer_view import CustomerViews
from serving.http_guard import HttpGuard
from serving.runtime import TOKEN_VARIABLE, RequestError, ServingRuntime

DATA_VARIABLE = "NBA_DATA"
CONFIG_VARIABLE = "NBA_CONFIG"
WRITE_PATHS = ("/events", "/forget")
READ_PATHS = ("/recommend", "/score", "/customers")
AGENT_PAGE = Path(__file__).with_name("agent_page") / "index.html"


def _config_path() -> Path | None:
    value = os.environ.get(CONFIG_VARIABLE)
    return Path(value) if value else None


# The decorator needs the worker count and the guard's settings when the module is imported.
_SERVICE = load_service_config(_config_path())
_MAX_EVENTS = _SERVICE.max_events_per_call
_MAX_SCORE = _SERVICE.max_customers_per_score


def _refusal(exc: RequestError) -> JSONResponse:
    return JSONResponse({"error": str(exc), "field": exc.field}, status_code=exc.status)


# The 360 view (GET /customers/{key}, POST /customers) and the agent's page (GET /agent/) are
# FastAPI routes mounted on the service: plain GETs and a path parameter, which @bentoml.api
# endpoints (POST with a JSON body) do not offer.
customers_app = FastAPI(title="Customer 360")
agent_app = FastAPI(title="Agent page")


@bentoml.service(
    name="nba",
    workers=_SERVICE.workers,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
)
@bentoml.asgi_app(customers_app, path="/customers")
@bentoml.asgi_app(agent_app, path="/agent")
class NextBestAction:
    """Next best action for any customer, on any channel, in real time."""

    def __init__(self) -> None:
        data = os.environ.get(DATA_VARIABLE)
        if not data:
            raise RuntimeError(f"set {DATA_VARIABLE} to the data directory to serve")
        # started from a built Bento: its packed bundle; else the champion in the MLflow registry
        packed = bento_bundle(NextBestAction.bento)
        self.runtime = ServingRuntime.open(Path(data), _config_path(), packed)
        history = EventHistory(self.runtime.data_dir, self.runtime.store)
        self.views = CustomerViews(self.runtime, history)

    @customers_app.get("/{key:path}", response_model=Customer360)
    def customer_360(
        self, key: str, timeline: int = Query(default=20, ge=1, le=200)
    ) -> Customer360 | JSONResponse:
        """The 360 view of the customer known by `key` (any identifier or the customer_id)."""
        try:
            return self.views.view(key, timeline)
        except RequestError as exc:
            return _refusal(exc)

    @bentoml.api(route="/customers")
    def customers(
        self,
        customer: Annotated[
            str,
            Field(min_length=1, max_length=500, description="customer_id or `type:value`."),
        ],
        timeline: Annotated[
            int, Field(ge=1, le=200, description="Most recent events to show.")
        ] = 20,
    ) -> Customer360:
        """The 360 view, the key in the body (keys awkward in a path)."""
        try:
            return self.views.view(customer, timeline)
        except RequestError as exc:
            return _refusal(exc)

    @agent_app.get("/")
    def agent_page(self) -> FileResponse:
        """The call-centre agent's page: search, 360 view, recommendation, outcome buttons."""
        return FileResponse(AGENT_PAGE, media_type="text/html")

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        customer: Annotated[
            str,
            Field(
                min_length=1,
                max_length=500,
                description="A customer_id or any identifier `type:value` (email:..., loyalty:...).",
            ),
        ],
        channel: Annotated[
            str, Field(min_length=1, max_length=100, description="The channel asking.")
        ],
        context: Context | None = None,
        k: Annotated[int, Field(ge=1, le=20, description="Ranked actions to return.")] = 3,
        explain: Annotated[bool, Field(description="Reasons in plain words.")] = True,
    ) -> RecommendResponse:
        """The ranked allowed actions for the customer now, or do nothing."""
        try:
            return self.runtime.recommend(
                customer,
                channel,
                k=k,
                explain=explain,
                context=None if context is None else context.model_dump(exclude_none=True),
            )
        except RequestError as exc:
            return _refusal(exc)

    @bentoml.api(route="/events")
    def events(
        self,
        events: Annotated[
            list[EventIn],
            Field(min_length=1, max_length=_MAX_EVENTS, description="Contract events."),
        ],
    ) -> EventsResponse:
        """Accept a batch of events: each accepted one is durable and applied online before
        the answer; each rejected one is named with its reason. Re-sending changes nothing."""
        return self.runtime.events(events)

    @bentoml.api(route="/forget")
    def forget(
        self,
        identifier: Annotated[
            str,
            Field(
                min_length=1,
                max_length=500,
                description="Any identifier of the person (`type:value`, clear or hashed) or "
                "their customer_id.",
            ),
        ],
    ) -> ForgetResponse:
        """Erase the person and all their linked identifiers from every store (the right to
        erasure); later events of theirs are rejected as `erased` until they consent again."""
        try:
            report = self.runtime.forget(identifier)
        except ValueError as exc:  # UserError: nobody known by that key, or a clear one
            return _refusal(RequestError("identifier", str(exc), status=404))
        return ForgetResponse(
            erased_at=report.at,
            identifiers=report.identifiers,
            customers=report.customers,
            rows_removed=sum(report.rows_removed.values()),
            online_events=report.online_events,
            input_examples=report.input_examples,
        )

    @bentoml.api(route="/score")
    def score(
        self,
        customers: Annotated[
            list[Annotated[str, Field(min_length=1, max_length=500)]],
            Field(min_length=1, max_length=_MAX_SCORE, description="customer_ids or keys."),
        ],
        explain: Annotated[bool, Field(description="Reasons in plain words.")] = True,
    ) -> ScoreResponse:
        """The batch path's decisions for up to max_customers_per_score customers."""
        try:
            return self.runtime.score(customers, explain=explain)
        except RequestError as exc:
            return _refusal(exc)


NextBestAction.add_asgi_middleware(
    HttpGuard,
    token=os.environ.get(TOKEN_VARIABLE) or None,
    protected=WRITE_PATHS + (READ_PATHS if _SERVICE.protect_reads else ()),
    max_body_bytes=_SERVICE.max_body_bytes,
    disabled=() if _SERVICE.writes_enabled else WRITE_PATHS,
)
