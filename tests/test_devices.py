"""The simulated machines: reproducible, within the AI4I 2020 ranges, failing as the data set
defines, and the fleet's command line."""

from __future__ import annotations

from collections import Counter

import pytest

from devices.__main__ import _positive
from devices.simulator import Machine, make_fleet


def run(machine: Machine, steps: int) -> list[tuple[dict[str, float], list[str]]]:
    out = []
    for _ in range(steps):
        values, events = machine.step()
        out.append((values, [f"{e.type}:{e.code}" for e in events]))
    return out


def test_a_machine_is_deterministic_for_its_seed() -> None:
    assert run(Machine("a", "M", seed=7), 300) == run(Machine("b", "M", seed=7), 300)
    assert run(Machine("a", "M", seed=7), 50) != run(Machine("a", "M", seed=8), 50)


def test_readings_stay_within_the_data_sets_ranges() -> None:
    for values, _ in run(Machine("m", "L", seed=1), 2000):
        assert 290 < values["air_temp_k"] < 310
        assert 4 < values["process_temp_k"] - values["air_temp_k"] < 16
        assert 1050 <= values["rotational_speed_rpm"] <= 3000  # clamped, then +-20 rpm noise
        assert values["torque_nm"] >= 3
        assert 0 <= values["tool_wear_min"] <= 260


def test_the_tool_is_changed_when_due_and_wear_starts_again() -> None:
    machine = Machine("m", "H", seed=3)
    steps = run(machine, 400)
    changes = [i for i, (_, events) in enumerate(steps) if "maintenance:tool_change" in events]
    assert changes, "an H machine wears 5 min a process: a tool change within 400 processes"
    assert steps[changes[0]][0]["tool_wear_min"] >= 200
    assert steps[changes[0] + 1][0]["tool_wear_min"] == 5  # a fresh tool, one process old


def test_failures_follow_the_modes_the_data_set_defines() -> None:
    failures: Counter[str] = Counter()
    for machine in make_fleet(20, seed=5):
        for _, events in run(machine, 500):
            failures.update(e.split(":")[1] for e in events if e.startswith("failure:"))
    assert set(failures) <= {"TWF", "HDF", "PWF", "OSF", "RNF"}
    assert failures["PWF"] > 0
    assert failures["OSF"] + failures["TWF"] > 0
    assert sum(failures.values()) < 0.1 * 20 * 500  # failures are rare, as in AI4I (3.4%)


def test_a_fleet_is_reproducible_and_mixes_types_as_the_data_set_does() -> None:
    fleet = make_fleet(1000, seed=2)
    assert [m.type for m in fleet] == [m.type for m in make_fleet(1000, seed=2)]
    assert fleet[0].name == "m0000"
    assert fleet[-1].name == "m0999"
    share = Counter(m.type for m in fleet)
    assert 0.4 < share["L"] / 1000 < 0.6
    assert 0.1 < share["H"] / 1000 < 0.3


def test_the_command_line_refuses_non_positive_numbers() -> None:
    import argparse

    assert _positive(int)("3") == 3
    assert _positive(float)("0.5") == 0.5
    for bad in ("0", "-1"):
        with pytest.raises(argparse.ArgumentTypeError, match="greater than 0"):
            _positive(int)(bad)
