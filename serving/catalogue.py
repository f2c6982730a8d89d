"""The action catalogue: what the company can do, on which channel, at what cost and margin.

Loaded from YAML and validated with errors that name the action and the field. Eligibility rules
are short conditions on the customer's features, `<feature> <op> <value> [or missing]`, e.g.
`tenure_days > 30` or `all_purchase_days_since > 3 or missing` ("not if purchased in the last 3
days"; a customer who never bought passes). They are checked against the feature table's columns
before the first decision, so a typo fails loudly instead of silently excluding everyone.
"""

from __future__ import annotations

import functools
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from features.config import DataConfig, Strict, load_yaml_text
from features.errors import UserError
from training.encoding import FrameArrays, column_values

DEFAULT_CATALOGUE = "catalogue.yaml"
NOTHING = "do_nothing"

_OPS: dict[str, Callable[[np.ndarray, object], np.ndarray]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
}
_RULE = re.compile(
    r"^\s*(?P<feature>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    r"(?P<value>'[^']*'|\"[^\"]*\"|[-+]?[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|[A-Za-z_][\w-]*)"
    r"(?P<missing>\s+or\s+missing)?\s*$"
)


@dataclass(frozen=True)
class Rule:
    """One eligibility condition on a feature column."""

    text: str
    feature: str
    op: str
    value: float | str
    missing_passes: bool

    @staticmethod
    @functools.lru_cache(maxsize=4096)  # a Rule is immutable; every decision reads them
    def parse(text: str) -> Rule:
        m = _RULE.match(text)
        if m is None:
            raise ValueError(
                f"eligibility rule {text!r}: expected `<feature> <op> <value> [or missing]` "
                "with op one of > >= < <= == !=, e.g. `tenure_days > 30`"
            )
        raw = m["value"]
        value: float | str
        if raw[0] in "'\"":
            value = raw[1:-1]
        else:
            try:
                value = float(raw)
            except ValueError:
                value = raw  # a bare word is a category, e.g. loyalty_tier == gold
        if isinstance(value, str) and m["op"] not in ("==", "!="):
            raise ValueError(f"eligibility rule {text!r}: {m['op']} needs a number, got {raw!r}")
        return Rule(text, m["feature"], m["op"], value, m["missing"] is not None)

    def evaluate(self, X: pd.DataFrame | FrameArrays) -> np.ndarray:
        """Boolean per row of a feature frame or its arrays: does the customer satisfy the rule."""
        column = np.asarray(column_values(X, self.feature))
        if column.dtype == np.float64 and not isinstance(self.value, str):
            values = column  # most features: no conversion
            missing = np.isnan(values)
        elif isinstance(self.value, str):
            missing = np.asarray(pd.isna(column), dtype=bool)
            values = np.where(missing, "", column.astype(str)).astype(object)
        else:  # a non-numeric value in a numeric rule fails it (it is not missing)
            missing = np.asarray(pd.isna(column), dtype=bool)
            values = pd.to_numeric(pd.Series(column), errors="coerce").to_numpy(dtype=float)
        with np.errstate(invalid="ignore"):
            ok = np.asarray(_OPS[self.op](values, self.value), dtype=bool)
        return np.where(missing, self.missing_passes, ok)


class Action(Strict):
    """One thing the company can do for a customer."""

    id: str = Field(description="Action id, as in the events' action_id column.")
    channel: str = Field(description="Channel the action is delivered on (must be outbound).")
    offer: str = Field(default="", description="What is offered (free text, for people).")
    cost: float = Field(ge=0, description="Cost of one contact, in money.")
    margin: float = Field(
        gt=0, le=1, description="Share of a purchase's value that is profit (after any discount)."
    )
    value: float | None = Field(
        default=None,
        ge=0,
        description="Fixed value of a purchase; None uses the value model's expected order value.",
    )
    lever: float = Field(
        default=1.0, ge=0, description="Business weight on the action's expected gain."
    )
    eligibility: list[str] = Field(default_factory=list, description="Rules a customer must meet.")
    start: date | None = Field(default=None, description="First day the action may be chosen.")
    end: date | None = Field(default=None, description="Last day the action may be chosen.")
    max_per_run: int | None = Field(
        default=None,
        ge=0,
        description="Capacity: most customers who get this action in one batch run (e.g. the "
        "call centre's calls a day); the rest fall back to their next-best action.",
    )

    @field_validator("id")
    @classmethod
    def _id_is_not_reserved(cls, v: str) -> str:
        if v == NOTHING:
            raise ValueError(f"`{NOTHING}` is reserved for the action of not contacting")
        return v

    @field_validator("eligibility")
    @classmethod
    def _rules_parse(cls, rules: list[str]) -> list[str]:
        for text in rules:
            Rule.parse(text)
        return rules

    @model_validator(mode="after")
    def _dates_ordered(self) -> Action:
        if self.start and self.end and self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")
        return self

    @property
    def rules(self) -> list[Rule]:
        return [Rule.parse(t) for t in self.eligibility]

    def live_on(self, day: date) -> bool:
        return (self.start is None or day >= self.start) and (self.end is None or day <= self.end)


