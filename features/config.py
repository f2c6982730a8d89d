"""Typed configuration of the data contract: channels, event types, identity and validation.

Every default is documented here; a YAML file overrides any part of it. The file has one
section per package (`data`, `features`, `training`, `policy`); this module owns `data`.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from features.errors import UserError

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
    earliest_timestamp: datetime = Field(
        default=datetime(2000, 1, 1, tzinfo=UTC),
        description="Events stamped before this (UTC if naive) are rejected as "
        "`ancient_timestamp`: 1970-01-01 is the zero of a clock that was never set, and a "
        "year 0 or BC date a parsing accident; either would stretch the history by decades.",
    )
    future_tolerance_seconds: int = Field(
        default=300,
        ge=0,
        description="Events stamped later than now + this are rejected as `future_timestamp`.",
    )
    min_accepted_share: float = Field(
        default=0.5,
        ge=0,
        le=1,
        description="`nba ingest` stops with exit code 2, leaving no current event store, when "
        "fewer than this share of the received events is accepted: most rows rejected "
        "usually means the configuration does not describe the data (an identifier type, a "
        "channel, an event type), not that the rows are bad. Nothing accepted always stops it; "
        "0 stops only then.",
    )


def merge_channels(given: Any) -> Any:
    """`data.channels` as a mapping (name -> settings) is merged over the default channels: a
    known name changes only the settings given (`call_centre: {response: purchase}`), a new
    name adds a channel (its `identifier` is then required), `null` removes one. A list is the
    whole set, as before."""
    if not isinstance(given, dict):
        return given
    merged = {c.name: c.model_dump() for c in _default_channels()}
    for name, settings in given.items():
        if settings is None:
            merged.pop(str(name), None)
            continue
        if not isinstance(settings, dict):
            raise ValueError(
                f"data.channels.{name}: expected the channel's settings as a mapping "
                f"(outbound, response, realtime, identifier) or null to remove it, got {settings!r}"
            )
        merged[str(name)] = {**merged.get(str(name), {}), **settings, "name": str(name)}
    return list(merged.values())


class DataConfig(Strict):
    """The `data` section: what a contract-conforming data directory may contain."""

    channels: list[ChannelConfig] = Field(
        default_factory=_default_channels,
        description="The channels: a list is the whole set; a mapping of name -> settings "
        "changes only what it names and keeps the other default channels (`merge_channels`).",
    )
    event_types: EventTypesConfig = Field(default_factory=EventTypesConfig)
    identity: IdentityConfig = Field(default_factory=IdentityConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)

    @model_validator(mode="before")
    @classmethod
    def _merge_channels(cls, raw: Any) -> Any:
        if isinstance(raw, dict) and isinstance(raw.get("channels"), dict):
            return {**raw, "channels": merge_channels(raw["channels"])}
        return raw

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        names = [c.name for c in self.channels]
        if len(set(names)) != len(names):
            raise ValueError(f"data.channels: channel names must be unique, got {names}")
        known = set(self.event_types.all)
        for c in self.channels:
            if c.response is not None and c.response not in known:
                raise ValueError(
                    f"data.channels.{c.name}.response: '{c.response}' is not a configured event "
                    f"type (known: {', '.join(sorted(known))}; a new one goes in "
                    "data.event_types)"
                )
            if c.identifier not in self.identity.identifier_types:
                raise ValueError(
                    f"data.channels.{c.name}.identifier: unknown identifier type "
                    f"'{c.identifier}': add it to data.identity.identifier_types (now "
                    f"{', '.join(self.identity.identifier_types)})"
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


class ConfigError(UserError):
    """The configuration file is missing, unreadable or names settings wrongly."""


# the configuration file's sections; any other top-level key is a mistake (a typo such as
# `featurs:` would otherwise leave every setting of the section silently at its default)
SECTIONS = ("data", "features", "training", "policy", "online_store", "service", "maturity")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (it keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} appears twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml_text(path: Path) -> Any:
    """The YAML document of a file, strictly: UTF-8 (a byte-order mark allowed), each key once
    per mapping. A ConfigError names the file and what is wrong, in one line."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path} is a directory, not a YAML file")
    if not path.is_file():  # a device or a pipe: /dev/zero would be read forever
        raise ConfigError(f"{path} is not a regular file")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start} is 0x{exc.object[exc.start]:02x}): save "
            "it as UTF-8"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        said = " ".join(str(exc).replace('in "<unicode string>", ', "").split())
        raise ConfigError(f"{path}: not valid YAML: {said}") from None


