"""The recent readings of one twin, kept column by column for `stats`.

A reading is a row: its event time in one array, each signal's value in that signal's array
(NaN where the reading did not carry the signal). Compared with keeping each reading's dict,
a row costs 8 bytes a signal instead of about 70, and `stats` over the window is three numpy
reductions over a contiguous view per signal instead of a Python pass over every reading
(about 30 us for a full window of 500 readings of five signals, against 150 us).

The arrays grow by appending and drop their oldest rows in one move once they hold a quarter
more than `size`, so a reading costs a few appends; every read sees the newest `size` rows.
"""

from __future__ import annotations

import bisect
import math
from array import array
from collections.abc import Sequence
from typing import Any

import numpy as np

_NAN = math.nan
_SMALL = 48  # rows up to which the builtins sum faster than numpy
Stats = dict[str, dict[str, float]]


class RecentWindow:
    """The newest `size` readings of one machine, in arrival order."""

    __slots__ = ("_columns", "_disorder", "_ts", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._ts = array("q")
        self._columns: dict[str, array[float]] = {}
        self._disorder = -1  # row index of the newest reading older than the one before it

    def __len__(self) -> int:
        return min(len(self._ts), self.size)

    def append(self, ts: int, values: dict[str, float]) -> None:
        stamps, columns = self._ts, self._columns
        if stamps and ts < stamps[-1]:
            self._disorder = len(stamps)
        if not values.keys() <= columns.keys():
            for name in values:
                if name not in columns:  # a new signal: no value in the rows before
                    columns[name] = array("d", [_NAN]) * len(stamps)
        stamps.append(ts)
        get = values.get
        for name, column in columns.items():
            column.append(get(name, _NAN))
        if len(stamps) >= self.size + max(8, self.size // 4):
            self._trim()

    def _trim(self) -> None:
        drop = len(self._ts) - self.size
        del self._ts[:drop]
        for column in self._columns.values():
            del column[:drop]
        self._disorder -= drop

    def stats(self, since: int) -> Stats:
        """count/mean/min/max of each signal over the rows with event time >= `since`."""
        first = max(len(self._ts) - self.size, 0)
        if len(self._ts) - first <= _SMALL:
            return self._stats_small(first, since)
        if self._disorder >= first:
            stamps = np.frombuffer(self._ts, dtype=np.int64)[first:]
            rows: slice | np.ndarray[Any, np.dtype[np.bool_]] = stamps >= since
        else:  # in event-time order: the window is a suffix
            rows = slice(bisect.bisect_left(self._ts, since, first) - first, None)
        out: Stats = {}
        for name, column in self._columns.items():
            values = np.frombuffer(column, dtype=np.float64)[first:][rows]
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
        if self._disorder >= first:
            picked = [i for i in range(first, len(stamps)) if stamps[i] >= since]
        else:
            start = bisect.bisect_left(stamps, since, first)
        out: Stats = {}
        for name, column in self._columns.items():
            if self._disorder >= first:
                values: Sequence[float] = [column[i] for i in picked]
            else:
                values = column[start:]
            total = sum(values)
            if total != total:  # NaN: a signal some readings did not carry
                values = [v for v in values if v == v]
                total = sum(values)
            if values:
                out[name] = _summary(len(values), total, min(values), max(values))
        return out

    def copy(self, since: int) -> RecentWindow:
        """The rows from event time `since` on (all rows, when some arrived out of order)."""
        first = max(len(self._ts) - self.size, 0)
        if self._disorder < first:
            first = bisect.bisect_left(self._ts, since, first)
        copy = RecentWindow(self.size)
        copy._ts = self._ts[first:]
        copy._columns = {name: column[first:] for name, column in self._columns.items()}
        copy._disorder = self._disorder - first
        return copy

    def rows(self) -> list[tuple[int, dict[str, float]]]:
        """The readings as (ts, values) in arrival order, each with the signals it carried."""
        first = max(len(self._ts) - self.size, 0)
        stamps = self._ts[first:].tolist()
        columns = [(name, column[first:].tolist()) for name, column in self._columns.items()]
        return [
            (ts, {name: v[i] for name, v in columns if v[i] == v[i]}) for i, ts in enumerate(stamps)
        ]

    def dump(self) -> dict[str, Any]:
        first = max(len(self._ts) - self.size, 0)
        return {
            "ts": self._ts[first:].tolist(),
            "columns": {name: c[first:].tolist() for name, c in self._columns.items()},
        }

    def load(self, data: dict[str, Any] | list[list[Any]]) -> None:
        """Restore a `dump`, or the rows of a snapshot taken before the window was columnar."""
        if isinstance(data, list):
            for ts, values in data:
                self.append(ts, values)
            return
        self._ts.extend(data["ts"])
        for name, values in data["columns"].items():
            # JSON has no NaN: msgspec wrote the gaps as null.
            self._columns[name] = array("d", (_NAN if v is None else v for v in values))
        stamps = self._ts
        self._disorder = max(
            (i for i in range(1, len(stamps)) if stamps[i] < stamps[i - 1]), default=-1
        )


def _summary(n: int, total: float, low: float, high: float) -> dict[str, float]:
    return {"count": n, "mean": total / n, "min": low, "max": float(high)}
