"""The `policy` section of the configuration file: contact rules, scoring, exploration.

Every default is documented here; a YAML file overrides any part of it. The action catalogue is a
file of its own (`serving/catalogue.yaml` by default, `policy.catalogue` to point elsewhere).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from features.config import Strict, load_section


class Cap(Strict):
    """At most `max_contacts` contacts in the trailing `window_days` (on one channel, or all)."""

    channel: str | None = Field(default=None, description="Channel, or None for all channels.")
    max_contacts: int = Field(ge=0)
    window_days: int = Field(
        gt=0, description="Must be one of `features.fatigue_windows_days` (exact counts)."
    )


class QuietHours(Strict):
    """Hours of the customer's day when real-time channels (ChannelConfig.realtime) stay silent."""

    start_hour: int = Field(default=21, ge=0, le=23, description="First quiet hour.")
    end_hour: int = Field(default=8, ge=0, le=23, description="First hour that is not quiet.")
    utc_offset_hours: float = Field(
        default=0.0, description="Offset of the customers' local time from UTC."
    )

    def is_quiet(self, local_hour: np.ndarray) -> np.ndarray:
        """Per (fractional) local hour: inside the quiet span."""
        h = np.floor(np.asarray(local_hour, dtype=float)) % 24
        if self.start_hour <= self.end_hour:
            return (h >= self.start_hour) & (h < self.end_hour)
        return (h >= self.start_hour) | (h < self.end_hour)  # the quiet span crosses midnight


class ContactPolicy(Strict):
    """Hard rules no decision may break, whatever its score."""

    caps: list[Cap] = Field(
        default=[
            Cap(channel="email", max_contacts=2, window_days=7),
            Cap(channel="sms", max_contacts=1, window_days=7),
            Cap(channel="push", max_contacts=3, window_days=7),
            Cap(channel="direct_mail", max_contacts=1, window_days=30),
            Cap(channel="call_centre", max_contacts=1, window_days=30),
            Cap(channel=None, max_contacts=4, window_days=7),
        ],
        description="Contact caps per channel and overall; a decision counts as one more contact.",
    )
    cooldown_days: float = Field(
        default=14.0,
        ge=0,
        description="No contact on any channel for this many days after an unsubscribe or complaint.",
    )
    quiet_hours: QuietHours = Field(default_factory=QuietHours)
    require_consent: bool = Field(
        default=True,
        description="Only customers with consent on the channel at decision time (always on in "
        "production; off only to measure what consent costs).",
    )


class Exploration(Strict):
    """How decisions explore, and the randomized control kept for measuring uplift."""

    mode: Literal["none", "epsilon_greedy", "softmax"] = Field(
        default="none",
        description="`epsilon_greedy`: with probability epsilon a uniform pick among the eligible "
        "candidates (do-nothing included); `softmax`: pick with probability proportional to "
        "exp(score / temperature).",
    )
    epsilon: float = Field(default=0.05, ge=0, le=1)
    temperature: float = Field(
        default=1.0, gt=0, description="Softmax temperature in the score's unit (money)."
    )
    holdout_share: float = Field(
        default=0.10,
        ge=0,
        lt=1,
        description="Share of chosen contacts logged as `holdout` and not sent: the randomized "
        "control the next uplift model learns from.",
    )
    seed: int | None = Field(default=None, description="Random seed; None draws from the OS.")


