import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import pytest

from tests.services import wait_until
from twin.core import apply_messages
from twin.deadletters import DeadLetters
from twin.history import HistoryOutbox, HistoryStore
from twin.journal import Journal
from twin.messages import Limits, RawMessage
from twin.pipeline import Inbox, Pipeline, React
from twin.state import FleetState
from twin.topics import Topics

NOW = int(time.time() * 1000)


def make(
    path: Path,
    state: type[FleetState] = FleetState,
    journal: Journal | None = None,
    react: React = lambda changed: None,
) -> tuple[Pipeline, list[object]]:
    journal = journal or Journal(path / "j.sqlite3")
    journal.open()
    history = HistoryStore(path / "j.sqlite3")
    history.open()
    acked: list[object] = []
    outbox = HistoryOutbox()
    fleet, deadletters = state(outbox=outbox), DeadLetters()
    pipeline = Pipeline(
        Inbox(),
        journal,
        history,
        outbox,
        fleet,
        deadletters,
        apply=partial(
            apply_messages, topics=Topics(), limits=Limits(), state=fleet, deadletters=deadletters
        ),
        ack=acked.extend,
        react=react,
        commit_ms=5,
    )
    return pipeline, acked


def telemetry(seq: int, machine: str = "m1") -> RawMessage:
    body = {"ts": NOW + seq, "seq": seq, "values": {"x": seq}}
    return RawMessage(f"factory/s1/{machine}/telemetry", msgspec.json.encode(body), NOW)


def drain(pipeline: Pipeline, committed: int) -> None:
    deadline = time.monotonic() + 10
    while pipeline.committed < committed and time.monotonic() < deadline:
        time.sleep(0.005)
    assert pipeline.committed == committed


def test_messages_are_acknowledged_only_after_commit_and_applied(tmp_path: Path) -> None:
    pipeline, acked = make(tmp_path)
    pipeline.start()
    for seq in range(100):
        pipeline.inbox.put(telemetry(seq), ("token", seq))
    drain(pipeline, 100)
    pipeline.stop()
    assert acked == [("token", seq) for seq in range(100)]
    assert pipeline.journal.last_id == 100
    twin = pipeline.state.get("m1")
    assert twin is not None
    assert twin["counters"]["received"] == 100


class _SlowDisk(Journal):
    """A journal whose commits wait until the test lets them land."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.land = threading.Event()

    def append(self, messages: Sequence[RawMessage]) -> int:
        assert self.land.wait(10)
        return super().append(messages)


def test_nothing_is_reacted_to_or_acknowledged_before_its_commit_lands(tmp_path: Path) -> None:
    journal = _SlowDisk(tmp_path / "j.sqlite3")
    reacted: list[str] = []
    pipeline, acked = make(
        tmp_path, journal=journal, react=lambda changed: reacted.extend(t.machine for t in changed)
    )
    pipeline.start()
    try:
        pipeline.inbox.put(telemetry(1), "token")
        # Decoding and applying run beside the commit: the live state has it...
        wait_until(lambda: pipeline.state.get("m1") is not None, 10, "the reading applied")
        time.sleep(0.1)
        # ... but no reaction (scoring, alerts, publication) and no ack before it is durable,
        # and /health's lag still counts it.
        assert (reacted, acked, pipeline.journal.last_id) == ([], [], 0)
        assert pipeline.status().lag == 1
        journal.land.set()
        wait_until(lambda: acked == ["token"], 10, "the ack")
        assert pipeline.status().lag == 0
        assert pipeline.journal.last_id == 1
        wait_until(lambda: reacted == ["m1"], 10, "the reaction, once durable")
    finally:
        journal.land.set()
        pipeline.stop()


def test_restart_replays_the_journal_and_recognises_redeliveries(tmp_path: Path) -> None:
    first, _ = make(tmp_path)
    first.snapshot_interval_s = 3600  # no snapshot while running: the restart must replay
    first.start()
    for seq in range(50):
        first.inbox.put(telemetry(seq), None)
    first.inbox.put(RawMessage("factory/s1/m1/telemetry", b"garbage", NOW), None)
    drain(first, 51)
    # Simulate a crash: the thread stops, no final snapshot is written.
    first._stopping.set()
    first.inbox.wake()
    assert first._thread is not None
    first._thread.join()
    first.journal.close()

    second, _ = make(tmp_path)
    second.start()
    assert second.replayed == 51
    for seq in range(40, 60):  # the broker redelivers some, then new ones arrive
        second.inbox.put(telemetry(seq), None)
    drain(second, 20)
    second.stop()
    twin = second.state.get("m1")
    assert twin is not None
    counters = twin["counters"]
    assert (counters["received"], counters["duplicates"], counters["rejected"]) == (60, 10, 1)
    assert second.deadletters.total == 1


def test_final_snapshot_makes_the_next_start_replay_nothing(tmp_path: Path) -> None:
    first, _ = make(tmp_path)
    first.start()
    first.inbox.put(telemetry(1), None)
    drain(first, 1)
    first.stop()
    first.journal.close()
    second, _ = make(tmp_path)
    second.start()
    assert second.replayed == 0
    assert second.state.get("m1") == first.state.get("m1")
    second.stop()


def test_ingest_logs_what_it_did_once_a_period(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    pipeline, _ = make(tmp_path)
    pipeline.summary_s = 0.05
    caplog.set_level("INFO", logger="twin.pipeline")
    pipeline.start()
    pipeline.inbox.put(telemetry(1), None)
    pipeline.inbox.put(telemetry(1), None)
    pipeline.inbox.put(RawMessage("factory/s1/m1/telemetry", b"[1]", NOW), None)
    drain(pipeline, 3)
    deadline = time.monotonic() + 5
    while "rejected" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    pipeline.stop()
    assert "3 messages, 1 readings applied, 1 duplicates, 1 rejected (not_object 1)" in caplog.text


class _Fragile(FleetState):
    """A state that fails on one machine, as a bug in apply would."""

    def apply(self, decoded: Any, received_ms: int) -> Any:
        if decoded.address is not None and decoded.address.machine == "boom":
            raise ValueError("simulated bug")
        return super().apply(decoded, received_ms)


def test_a_message_that_raises_is_dead_lettered_and_ingest_and_replay_go_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def build() -> Pipeline:
        return make(tmp_path, _Fragile)[0]

    first = build()
    first.snapshot_interval_s = 3600
    first.start()
    first.inbox.put(telemetry(1, machine="boom"), None)
    first.inbox.put(telemetry(2), None)
    drain(first, 2)
    assert first.failure is None
    assert first.state.get("m1") is not None
    assert [d["reason"] for d in first.deadletters.query()] == ["internal_error"]
    first._stopping.set()  # crash: no final snapshot, the restart replays both
    first.inbox.wake()
    assert first._thread is not None
    first._thread.join()
    first.journal.close()
    second = build()
    second.start()
    assert second.replayed == 2
    assert second.state.get("m1") is not None
    second.stop()
    assert "could not be applied; dead-lettered" in caplog.text