def read_yaml(path: Path | None) -> dict[str, Any]:
    """The raw configuration mapping of a YAML file; empty when no file is given."""
    if path is None:
        return {}
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"configuration file {path} does not exist")
    loaded = load_yaml_text(path) or {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    unknown = [str(k) for k in loaded if k not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"{path}: unknown section(s) {', '.join(unknown)} (known: {', '.join(SECTIONS)})"
        )
    return loaded


def _model_at(model: type[BaseModel], loc: tuple) -> type[BaseModel] | None:
    """The configuration model that the path `loc` (field names and list indexes) ends in."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(current, "model_fields", None)
        if fields is None or part not in fields:
            return None
        annotation = fields[part].annotation
        candidates = [annotation, *get_args(annotation)]
        for a in list(candidates):
            candidates += list(get_args(a))
        current = next(
            (c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None
        )
        if current is None:
            return None
    return current


def _where(section: str, loc: tuple, raw: Any) -> str:
    """A setting's path as the file spells it: list items of channels by their name."""
    out, node = [section], raw
    for part in loc:
        label = str(part)
        if isinstance(part, int) and isinstance(node, list) and part < len(node):
            node = node[part]
            name = node.get("name") if isinstance(node, dict) else None
            out.append(str(name) if name else str(part))
            continue
        out.append(label)
        node = node.get(part) if isinstance(node, dict) else None
    return ".".join(out)


def config_problems(exc: ValidationError, section: str, model: type[BaseModel], raw: Any) -> str:
    """pydantic's errors in the project's words: which setting, what is wrong, what is known."""
    problems = []
    if isinstance(raw, dict) and isinstance(raw.get("channels"), dict):
        # channels named as the merged list, which the errors' positions index (a failed
        # merge is itself the error reported)
        with contextlib.suppress(ValueError):
            raw = {**raw, "channels": merge_channels(raw["channels"])}
    for err in exc.errors(include_url=False):
        loc, kind = tuple(err["loc"]), err["type"]
        where = _where(section, loc, raw)
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            known = f" (known: {', '.join(parent.model_fields)})" if parent else ""
            problems.append(f"{where}: unknown setting{known}")
        elif kind == "missing":
            parent = _model_at(model, loc[:-1])
            info = parent.model_fields.get(str(loc[-1])) if parent else None
            what = f" ({info.description.rstrip('.')})" if info and info.description else ""
            problems.append(f"{where}: required{what}")
        elif kind == "value_error":
            message = str(err.get("ctx", {}).get("error", err["msg"]))
            problems.append(message if message.startswith(f"{section}.") else f"{where}: {message}")
        else:
            message = err["msg"][:1].lower() + err["msg"][1:]
            problems.append(f"{where}: {message}, got {err.get('input')!r}")
    return "; ".join(problems)


def load_section(path: Path | None, section: str, model: type[T]) -> T:
    """One section of the configuration file, validated; the documented defaults if absent.
    A bad setting is a ConfigError naming the file and the setting, in one line."""
    raw = read_yaml(path).get(section) or {}
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {config_problems(exc, section, model, raw)}") from None
    except ValueError as exc:  # merge_channels' own message
        raise ConfigError(f"{path}: {' '.join(str(exc).split())}") from None


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
