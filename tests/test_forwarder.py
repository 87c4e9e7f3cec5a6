"""The forwarder against an in-memory sink: batching, retry with backoff, the durable cursor."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.fakes import MemorySink
from tests.services import wait_until
from twin.alerts import Alert
from twin.forwarder import Forwarder
from twin.journal import Journal
from twin.messages import Limits, RawMessage
from twin.risk import Risk
from twin.topics import Topics

T0 = 1_800_000_000_000


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Journal]:
    journal = Journal(tmp_path / "twin.sqlite3")
    journal.open()
    yield journal
    journal.close()


def readings(journal: Journal, first: int, count: int, machine: str = "m1") -> None:
    journal.append(
        [
            RawMessage(
                f"factory/s1/{machine}/telemetry",
                msgspec.json.encode({"ts": T0 + seq, "seq": seq, "values": {"torque_nm": seq}}),
                T0,
            )
            for seq in range(first, first + count)
        ]
    )


def forwarder(journal: Journal, sink: MemorySink, batch: int = 5000) -> Forwarder:
    return Forwarder(
        sink,
        journal.path,
        lambda: journal.last_id,
        lambda: (0, 0, 0),
        Topics(),
        Limits(),
        batch=batch,
        max_delay_s=0.01,
        retry_base_s=0.01,
    )


def telemetry_seqs(sink: MemorySink) -> list[int]:
    return [int(line.split(" ")[-1]) - T0 for line in sink.measurement("telemetry")]


def test_journalled_readings_reach_the_sink_in_order_and_the_cursor_follows(
    journal: Journal,
) -> None:
    readings(journal, 0, 250)
    sink = MemorySink()
    fw = forwarder(journal, sink, batch=100)
    fw.start()
    try:
        wait_until(lambda: fw.cursor == 250, 10, "the cursor to reach the journal head")
    finally:
        fw.stop()
    assert sink.started
    assert sink.closed
    assert telemetry_seqs(sink) == list(range(250))
    assert fw.lag == 0
    assert fw.status().written == fw.written >= 250
    assert (fw.retries, fw.dropped, fw.last_error) == (0, 0, None)


def test_a_failing_sink_is_retried_until_it_lands_and_nothing_is_lost_or_doubled(
    journal: Journal,
) -> None:
    readings(journal, 0, 50)
    sink = MemorySink()
    sink.fail(3)
    fw = forwarder(journal, sink)
    fw.start()
    try:
        wait_until(lambda: fw.cursor == 50, 10, "the write to land after the failures")
        assert fw.retries == 3
        assert fw.last_error is None  # recovered
        readings(journal, 50, 10)
        wait_until(lambda: fw.cursor == 60, 10, "the next batch")
    finally:
        fw.stop()
    assert telemetry_seqs(sink) == list(range(60))
    assert sink.attempts >= 5


def test_while_the_sink_is_down_the_cursor_stays_and_a_restart_resumes_from_it(
    journal: Journal,
) -> None:
    readings(journal, 0, 20)
    down = MemorySink()
    down.fail(1_000_000)
    first = forwarder(journal, down)
    first.start()
    wait_until(lambda: first.retries >= 2, 10, "retries")
    assert first.cursor == 0
    assert first.last_error == "memory sink told to fail"
    first.stop()  # stops mid-retry: nothing moved
    assert down.lines == []

    up = MemorySink()
    second = forwarder(journal, up)
    second.start()
    try:
        wait_until(lambda: second.cursor == 20, 10, "the restart to forward everything")
        readings(journal, 20, 5)
        wait_until(lambda: second.cursor == 25, 10, "new readings")
    finally:
        second.stop()
    assert telemetry_seqs(up) == list(range(25))

    third_sink = MemorySink()
    third = forwarder(journal, third_sink)
    third.start()  # the cursor is durable: nothing is sent twice
    try:
        time.sleep(0.2)
    finally:
        third.stop()
    assert third.cursor == 25
    assert third_sink.measurement("telemetry") == []


def test_risk_scores_and_alert_changes_go_out_as_their_measurements(journal: Journal) -> None:
    sink = MemorySink()
    fw = forwarder(journal, sink)
    fw.risks([("s1", "m1", Risk(0.75, "v1", 0.5, T0))])
    fw.alert(
        Alert(
            id=7,
            machine="m1",
            site="s1",
            rule="hot",
            kind="threshold",
            severity="major",
            state="active",
            message='m1: "hot"',
            raised_at=T0,
            updated_at=T0,
        )
    )
    fw.start()
    try:
        wait_until(lambda: sink.measurement("alert"), 10, "the points")
    finally:
        fw.stop()
    assert sink.measurement("risk") == [
        f"risk,machine=m1,model_version=v1,site=s1 probability=0.75,threshold=0.5 {T0}"
    ]
    (alert,) = sink.measurement("alert")
    assert 'message="m1: \\"hot\\""' in alert
    assert sink.measurement("pipeline")  # the twin's own health, every 10 s from the start


def test_rows_the_journal_dropped_before_they_were_read_are_counted(journal: Journal) -> None:
    readings(journal, 0, 10)
    sink = MemorySink()
    fw = forwarder(journal, sink)
    fw.start()
    wait_until(lambda: fw.cursor == 10, 10, "the first rows")
    fw.stop()
    readings(journal, 10, 30)
    journal.max_rows = 5
    journal.prune(journal.last_id)  # the size bound drops rows the sink has not read
    again = forwarder(journal, sink)
    again.start()
    try:
        wait_until(lambda: again.cursor == 40, 10, "what is left")
    finally:
        again.stop()
    assert again.dropped == 25
    assert telemetry_seqs(sink)[-5:] == list(range(35, 40))
