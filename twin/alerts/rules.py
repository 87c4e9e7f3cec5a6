"""Alert rules as data: the kinds, their validation, the defaults and the TOML loader.

Rule kinds: `threshold` (a signal above or below a level, with a `clear` level for hysteresis),
`all` / `any` (combinations of conditions), `risk` (failure probability at or above the model's
threshold, tied to the model version), `offline` (an `offline` status, or no message for
`timeout_s`), `stale` (a signal whose value has not changed for `stale_s`), `maintenance` (an
accepted maintenance window has started and the machine has not reported the service), `order`
(a late order's next operation is on the machine). Any rule may ask its condition to hold
`for_s` seconds first, and may `escalate` its severity at higher levels.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from twin.alerts.alert import Severity
from twin.errors import ConfigError


class Condition(BaseModel):
    """A signal above or below a level; `clear` is where an active condition lets go."""

    model_config = ConfigDict(extra="forbid")

    signal: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")
    above: float | None = None
    below: float | None = None
    clear: float | None = None

    @model_validator(mode="after")
    def _one_direction(self) -> Condition:
        if (self.above is None) == (self.below is None):
            raise ValueError("give exactly one of 'above' and 'below'")
        if self.clear is not None and self.above is not None and self.clear > self.above:
            raise ValueError("'clear' must not be above 'above' (hysteresis)")
        if self.clear is not None and self.below is not None and self.clear < self.below:
            raise ValueError("'clear' must not be below 'below' (hysteresis)")
        return self

    def holds(self, values: dict[str, tuple[float, int]], active: bool) -> bool:
        """Triggers past `above`/`below`; once active, holds until the value passes `clear`."""
        live = values.get(self.signal)
        if live is None:
            return False
        value = live[0]
        if self.above is not None:
            return value >= self.clear if active and self.clear is not None else value > self.above
        assert self.below is not None
        return value <= self.clear if active and self.clear is not None else value < self.below


class Rule(BaseModel):
    """One alert rule; see the module docstring for the kinds."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    kind: Literal["threshold", "all", "any", "risk", "offline", "stale", "maintenance", "order"]
    severity: Severity = "major"
    message: str = "{machine}: {rule}"
    signal: str | None = Field(default=None, pattern=r"^[a-z][a-z0-9_]{0,63}$")
    above: float | None = None
    below: float | None = None
    clear: float | None = None
    conditions: list[Condition] = Field(default_factory=list)
    for_s: float = Field(default=0.0, ge=0)
    timeout_s: float = Field(default=300.0, gt=0)
    stale_s: float = Field(default=600.0, gt=0)
    escalate: dict[Severity, float] = Field(
        default_factory=dict, description="severity -> level (signal value, or probability)"
    )

    @model_validator(mode="after")
    def _complete(self) -> Rule:
        if self.kind == "threshold":
            if self.signal is None:
                raise ValueError("a threshold rule needs 'signal'")
            self.conditions = [
                Condition(signal=self.signal, above=self.above, below=self.below, clear=self.clear)
            ]
        elif self.kind in ("all", "any") and not self.conditions:
            raise ValueError(f"an '{self.kind}' rule needs 'conditions'")
        elif self.kind == "stale" and self.signal is None:
            raise ValueError("a stale rule needs 'signal'")
        return self


DEFAULT_RULES = [
    Rule(
        id="failure_risk",
        kind="risk",
        severity="major",
        escalate={"critical": 0.9},
        message="{machine}: failure risk {probability:.0%} (threshold {threshold:.0%})",
    ),
    Rule(
        id="offline",
        kind="offline",
        severity="major",
        timeout_s=300,
        message="{machine} is offline",
    ),
    Rule(
        id="maintenance_due",
        kind="maintenance",
        severity="warning",
        message="{machine}: {action} due since {start} (maintenance window {window})",
    ),
    Rule(
        id="order_late",
        kind="order",
        severity="warning",
        message="{machine}: order {order} is late (ETA {eta}, due {due})",
    ),
    Rule(
        id="tool_wear_high",
        kind="threshold",
        signal="tool_wear_min",
        above=200,
        clear=20,
        severity="warning",
        message="{machine}: tool wear {value:.0f} min, a tool change is due",
    ),
]


def load_rules(path: Path | None) -> list[Rule]:
    """The default rules, extended (or overridden by id) by a TOML file of `[[rule]]` tables."""
    rules = {rule.id: rule for rule in DEFAULT_RULES}
    if path is None:
        return list(rules.values())
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read the alert rules {path}: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    headers = [
        i + 1 for i, line in enumerate(text.splitlines()) if re.match(r"\s*\[\[rule\]\]", line)
    ]
    for index, raw in enumerate(data.get("rule", [])):
        line = headers[index] if index < len(headers) else "?"
        try:
            rule = Rule.model_validate(raw)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(p) for p in err["loc"]) or "rule"
            raise ConfigError(
                f"{path} line {line}: rule {raw.get('id', '?')!r}: {where}: {err['msg']}"
            ) from None
        rules[rule.id] = rule
    return list(rules.values())
