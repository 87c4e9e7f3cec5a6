"""The recent readings of one twin, kept as rows of floats for `stats`.

A reading is a row: its event time in one array, and its values in one flat array of floats,
a slot per signal the machine has sent (NaN where this reading did not carry it). Compared with
keeping each reading's dict, a row costs 8 bytes a signal instead of about 70. A reading whose
signals come in the usual order (the common case: a device sends the same fields each time) is
appended with one `extend` (about 0.5 us, against 1.9 for an append per signal). `stats` over a
full window of 500 readings of five signals costs about 23 us instead of 150: numpy over a view
per signal, or the builtins for a few rows, where numpy's fixed cost is more.

The arrays grow at the end and drop their oldest rows in one move once they hold a quarter more
than `size`; every read sees the newest `size` rows.
"""

from __future__ import annotations

import base64
import bisect
import itertools
import math
import sys
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

_NAN = math.nan
_SMALL = 48  # rows up to which the builtins sum faster than numpy
Stats = dict[str, dict[str, float]]


class RecentWindow:
    """The newest `size` readings of one machine, in arrival order."""

    __slots__ = ("_disorder", "_limit", "_names", "_ts", "_values", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._limit = size + max(8, size // 4)  # rows held before the oldest are dropped
        self._ts = array("q")
        self._names: tuple[str, ...] = ()  # the signals, in the order of a row's slots
        self._values = array("d")  # len(_ts) rows of len(_names) slots
        self._disorder = -1  # row index of the newest reading older than the one before it

    def _first(self) -> int:
        """The index of the oldest row within the window (older ones wait for a trim)."""
        return max(len(self._ts) - self.size, 0)

    def append(self, ts: int, values: dict[str, float]) -> None:
        stamps = self._ts
        if stamps and ts < stamps[-1]:
            self._disorder = len(stamps)
        if tuple(values) == self._names:
            self._values.extend(values.values())
        else:
            self._append_other(values)
        stamps.append(ts)
        if len(stamps) >= self._limit:
            self._trim()

    def extend(self, rows: list[tuple[int, dict[str, float]]]) -> None:
        """`append` each row; a batch in event-time order with the usual signals in one go."""
        names, stamps = self._names, self._ts
        times = [ts for ts, _ in rows]
        if (
            len(rows) < 2
            or (stamps and times[0] < stamps[-1])
            or times != sorted(times)
            or not all(tuple(values) == names for _, values in rows)
        ):
            for ts, values in rows:
                self.append(ts, values)
            return
        self._values.extend(itertools.chain.from_iterable(values.values() for _, values in rows))
        stamps.extend(times)
        if len(stamps) >= self._limit:
            self._trim()

    def _trim(self) -> None:
        """Drop the rows older than the newest `size`."""
        drop = len(self._ts) - self.size
        del self._ts[:drop]
        del self._values[: drop * len(self._names)]
        self._disorder -= drop

    def _append_other(self, values: dict[str, float]) -> None:
        """A reading with other signals than the slots, or in another order."""
        new = [name for name in values if name not in self._names]
        if new:  # a slot for each new signal, NaN in the rows before
            old, width, rows = self._values, len(self._names), len(self._ts)
            self._names += tuple(new)
            wider = len(self._names)
            self._values = array("d", [_NAN]) * (rows * wider)
            for slot in range(width):
                self._values[slot::wider] = old[slot::width]
        get = values.get
        self._values.extend([get(name, _NAN) for name in self._names])

    def _column(self, slot: int, first: int) -> array[float]:
        width = len(self._names)
        return self._values[first * width + slot :: width]

    def stats(self, since: int) -> Stats:
        """count/mean/min/max of each signal over the rows with event time >= `since`."""
        first = self._first()
        if len(self._ts) - first <= _SMALL:
            return self._stats_small(first, since)
        width = len(self._names)
        table = np.frombuffer(self._values, dtype=np.float64).reshape(-1, width)[first:]
        if self._disorder >= first:
            stamps = np.frombuffer(self._ts, dtype=np.int64)[first:]
            table = table[stamps >= since]
        else:  # in event-time order: the window is a suffix
            table = table[bisect.bisect_left(self._ts, since, first) - first :]
        out: Stats = {}
        for slot, name in enumerate(self._names):
            values = table[:, slot]
            total = float(values.sum())
            if math.isnan(total):  # a signal some readings did not carry
                values = values[~np.isnan(values)]
                total = float(values.sum())
            if len(values):
                out[name] = _summary(len(values), total, float(values.min()), values.max())
        return out

    def _stats_small(self, first: int, since: int) -> Stats:
        """`stats` with the builtins: faster than numpy's fixed cost for a few rows."""
        stamps = self._ts
        unordered = self._disorder >= first
        if unordered:
            picked = [i - first for i in range(first, len(stamps)) if stamps[i] >= since]
        else:
            start = bisect.bisect_left(stamps, since, first) - first
        out: Stats = {}
        for slot, name in enumerate(self._names):
            column = self._column(slot, first)
            values: Sequence[float] = [column[i] for i in picked] if unordered else column[start:]
            total = sum(values)
            if total != total:  # NaN: a signal some readings did not carry
                values = [v for v in values if v == v]
                total = sum(values)
            if values:
                out[name] = _summary(len(values), total, min(values), max(values))
        return out

    def copy(self, since: int) -> RecentWindow:
        """The rows from event time `since` on (all rows, when some arrived out of order)."""
        first = self._first()
        if self._disorder < first:
            first = bisect.bisect_left(self._ts, since, first)
        copy = RecentWindow(self.size)
        copy._ts = self._ts[first:]
        copy._names = self._names
        copy._values = self._values[first * len(self._names) :]
        copy._disorder = self._disorder - first
        return copy

    def rows(self) -> list[tuple[int, dict[str, float]]]:
        """The readings as (ts, values) in arrival order, each with the signals it carried."""
        first = self._first()
        stamps = self._ts[first:].tolist()
        columns = [
            (name, self._column(slot, first).tolist()) for slot, name in enumerate(self._names)
        ]
        return [
            (ts, {name: v[i] for name, v in columns if v[i] == v[i]}) for i, ts in enumerate(stamps)
        ]

    def dump(self) -> dict[str, Any]:
        """The window for a snapshot: its arrays as little-endian bytes (msgspec writes them
        as base64), not as one Python number per value, which at 10,000 machines took more
        memory than the twins themselves while the snapshot was written."""
        first = self._first()
        return {
            "names": list(self._names),
            "ts": _little(self._ts[first:]).tobytes(),
            "values": _little(self._values[first * len(self._names) :]).tobytes(),
        }

    def load(self, data: dict[str, Any] | list[list[Any]]) -> None:
        """Restore a `dump`, or the rows of a snapshot taken before the window was columnar."""
        if isinstance(data, list):
            for ts, values in data:
                self.append(ts, values)
            return
        self._names = tuple(data["names"])
        self._ts = _little(array("q", _raw(data["ts"])))
        self._values = _little(array("d", _raw(data["values"])))
        stamps = self._ts
        self._disorder = max(
            (i for i in range(1, len(stamps)) if stamps[i] < stamps[i - 1]), default=-1
        )


def _raw(data: bytes | str) -> bytes:
    """The bytes of a dump: as dumped, or as base64 after a JSON round trip."""
    return base64.b64decode(data) if isinstance(data, str) else data


def _little(values: array[Any]) -> array[Any]:
    """`values` in little-endian order (swapped in place on a big-endian machine)."""
    if sys.byteorder == "big":
        values.byteswap()
    return values


def _summary(n: int, total: float, low: float, high: float) -> dict[str, float]:
    return {"count": n, "mean": total / n, "min": low, "max": float(high)}
