"""The twin's error tree.

    TwinError
     +-- ConfigError        settings or files that cannot work (bad data dir, bad rules file)
     +-- JournalError       the durable journal cannot be written or read
     +-- BrokerError        the MQTT broker cannot be reached or refused us

Foreign exceptions are wrapped with ``raise ... from exc`` where they cross into the twin.
"""


class TwinError(Exception):
    """Base of every error the twin raises on purpose."""


class ConfigError(TwinError):
    """A setting or a configured file cannot work."""


class JournalError(TwinError):
    """The durable journal cannot be written or read."""


class BrokerError(TwinError):
    """The MQTT broker cannot be reached or refused the connection."""
