"""Machine physics after the AI4I 2020 data set's generation process (Matzka, 2020).

Each `step()` is one process (one workpiece): air temperature as a random walk around 300 K,
process temperature about 10 K above it, rotational speed from a nominal power with noise,
torque ~ N(40, 10) Nm, tool wear growing 5/3/2 minutes per process for H/M/L machines. Failure
modes as the data set defines them: tool wear (TWF), heat dissipation (HDF), power (PWF),
overstrain (OSF) and random (RNF). These thresholds belong to the simulated world; the twin's
model never sees them and has to learn them from data.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Literal

MachineType = Literal["L", "M", "H"]
TYPES: tuple[MachineType, ...] = ("L", "M", "H")
TYPE_WEIGHTS = (0.5, 0.3, 0.2)  # the data set's mix of quality variants

_WEAR_PER_PROCESS = {"L": 2, "M": 3, "H": 5}
_OVERSTRAIN_LIMIT = {"L": 11_000.0, "M": 12_000.0, "H": 13_000.0}  # min x Nm
_ERROR_CODES = ("E_SPINDLE", "E_COOLANT", "E_DOOR", "E_SENSOR")


@dataclass(frozen=True, slots=True)
class Event:
    """A device event the step produced: failure, maintenance or error, with its code."""

    type: Literal["failure", "maintenance", "error"]
    code: str


@dataclass(slots=True)
class Machine:
    """One simulated machine; deterministic for a given `seed`."""

    name: str
    type: MachineType
    seed: int
    air_temp_k: float = 300.0
    process_temp_k: float = 310.0
    _process_offset: float = field(
        init=False, default=0.0
    )  # process temperature's walk around air + 10 K
    tool_wear_min: int = 0
    # A due tool is replaced without a failure (the data set's scheduled replacement); False
    # leaves maintenance to the caller (`service`), as a maintenance policy would.
    auto_tool_change: bool = True
    # Two streams: the process (temperatures, load, random failures, errors: the same draws
    # for every process whatever is done to the machine) and the tools (each tool's life, the
    # tool-wear failure), so that two maintenance policies meet the same processes.
    rng: random.Random = field(init=False)
    _tools: random.Random = field(init=False)
    _tool_life: int = field(init=False)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._tools = random.Random(self.seed * 7_919 + 1)
        self.air_temp_k += self.rng.gauss(0, 2)
        self._process_offset = self.rng.gauss(0, 1)
        self.process_temp_k = self.air_temp_k + 10 + self._process_offset
        self.tool_wear_min = self.rng.randrange(0, 150)
        self._tool_life = self._tools.randint(200, 240)

    @property
    def process_minutes(self) -> int:
        """Simulated minutes one process takes: the tool's cutting time, as its wear counts."""
        return _WEAR_PER_PROCESS[self.type]

    def step(self) -> tuple[dict[str, float], list[Event]]:
        """Run one process; return the reading's values and the events it caused."""
        rng = self.rng
        # Slow random walks, pulled back to their set points.
        self.air_temp_k += rng.gauss(0, 0.4) + 0.02 * (300.0 - self.air_temp_k)
        self._process_offset += rng.gauss(0, 0.35) - 0.1 * self._process_offset
        self.process_temp_k = self.air_temp_k + 10.0 + self._process_offset
        torque = max(3.0, rng.gauss(40.0, 10.0))
        power_w = rng.gauss(6500.0, 900.0)
        speed = min(2900.0, max(1150.0, power_w / torque * 60 / (2 * math.pi)))
        speed += rng.gauss(0, 20)
        self.tool_wear_min += self.process_minutes
        values = {
            "air_temp_k": round(self.air_temp_k, 2),
            "process_temp_k": round(self.process_temp_k, 2),
            "rotational_speed_rpm": round(speed),
            "torque_nm": round(torque, 1),
            "tool_wear_min": self.tool_wear_min,
        }
        return values, self._events(values)

    def _events(self, v: dict[str, float]) -> list[Event]:
        rng = self.rng
        modes = []
        wear = v["tool_wear_min"]
        tool_due = wear >= self._tool_life
        if tool_due and self._tools.random() < 0.45:
            modes.append("TWF")
        if v["process_temp_k"] - v["air_temp_k"] < 8.6 and v["rotational_speed_rpm"] < 1380:
            modes.append("HDF")
        power = v["torque_nm"] * v["rotational_speed_rpm"] * 2 * math.pi / 60
        if power < 3500 or power > 9000:
            modes.append("PWF")
        if wear * v["torque_nm"] > _OVERSTRAIN_LIMIT[self.type]:
            modes.append("OSF")
        if rng.random() < 0.001:
            modes.append("RNF")
        events = [Event("failure", mode) for mode in modes]
        error, code = rng.random(), rng.choice(_ERROR_CODES)  # both drawn every process
        if error < 0.002 + (0.02 if modes else 0.0):
            events.insert(0, Event("error", code))
        if (tool_due and self.auto_tool_change) or "TWF" in modes or "OSF" in modes:
            events.append(self.service())  # repair or scheduled replacement
        return events

    def service(self) -> Event:
        """A tool change: a fresh tool, with a tool life of its own."""
        self.tool_wear_min = 0
        self._tool_life = self._tools.randint(200, 240)
        return Event("maintenance", "tool_change")


def make_fleet(count: int, seed: int, prefix: str = "m") -> list[Machine]:
    """`count` machines with types drawn in the data set's proportions; reproducible by seed."""
    rng = random.Random(seed)
    return [
        Machine(f"{prefix}{i:04d}", rng.choices(TYPES, TYPE_WEIGHTS)[0], seed * 100_003 + i)
        for i in range(count)
    ]
