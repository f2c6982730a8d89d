"""A BentoML service that decides nothing: the framework's floor under POST /recommend.

    NBA_NOOP_RESPONSE=answer.json bentoml serve benchmarks.serving_noop:NoOp --port 3001

The same worker settings as `serving/service.py` (the configured worker count, the traffic
timeout, no access log) and the same request fields, validated the same way; the answer is a
constant JSON, read once at start-up from the file named by NBA_NOOP_RESPONSE (benchmarks/serving.py
writes a real recommendation there, so the bytes on the wire are those of a real answer).
Without it, a constant of about the size of one (2 KB).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import bentoml
from pydantic import Field

from serving.api_models import Context
from serving.config import load_service_config

RESPONSE_VARIABLE = "NBA_NOOP_RESPONSE"


def constant_answer() -> dict[str, Any]:
    """The answer every request gets: the JSON file of NBA_NOOP_RESPONSE, or a 2 KB stand-in."""
    path = os.environ.get(RESPONSE_VARIABLE)
    if path:
        return json.loads(Path(path).read_text())
    return {"action_id": "do_nothing", "actions": [], "reasons": ["x" * 2000]}


@bentoml.service(
    name="nba-noop",
    workers=load_service_config(None).workers,
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},
)
class NoOp:
    """POST /recommend answering a constant: what BentoML costs without any decision."""

    def __init__(self) -> None:
        self.answer = constant_answer()

    @bentoml.api(route="/recommend")
    def recommend(
        self,
        customer: Annotated[str, Field(min_length=1, max_length=500)],
        channel: Annotated[str, Field(min_length=1, max_length=100)],
        context: Context | None = None,
        k: Annotated[int, Field(ge=1, le=20)] = 3,
        explain: bool = True,
    ) -> dict[str, Any]:
        """The constant answer."""
        return self.answer
