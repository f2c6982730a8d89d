"""Typed configuration of the data contract: channels, event types, identity and validation.

Every default is documented here; a YAML file overrides any part of it. The file has one
section per package (`data`, `features`, `training`, `policy`); this module owns `data`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

T = TypeVar("T", bound=BaseModel)


class Strict(BaseModel):
    """Base for configuration sections: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ChannelConfig(Strict):
    """One channel the company talks to customers through."""

    name: str = Field(description="Channel name as it appears in the events' `channel` column.")
    outbound: bool = Field(
        default=False, description="The company can start a contact on it (a `sent` event)."
    )
    response: str | None = Field(
        default=None,
        description="Event type on this channel that counts as a response to a contact on it.",
    )
    realtime: bool = Field(
        default=False, description="Contacts arrive at once (quiet hours apply to them)."
    )
    identifier: str = Field(
        description="Identifier type the channel's own system keys its events by, e.g. `email`."
    )


def _default_channels() -> list[ChannelConfig]:
    return [
        ChannelConfig(name="email", outbound=True, response="click", identifier="email"),
        ChannelConfig(
            name="sms", outbound=True, response="click", realtime=True, identifier="phone"
        ),
        ChannelConfig(
            name="push", outbound=True, response="open", realtime=True, identifier="device"
        ),
        ChannelConfig(name="direct_mail", outbound=True, response="visit", identifier="crm"),
        ChannelConfig(name="call_centre", outbound=True, response="call", identifier="phone"),
        ChannelConfig(name="web", identifier="device"),
        ChannelConfig(name="app", identifier="device"),
        ChannelConfig(name="store", identifier="loyalty"),
    ]


class EventTypesConfig(Strict):
    """The event types the contract accepts, by role. A deployment can add its own."""

    outbound: list[str] = Field(default=["sent", "holdout"], description="Contacts and controls.")
    engagement: list[str] = Field(
        default=["delivered", "open", "click", "visit", "view", "call"],
        description="Customer engagement with a channel.",
    )
    purchase: list[str] = Field(default=["purchase"], description="Events that carry revenue.")
    negative: list[str] = Field(default=["unsubscribe", "complaint"], description="Opt-outs.")
    consent_granted: str = Field(default="consent_granted")
    consent_revoked: str = Field(default="consent_revoked")
    feedback: list[str] = Field(
        default=["offer_accepted", "offer_declined"],
        description="The answer to an offer made in person (an agent records it): kept in the "
        "history and the 360 view; no feature counts it unless the feature config says so.",
    )

    @property
    def all(self) -> list[str]:
        return [
            *self.outbound,
            *self.engagement,
            *self.purchase,
            *self.negative,
            self.consent_granted,
            self.consent_revoked,
            *self.feedback,
        ]


class IdentityConfig(Strict):
    """Identity resolution: which identifier types exist and when an identifier is 'shared'."""

    identifier_types: list[str] = Field(
        default=["crm", "email", "phone", "loyalty", "device", "card"],
        description="Allowed `type` prefixes of `type:value` keys.",
    )
    max_links_per_identifier: int = Field(
        default=12,
        ge=1,
        description=(
            "An identifier linked to more distinct other identifiers than this is treated as "
            "shared (a shop's guest card, a family tablet): its links are cut so it cannot "
            "merge different people. It keeps its own events."
        ),
    )
    max_links_by_type: dict[str, int] = Field(
        default={"loyalty": 8, "card": 4},
        description="Per identifier type overrides of `max_links_per_identifier`.",
    )

    personal_types: list[str] = Field(
        default=["email", "phone", "device", "card"],
        description="Identifier types that are personal data: shown masked (`email:a3f…`) "
        "wherever people look at a customer.",
    )

    def limit_for(self, identifier_type: str) -> int:
        return self.max_links_by_type.get(identifier_type, self.max_links_per_identifier)


class ValidationConfig(Strict):
    future_tolerance_seconds: int = Field(
        default=300,
        ge=0,
        description="Events stamped later than now + this are rejected as `future_timestamp`.",
    )


class DataConfig(Strict):
    """The `data` section: what a contract-conforming data directory may contain."""

    channels: list[ChannelConfig] = Field(default_factory=_default_channels)
    event_types: EventTypesConfig = Field(default_factory=EventTypesConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"data.channels: channel names must be unique, got {names}")
        known = set(self.event_types.all)
        for c in self.channels:
            if c.response is not None and c.response not in known:
                raise ValueError(
                    f"data.channels[{c.name}].response: '{c.response}' is not a configured event "
                    f"type (known: {sorted(known)})"
                )
            if c.identifier not in self.identity.identifier_types:
                raise ValueError(
                    f"data.channels[{c.name}].identifier: '{c.identifier}' is not in "
                    f"data.identity.identifier_types {self.identity.identifier_types}"
                )
        return self

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def outbound_channels(self) -> list[str]:
        return [c.name for c in self.channels if c.outbound]

    def channel(self, name: str) -> ChannelConfig:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(f"unknown channel '{name}' (configured: {self.channel_names})")


def read_yaml(path: Path | None) -> dict[str, Any]:
    """The raw configuration mapping of a YAML file; empty when no file is given."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"configuration file {path} does not exist")
    loaded = yaml.safe_load(path.read_text()) or {}
    if not isinstance(loaded, dict):
        raise ValueError(f"{path}: expected a mapping of sections at the top level")
    return loaded


def load_section(path: Path | None, section: str, model: type[T]) -> T:
    """One section of the configuration file, validated; the documented defaults if absent."""
    raw = read_yaml(path).get(section) or {}
    try:
        return model.model_validate(raw)
    except Exception as exc:  # pydantic's message names the field; add the file and section
        raise ValueError(f"{path}: invalid `{section}` section:\n{exc}") from exc


def load_data_config(path: Path | None = None) -> DataConfig:
    return load_section(path, "data", DataConfig)


class OnlineStoreConfig(Strict):
    """The `online_store` section: where serving state lives (the features each decision reads,
    identities, applied event ids and the log of events received online)."""

    backend: Literal["sqlite", "redis"] = Field(
        default="sqlite",
        description="`sqlite`: one file in DIR/store/online.sqlite, for the processes of one "
        "machine (the embedded default). `redis`: one Redis shared by every service replica, so "
        "an event accepted by one is in the next decision of all and contact caps hold across "
        "them.",
    )
    url: str = Field(
        default="redis://127.0.0.1:6379/0",
        description="Redis URL (redis://[user:password@]host:port/db, rediss:// for TLS); the "
        "environment variable NBA_REDIS_URL overrides it.",
    )
    namespace: str = Field(
        default="nba",
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Prefix of every key this store writes, so that several data directories or "
        "environments can share one Redis.",
    )
    require_aof: bool = Field(
        default=True,
        description="Refuse a Redis without its append-only file (`appendonly yes`): without it "
        "a restart of Redis loses acknowledged events. With `appendfsync always` an "
        "acknowledged batch is on disk before the answer; with `everysec` it survives a crash of "
        "Redis but up to a second can be lost with the machine.",
    )


def load_online_store_config(path: Path | None = None) -> OnlineStoreConfig:
    return load_section(path, "online_store", OnlineStoreConfig)
