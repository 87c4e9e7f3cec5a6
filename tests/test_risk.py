"""Risk scoring on the live state: micro-batched, typed, explained, told to listeners."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from twin.messages import Decoded, Reading, Status
from twin.model import DEFAULT_SCOPE, Registry
from twin.risk import Risk, RiskScorer, site_scope
from twin.state import FleetState, MachineTwin
from twin.topics import Address

T0 = 1_800_000_000_000
HEALTHY = {
    "air_temp_k": 300.0,
    "process_temp_k": 310.0,
    "rotational_speed_rpm": 1500.0,
    "torque_nm": 40.0,
    "tool_wear_min": 10.0,
}
WORN = {**HEALTHY, "torque_nm": 65.0, "tool_wear_min": 235.0}  # overstrain: L type, 15,275 min Nm


def feed(state: FleetState, machine: str, values: dict[str, float], seq: int = 1) -> MachineTwin:
    state.apply(
        Decoded(Address("s1", machine, "status"), status=Status(state="online", ts=T0, type="L")),
        T0,
    )
    twin = state.apply(Decoded(Address("s1", machine, "telemetry"), [Reading(T0, seq, values)]), T0)
    assert twin is not None
    return twin


@pytest.fixture
def scorer(data_dir: Path) -> tuple[FleetState, RiskScorer, list[list[tuple[str, str, Risk]]]]:
    state = FleetState()
    told: list[list[tuple[str, str, Risk]]] = []
    scorer = RiskScorer(state, Registry(data_dir / "models"), 3600, listeners=[told.append])
    scorer.start()
    return state, scorer, told


def test_changed_machines_are_scored_together_once_the_interval_is_up(
    scorer: tuple[FleetState, RiskScorer, list[list[tuple[str, str, Risk]]]],
) -> None:
    state, risk, told = scorer
    healthy, worn = feed(state, "ok", HEALTHY), feed(state, "worn", WORN)
    assert risk.observe({healthy, worn}) == {healthy, worn}  # the first call: the interval is up
    assert risk.observe({healthy}) == set()  # within the interval: marked, not scored
    assert isinstance(healthy.risk, Risk)
    assert isinstance(worn.risk, Risk)
    assert worn.risk.probability > worn.risk.threshold > healthy.risk.probability
    assert worn.risk.model_version == risk.models()[DEFAULT_SCOPE].version
    top = next(iter(worn.risk.contributions))
    assert abs(worn.risk.contributions[top]) == max(map(abs, worn.risk.contributions.values()))
    (batch,) = told
    assert sorted((site, machine) for site, machine, _ in batch) == [("s1", "ok"), ("s1", "worn")]
    assert risk.flush() == {healthy}  # the marked one
    assert risk.scored == 3


def test_a_machine_the_model_cannot_score_gets_no_risk_and_the_reason(
    scorer: tuple[FleetState, RiskScorer, list[list[tuple[str, str, Risk]]]],
) -> None:
    state, risk, told = scorer
    partial = feed(state, "partial", {"torque_nm": 40.0, "tool_wear_min": 5.0})
    risk.flush()
    risk.observe({partial})
    risk.flush()
    assert partial.risk is None
    assert partial.risk_reason == (
        "missing signals: air_temp_k, process_temp_k, rotational_speed_rpm"
    )
    assert state.get("partial") is not None
    assert state.get("partial")["risk"] is None  # type: ignore[index]  # checked on the line above
    assert told == []


def test_a_model_activated_from_another_thread_rescores_the_fleet_on_the_journal_thread(
    scorer: tuple[FleetState, RiskScorer, list[list[tuple[str, str, Risk]]]],
) -> None:
    state, risk, _ = scorer
    twin = feed(state, "m1", HEALTHY)
    risk.observe({twin})
    before = twin.risk
    assert before is not None
    default = risk.models()[DEFAULT_SCOPE]
    stop = threading.Event()

    def journal_thread() -> None:  # what the pipeline does: react, also when idle
        while not stop.is_set():
            risk.observe(set())
            time.sleep(0.01)

    runner = threading.Thread(target=journal_thread)
    runner.start()
    try:
        assert risk.activate(default, wait_s=10)  # the same model again: rescored, not skipped
    finally:
        stop.set()
        runner.join()
    assert twin.risk is not None
    assert twin.risk is not before
    assert twin.risk.updated_at >= before.updated_at
    assert site_scope("s1") not in risk.models()


def test_activate_says_so_when_no_journal_thread_rescored_in_time(
    scorer: tuple[FleetState, RiskScorer, list[list[tuple[str, str, Risk]]]],
) -> None:
    _, risk, _ = scorer
    assert risk.activate(risk.models()[DEFAULT_SCOPE], wait_s=0.05) is False
    assert DEFAULT_SCOPE in risk.models()  # swapped in all the same