class Catalogue(Strict):
    """The actions, in a stable order (the policy's candidate columns)."""

    actions: list[Action]

    @model_validator(mode="after")
    def _unique_ids(self) -> Catalogue:
        ids = [a.id for a in self.actions]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"action ids must be unique; repeated: {dupes}")
        if not ids:
            raise ValueError("the catalogue has no actions")
        return self

    @property
    def ids(self) -> list[str]:
        return [a.id for a in self.actions]

    def unusable(self, data: DataConfig, feature_columns: list[str]) -> dict[str, str]:
        """Action id -> why it cannot run on this data: its channel is not an outbound channel
        of the configuration, or an eligibility rule names a column the features lack (a
        profile column of another company's customers table). Empty when all can run."""
        outbound = set(data.outbound_channels)
        known = set(feature_columns)
        found: dict[str, str] = {}
        for a in self.actions:
            if a.channel not in outbound:
                found[a.id] = (
                    f"channel {a.channel!r} is not an outbound channel of the configuration "
                    f"(outbound: {', '.join(sorted(outbound)) or 'none'})"
                )
                continue
            for rule in a.rules:
                if rule.feature not in known:
                    found[a.id] = (
                        f"eligibility rule {rule.text!r} names {rule.feature!r}, which is not "
                        "a feature column of this data"
                    )
                    break
        return found

    def check_against(self, data: DataConfig, feature_columns: list[str]) -> None:
        """Every action on a configured outbound channel, every rule on an existing column;
        a UserError naming the first action that is not."""
        problems = self.unusable(data, feature_columns)
        if problems:
            action_id, why = next(iter(problems.items()))
            raise UserError(f"action {action_id!r}: {why}")

    def without(self, ids: set[str] | list[str]) -> Catalogue:
        """The same catalogue without the actions `ids` (at least one must remain)."""
        return self.model_copy(update={"actions": [a for a in self.actions if a.id not in ids]})


def load_catalogue(path: Path | None = None) -> tuple[Catalogue, str]:
    """The catalogue at `path` (or the packaged default) and its text (for the policy version)."""
    if path is None:
        text = resources.files("serving").joinpath(DEFAULT_CATALOGUE).read_text()
        source = f"serving/{DEFAULT_CATALOGUE}"
        try:
            raw = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            raise UserError(f"{source}: not valid YAML: {exc}") from exc
    else:
        if not Path(path).exists():
            raise UserError(f"action catalogue {path} does not exist (policy.catalogue)")
        raw = load_yaml_text(Path(path)) or {}  # UTF-8, each key once: one line naming the file
        text = Path(path).read_text("utf-8-sig")
        source = str(path)
    try:
        return Catalogue.model_validate(raw), text
    except ValidationError as exc:
        raise UserError(f"{source}: invalid action catalogue:\n{_name_actions(exc, raw)}") from exc


def _name_actions(exc: ValidationError, raw: dict) -> str:
    """Pydantic's errors, with `actions.3` replaced by the action's id where it has one."""
    actions = raw.get("actions") if isinstance(raw, dict) else None
    lines = []
    for err in exc.errors():
        loc = list(err["loc"])
        if len(loc) >= 2 and loc[0] == "actions" and isinstance(loc[1], int) and actions:
            item = actions[loc[1]] if loc[1] < len(actions) else None
            name = item.get("id") if isinstance(item, dict) else None
            loc[1] = f"{loc[1]} ({name})" if name else loc[1]
        lines.append(f"  {'.'.join(str(p) for p in loc)}: {err['msg']}")
    return "\n".join(lines)
