"""factory-twin: digital twins of a manufacturing fleet over MQTT."""

from twin.config import Settings
from twin.errors import (
    BrokerError,
    ConfigError,
    Conflict,
    InvalidRequest,
    JournalError,
    NotFound,
    StorageError,
    TwinError,
    Unavailable,
)

__all__ = [
    "BrokerError",
    "ConfigError",
    "Conflict",
    "InvalidRequest",
    "JournalError",
    "NotFound",
    "Settings",
    "StorageError",
    "TwinError",
    "Unavailable",
]
