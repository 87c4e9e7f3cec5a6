"""The twin's error tree. The categories live here; each specific error lives where it is raised.

    TwinError
     +-- ConfigError            settings or files that cannot work (bad data dir, bad rules file)
     |    +-- ModelMismatch     (twin.model.predictor) a stored model this install cannot load
     +-- StorageError           a SQLite store in the data directory cannot be written or read
     |    +-- JournalError      the durable journal itself
     +-- BrokerError            the MQTT broker cannot be reached or refused us
     +-- Unavailable            a service the twin relies on did not answer         (HTTP 503)
     |    +-- SinkError         (twin.sinks) a time-series write or read that did not land
     +-- InvalidRequest         input that cannot be answered as asked               (HTTP 422)
     |    +-- BadTopic          (twin.topics) an inbound topic outside the contract
     |    +-- BadDuration       (twin.durations) a duration or time that does not parse
     |    +-- BadQuery          (twin.timeseries) a history query that cannot be answered
     |    +-- PlanError         (twin.planning) a plan the linear programme cannot solve
     |    +-- TrainingDataError (twin.model.training) a training CSV that cannot be used
     |    +-- FleetTrainingError (twin.model.fleet) history too thin to train a model
     +-- NotFound               no such machine, alert, allocation                  (HTTP 404)
     +-- Conflict               the request clashes with work in progress           (HTTP 409)
          +-- TrainerBusy       (twin.trainer) a training job is running
          +-- HistoryLoading    (twin.cluster.training) twin api still reading the history

Foreign exceptions are wrapped with ``raise ... from exc`` where they cross into the twin. The
API translates the tree into HTTP problems in one handler (`twin.api.router`), by category.
"""


class TwinError(Exception):
    """Base of every error the twin raises on purpose."""


class ConfigError(TwinError):
    """A setting or a configured file cannot work."""


class StorageError(TwinError):
    """A SQLite store in the data directory (history, alerts, journal) cannot be used."""


class JournalError(StorageError):
    """The durable journal cannot be written or read."""


class BrokerError(TwinError):
    """The MQTT broker cannot be reached or refused the connection."""


class Unavailable(TwinError):
    """A service the twin relies on (InfluxDB) did not answer."""


class InvalidRequest(TwinError):
    """Input that cannot be answered as asked."""


class NotFound(TwinError):
    """The machine, alert or allocation asked for does not exist."""


class Conflict(TwinError):
    """The request clashes with work in progress."""
