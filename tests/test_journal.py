from pathlib import Path

import pytest

from twin.errors import JournalError
from twin.journal import Journal
from twin.messages import RawMessage


def raw(i: int) -> RawMessage:
    return RawMessage("factory/s1/m1/telemetry", b'{"seq":%d,"values":{"x":1}}' % i, 1000 + i)


def test_append_assigns_increasing_ids_and_reads_back(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.open()
    assert journal.append([raw(0), raw(1)]) == 2
    assert journal.append([raw(2)]) == 3
    rows = journal.read_after(1)
    assert [(i, m) for i, m in rows] == [(2, raw(1)), (3, raw(2))]
    journal.close()


def test_ids_keep_increasing_after_everything_was_pruned_and_reopened(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.open()
    journal.append([raw(0), raw(1)])
    journal.save_snapshot(2, b"{}")
    journal.prune(2)
    journal.close()
    journal = Journal(tmp_path / "j.sqlite3")
    journal.open()
    assert journal.rows == 0
    assert journal.append([raw(2)]) == 3
    journal.close()


def test_size_bound_drops_the_oldest_and_counts_them(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3", max_rows=10)
    journal.open()
    journal.append([raw(i) for i in range(25)])
    assert journal.prune(covered_id=0) == 15
    assert journal.rows == 10
    assert [i for i, _ in journal.read_after(0)] == list(range(16, 26))
    journal.close()
    reopened = Journal(tmp_path / "j.sqlite3", max_rows=10)
    reopened.open()
    assert reopened.dropped == 15
    reopened.close()


def test_snapshot_round_trip(tmp_path: Path) -> None:
    journal = Journal(tmp_path / "j.sqlite3")
    journal.open()
    assert journal.load_snapshot() is None
    journal.save_snapshot(7, b"state")
    assert journal.load_snapshot() == (7, b"state")
    journal.close()


def test_unwritable_journal_path_fails_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(JournalError, match="cannot open the journal"):
        Journal(tmp_path / "file" / "j.sqlite3").open()
