"""Alerts: rules as data (`rules`), evaluated on every twin change (`manager`), kept (`store`)."""

from twin.alerts.alert import SEVERITIES, Alert, Severity
from twin.alerts.manager import AlertManager, Listener
from twin.alerts.rules import DEFAULT_RULES, Condition, Rule, load_rules
from twin.alerts.store import AlertStore

__all__ = [
    "DEFAULT_RULES",
    "SEVERITIES",
    "Alert",
    "AlertManager",
    "AlertStore",
    "Condition",
    "Listener",
    "Rule",
    "Severity",
    "load_rules",
]
