"""How Sparkplug names become the twin's: group id -> site, device id (or the edge node id, for
node-level metrics) -> machine, metric name -> signal.

Without a mapping file every name is normalised: a site or machine keeps the characters the
MQTT contract allows (`[A-Za-z0-9_.-]`, others become `_`), a metric name becomes a signal name
(`Spindle/Temperature` -> `spindle_temperature`). `TWIN_SPARKPLUG_MAP` (TOML) overrides any of
them:

    [sites]                                   # group id -> site
    "Plant 1" = "plant1"
    [machines]                                # "group/edge node/device", or "group/edge node"
    "Plant 1/Edge 1/Mill 1" = { machine = "mill1", type = "M" }
    [signals]                                 # metric name -> signal (value * scale + offset)
    "Spindle/Temperature" = { signal = "process_temp_k", offset = 273.15 }
    "Motor/Speed" = "rotational_speed_rpm"
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from twin.config import read_toml
from twin.errors import ConfigError

_SEGMENT_BAD = re.compile(r"[^A-Za-z0-9_.-]")
_SIGNAL_BAD = re.compile(r"[^a-z0-9]+")
_SIGNAL = r"^[a-z][a-z0-9_]{0,63}$"
_SEGMENT = r"^[A-Za-z0-9_.-]{1,64}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MachineMap(_Strict):
    machine: str = Field(pattern=_SEGMENT)
    type: str | None = Field(default=None, min_length=1, max_length=64)


class SignalMap(_Strict):
    signal: str = Field(pattern=_SIGNAL)
    scale: float = 1.0
    offset: float = 0.0


class SparkplugMap(_Strict):
    sites: dict[str, str] = {}
    machines: dict[str, MachineMap] = {}
    signals: dict[str, SignalMap | str] = {}

    @classmethod
    def load(cls, path: Path | None) -> SparkplugMap:
        """The mapping file, or the normalising defaults without one."""
        if path is None:
            return cls()
        mapping = read_toml(path, cls)
        for name, target in mapping.signals.items():
            if isinstance(target, str) and not re.match(_SIGNAL, target):
                raise ConfigError(f"{path}: signals.{name}: {target!r} is not a signal name")
        return mapping

    def site(self, group: str) -> str:
        return self.sites.get(group) or segment(group)

    def machine(self, group: str, edge: str, device: str | None) -> tuple[str, str | None]:
        """The machine and its type (None: as it says, or unknown)."""
        key = f"{group}/{edge}" if device is None else f"{group}/{edge}/{device}"
        found = self.machines.get(key)
        if found is not None:
            return found.machine, found.type
        return segment(device if device is not None else edge), None

    def signal(self, metric: str) -> tuple[str, float, float]:
        """The signal a numeric metric becomes, with its scale and offset."""
        found = self.signals.get(metric)
        if isinstance(found, str):
            return found, 1.0, 0.0
        if found is not None:
            return found.signal, found.scale, found.offset
        return signal_name(metric), 1.0, 0.0


def segment(name: str) -> str:
    """A Sparkplug id as a topic segment of the contract."""
    return _SEGMENT_BAD.sub("_", name)[:64] or "_"


def signal_name(metric: str) -> str:
    """`Spindle/Temperature` -> `spindle_temperature`; a name not starting with a letter gets
    `m_` before it."""
    name = _SIGNAL_BAD.sub("_", metric.lower()).strip("_") or "metric"
    if not name[0].isalpha():
        name = f"m_{name}"
    return name[:64].rstrip("_")