class PolicyConfig(Strict):
    """The decision policy: which actions, under which rules, scored how."""

    catalogue: Path | None = Field(
        default=None, description="Action catalogue YAML; the packaged default if omitted."
    )
    scoring: Literal["uplift", "response"] = Field(
        default="uplift",
        description="`uplift`: lever x (P(buy | contact) - P(buy | no contact)) x value x margin - "
        "cost; `response`: lever x P(response) x value x margin - cost, the classic ranking, kept "
        "to compare against.",
    )
    contact_policy: ContactPolicy = Field(default_factory=ContactPolicy)
    exploration: Exploration = Field(default_factory=Exploration)
    default_send_hour: dict[str, int] = Field(
        default={"email": 9, "sms": 12, "push": 18, "direct_mail": 10, "call_centre": 11},
        description="Send hour per channel for customers whose engagement hours are unknown.",
    )
    reasons: int = Field(default=3, ge=0, le=10, description="Reasons given per decision.")

    @model_validator(mode="after")
    def _unique_caps(self) -> PolicyConfig:
        seen = set()
        for cap in self.contact_policy.caps:
            key = (cap.channel, cap.window_days)
            if key in seen:
                raise ValueError(f"policy.contact_policy.caps: two caps for {key}")
            seen.add(key)
        return self

    def fingerprint(self, catalogue_text: str) -> str:
        """Policy version: a short hash of this configuration and the catalogue it runs."""
        payload = json.dumps(self.model_dump(mode="json"), sort_keys=True) + catalogue_text
        return "policy-" + hashlib.sha256(payload.encode()).hexdigest()[:12]


def load_policy_config(path: Path | None = None) -> PolicyConfig:
    return load_section(path, "policy", PolicyConfig)


class ServiceConfig(Strict):
    """The `service` section: the real-time BentoML service (`nba serve`)."""

    port: int = Field(default=3000, ge=1, le=65535, description="HTTP port.")
    host: str = Field(default="127.0.0.1", description="Address to listen on.")
    workers: int = Field(
        default=1, ge=1, le=64, description="Worker processes (each loads the bundle once)."
    )
    writes_enabled: bool = Field(
        default=True,
        description="Accept POST /events. The service refuses to start with writes enabled and no "
        "bearer token in the environment variable NBA_API_TOKEN.",
    )
    protect_reads: bool = Field(
        default=False,
        description="Also require the bearer token on /recommend and /score (writes always "
        "need it).",
    )
    max_body_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="Larger request bodies get 413 unread."
    )
    max_events_per_call: int = Field(default=1000, ge=1, le=100_000)
    max_customers_per_score: int = Field(default=10_000, ge=1, le=1_000_000)
    reserve_contacts: bool = Field(
        default=True,
        description="A recommendation to contact counts against the contact caps at once: the "
        "service records its `sent` event (event_id = the decision id) before answering, and "
        "only if the customer's state is still the one it decided on (else it decides again). "
        "So concurrent requests, on one replica or several sharing a Redis online store, cannot "
        "together pass a cap. The channel's own `sent` report with the decision id is then a "
        "duplicate. Off: a contact counts when the channel reports it.",
    )
    durability: Literal["NORMAL", "FULL"] = Field(
        default="FULL",
        description="SQLite synchronous mode of the online store while serving (the Redis "
        "backend's durability is its appendfsync setting). FULL: an "
        "acknowledged event batch is on disk (fsync) before the answer, surviving a power loss; "
        "NORMAL: it survives a crash of the process (kill -9), not of the machine.",
    )


def load_service_config(path: Path | None = None) -> ServiceConfig:
    return load_section(path, "service", ServiceConfig)


class MaturityConfig(Strict):
    """The `maturity` section: how `nba maturity` values consents and recognition."""

    decisions_per_year: float = Field(
        default=52.0,
        gt=0,
        description="Decisions a customer gets in a year, each worth what the current one is: "
        "turns the expected incremental profit of one decision into a yearly figure (52: a "
        "weekly run, the default contact caps' 7-day window).",
    )
    match_columns: list[str] | None = Field(
        default=None,
        description="Columns of the customers table whose equal values (all present) merge "
        "customers in the re-resolution that estimates what recognition is worth; None: every "
        "profile column.",
    )
    match_max_shared_share: float = Field(
        default=0.01,
        ge=0,
        le=1,
        description="No attribute merge when more than this share of the customers table's rows "
        "share their match values with another row: the attributes do not identify people "
        "(age and job, say) and would merge strangers.",
    )
    recognition_sample: int = Field(
        default=2000,
        ge=10,
        description="Linked customers per identifier type split apart to measure what linking "
        "a fragment of that type is worth (for fragments without customer-table attributes).",
    )
    seed: int = Field(default=0, description="Seed of the samples and of the policy's draws.")


def load_maturity_config(path: Path | None = None) -> MaturityConfig:
    return load_section(path, "maturity", MaturityConfig)
