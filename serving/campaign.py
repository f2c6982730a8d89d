"""The campaign file: what marketing plans for one run, typed and validated like the configuration.

A campaign names the actions on offer (a subset of the catalogue), how many contacts each channel
can take (`capacities`), how many of each action may go out (`caps`), the total `budget`, the
randomized holdout per action and the objective. Every error names its field, e.g.
`capacities.call_centre: Input should be greater than or equal to 0` or
`actions.2: unknown action 'sms_flsh'`.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from importlib import resources
from pathlib import Path
from typing import Literal

import pandas as pd
import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from features.config import DataConfig, Strict, load_yaml_text
from serving.catalogue import NOTHING, Catalogue

EXAMPLE_CAMPAIGN = "campaigns/example.yaml"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.]*$")


class Holdout(Strict):
    """The randomized control: a share of each action's assigned customers is not contacted."""

    fraction: float = Field(
        default=0.10, ge=0, lt=1, description="Share of each action's assignees held out."
    )
    actions: dict[str, float] = Field(
        default_factory=dict, description="Per-action fractions overriding `fraction`."
    )
    seed: int = Field(default=0, description="Seed of the draw: the same seed, the same holdouts.")

    @field_validator("actions")
    @classmethod
    def _fractions(cls, v: dict[str, float]) -> dict[str, float]:
        for action, f in v.items():
            if not 0 <= f < 1:
                raise ValueError(f"holdout of {action!r} must be in [0, 1), got {f}")
        return v

    def of(self, action: str) -> float:
        return self.actions.get(action, self.fraction)


class Campaign(Strict):
    """One campaign run: offers, limits, holdouts and the objective."""

    name: str = Field(
        description="Identifier (letters, digits, `_` and `.`): names the decision ids and the "
        "results."
    )
    decision_date: datetime | date | None = Field(
        default=None,
        description="Decision time (a date is its midnight, UTC); features are as of then. "
        "None: just after the last event in the store.",
    )
    actions: list[str] = Field(
        description="Actions on offer, ids of the catalogue; each customer gets at most one."
    )
    capacities: dict[str, int] = Field(
        default_factory=dict,
        description="Most contacts per channel, e.g. call_centre: 5000 (channels not named are "
        "unlimited; the contact policy's caps still hold per customer).",
    )
    caps: dict[str, int] = Field(
        default_factory=dict, description="Most customers per action, e.g. dm_winback: 3000."
    )
    budget: float | None = Field(
        default=None, description="Most money spent on contacts in total; None: no budget."
    )
    holdout: Holdout = Field(default_factory=Holdout)
    objective: Literal["profit", "responses"] = Field(
        default="profit",
        description="`profit`: expected incremental profit (the policy's score); `responses`: "
        "expected responses (lever x P(response)), kept for comparison.",
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"{v!r}: use letters, digits, `_` and `.` only (no spaces or `-`)")
        return v

    @field_validator("actions")
    @classmethod
    def _known_actions(cls, v: list[str], info: ValidationInfo) -> list[str]:
        if not v:
            raise ValueError("the campaign offers no action: name at least one")
        known = (info.context or {}).get("actions")
        for a in v:
            if a == NOTHING:
                raise ValueError(f"`{NOTHING}` is always on offer; do not list it")
            if known is not None and a not in known:
                raise ValueError(f"unknown action {a!r} (the catalogue has {sorted(known)})")
        if len(set(v)) < len(v):
            raise ValueError(f"an action is listed twice: {sorted(a for a in v if v.count(a) > 1)}")
        return v

    @field_validator("capacities")
    @classmethod
    def _channels(cls, v: dict[str, int], info: ValidationInfo) -> dict[str, int]:
        channels = (info.context or {}).get("channels")
        for channel, n in v.items():
            if n < 0:
                raise ValueError(f"capacity of {channel!r} must be >= 0, got {n}")
            if channels is not None and channel not in channels:
                raise ValueError(
                    f"unknown channel {channel!r} (outbound channels: {sorted(channels)})"
                )
        return v

    @field_validator("caps")
    @classmethod
    def _caps(cls, v: dict[str, int]) -> dict[str, int]:
        for action, n in v.items():
            if n < 0:
                raise ValueError(f"cap of {action!r} must be >= 0, got {n}")
        return v

    @field_validator("budget")
    @classmethod
    def _budget(cls, v: float | None) -> float | None:
        if v is not None and not (v >= 0 and v != float("inf")):
            raise ValueError(f"the budget must be a finite number >= 0, got {v}")
        return v

    @model_validator(mode="after")
    def _actions_named_are_offered(self) -> Campaign:
        for where, names in (("caps", self.caps), ("holdout.actions", self.holdout.actions)):
            stray = sorted(set(names) - set(self.actions))
            if stray:
                raise ValueError(f"{where} names actions not on offer: {stray}")
        return self

    def decision_time(self) -> pd.Timestamp | None:
        """The decision time as a UTC timestamp (None: just after the last event)."""
        if self.decision_date is None:
            return None
        t = pd.Timestamp(self.decision_date)
        return t.tz_localize(UTC) if t.tzinfo is None else t.tz_convert(UTC)

    def offered(self, catalogue: Catalogue) -> Catalogue:
        """The catalogue restricted to the actions on offer, in the campaign's order."""
        by_id = {a.id: a for a in catalogue.actions}
        return Catalogue(actions=[by_id[a] for a in self.actions])


def parse_campaign(
    raw: object, catalogue: Catalogue | None = None, data: DataConfig | None = None, source=""
) -> Campaign:
    """A campaign from parsed YAML, checked against the catalogue and the channels; a
    ValueError whose lines name each bad field."""
    context = {}
    if catalogue is not None:
        context["actions"] = set(catalogue.ids)
    if data is not None:
        context["channels"] = set(data.outbound_channels)
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: a campaign is a mapping of fields, got {type(raw).__name__}")
    try:
        return Campaign.model_validate(raw, context=context)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "campaign"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {loc}: {msg}")
        raise ValueError(f"{source}: invalid campaign:\n" + "\n".join(lines)) from None


def load_campaign(
    path: Path | None, catalogue: Catalogue | None = None, data: DataConfig | None = None
) -> tuple[Campaign, str]:
    """The campaign at `path` (None: the shipped example) and its text (for the version)."""
    if path is None:
        text = resources.files("serving").joinpath(EXAMPLE_CAMPAIGN).read_text()
        source = f"serving/{EXAMPLE_CAMPAIGN}"
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: not valid YAML: {exc}") from exc
    else:
        if not Path(path).exists():
            raise FileNotFoundError(f"campaign file {path} does not exist")
        raw = load_yaml_text(Path(path))  # UTF-8, each key once: one line naming the file
        text = Path(path).read_text("utf-8-sig")
        source = str(path)
    return parse_campaign(raw, catalogue, data, source), text
