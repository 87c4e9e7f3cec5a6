"""The bounded dead-letter list: every rejected message or reading, with its reason."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from twin.messages import Decoded, RawMessage

_PREVIEW_BYTES = 256


class DeadLetters:
    """Keeps the newest `capacity` rejections and counts all of them by reason."""

    def __init__(
        self,
        capacity: int = 1000,
        listener: Callable[[RawMessage, dict[str, Any]], None] | None = None,
    ) -> None:
        self.listener = listener  # told of each new entry (a cluster worker publishes them)
        self._lock = threading.Lock()
        self._entries: deque[dict[str, Any]] = deque(maxlen=capacity)
        self._next_id = 1
        self.by_reason: Counter[str] = Counter()

    def add(self, raw: RawMessage, decoded: Decoded) -> None:
        if not decoded.rejections:
            return
        address = decoded.address
        preview = raw.payload[:_PREVIEW_BYTES].decode("utf-8", errors="replace")
        for rejection in decoded.rejections:
            entry = {
                "received_at": raw.received_ms,
                "topic": raw.topic[:300],
                "site": address.site if address else None,
                "machine": address.machine if address else None,
                "reason": rejection.reason,
                "detail": rejection.detail,
                "index": rejection.index,
                "payload": preview,
            }
            self.record(entry)
            if self.listener is not None:
                self.listener(raw, entry)

    def record(self, entry: dict[str, Any]) -> None:
        """Keep one entry (the fields `add` makes), under the next id."""
        with self._lock:
            self.by_reason[entry["reason"]] += 1
            self._entries.append({"id": self._next_id, **entry})
            self._next_id += 1

    @property
    def total(self) -> int:
        return sum(self.by_reason.values())

    def query(
        self, machine: str | None = None, reason: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Newest first."""
        with self._lock:
            entries = list(self._entries)
        out = []
        for entry in reversed(entries):
            if machine is not None and entry["machine"] != machine:
                continue
            if reason is not None and entry["reason"] != reason:
                continue
            out.append(entry)
            if len(out) >= limit:
                break
        return out

    def clear(self) -> int:
        """Empty the list (the counters stay); return how many entries were dropped."""
        with self._lock:
            dropped = len(self._entries)
            self._entries.clear()
            return dropped

    def dump(self) -> dict[str, Any]:
        with self._lock:
            return {
                "entries": list(self._entries),
                "next_id": self._next_id,
                "by_reason": dict(self.by_reason),
            }

    def load(self, data: dict[str, Any]) -> None:
        with self._lock:
            self._entries.clear()
            self._entries.extend(data["entries"])
            self._next_id = data["next_id"]
            self.by_reason = Counter(data["by_reason"])
