"""An alert: one (machine, rule) whose condition held, from raised to cleared."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Severity = Literal["warning", "minor", "major", "critical"]
SEVERITIES: tuple[Severity, ...] = ("warning", "minor", "major", "critical")


@dataclass
class Alert:
    id: int
    machine: str
    site: str
    rule: str
    kind: str
    severity: Severity
    state: str  # active | cleared
    message: str
    raised_at: int
    updated_at: int
    cleared_at: int | None = None
    acknowledged: bool = False
    acknowledged_by: str | None = None
    acknowledged_at: int | None = None
    comment: str | None = None
    model_version: str | None = None
