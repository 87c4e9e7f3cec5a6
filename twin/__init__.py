"""factory-twin: digital twins of a manufacturing fleet over MQTT."""

from twin.config import Settings
from twin.errors import BrokerError, ConfigError, JournalError, TwinError

__all__ = ["BrokerError", "ConfigError", "JournalError", "Settings", "TwinError"]
