"""What the twin tells the outside: over MQTT, for tools that speak MQTT but not HTTP, and on
the `/stream` event hub.

Every alert change goes to `{root}/{site}/{machine}/alert` (QoS 1). A machine's twin state goes
retained to `{root}/{site}/{machine}/twin` when it changes, at most once per
`twin_publish_interval_s` per machine (changes in between are sent when the interval is up), and
at most `max_per_s` twins a second across the fleet: past that, the twins that have waited
longest go first, so with more machines changing than the budget a second each one goes out
less often than its interval, and the cost of publishing stays flat as the fleet grows (a twin
costs about as much to publish as a reading to ingest). The stream gets the same events at the
same cadence.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import time
from collections.abc import Callable, Iterable

import msgspec

from twin.alerts import Alert
from twin.state import FleetState, MachineTwin
from twin.stream import EventHub
from twin.topics import Topics

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, bool], None]  # topic, payload, retain


class Outbound:
    """Publishes alert changes at once and changed twins at the twin cadence."""

    def __init__(
        self,
        state: FleetState,
        topics: Topics,
        publish: Publish,
        hub: EventHub,
        interval_s: float = 1.0,
        max_per_s: float = 0.0,  # 0: no fleet-wide budget
    ) -> None:
        self.state = state
        self.hub = hub
        self.topics = topics
        self.publish = publish
        self.interval_s = interval_s
        self.max_per_s = max_per_s
        self._allowance = max_per_s  # twins that may go out now: a second's worth at most
        self._refilled = time.monotonic()
        self._limit_logged = float("-inf")
        self._sent: dict[str, float] = {}
        self._waiting: set[MachineTwin] = set()
        self._due: list[tuple[float, int, MachineTwin]] = []  # heap of waiting twins by due time
        self._order = itertools.count()

    def alert(self, alert: Alert) -> None:
        body = msgspec.json.encode(alert)  # msgspec encodes the dataclass's fields directly
        self.publish(self.topics.alert(alert.site, alert.machine), body, False)
        self.hub.publish_json("alert", alert.site, alert.machine, body)

    def twins(self, changed: Iterable[MachineTwin]) -> None:
        """Publish changed twins whose interval is up; keep the others for a later call."""
        for twin in changed:
            if twin not in self._waiting:
                self._waiting.add(twin)
                when = self._sent.get(twin.machine, -self.interval_s) + self.interval_s
                heapq.heappush(self._due, (when, next(self._order), twin))
        now = time.monotonic()
        most = self._budget(now)
        due: list[MachineTwin] = []
        while self._due and self._due[0][0] <= now and len(due) < most:
            due.append(heapq.heappop(self._due)[2])
        self._note_limit(bool(self._due) and self._due[0][0] <= now)
        if not due:
            return
        if self.max_per_s:
            self._allowance -= len(due)
        self._waiting.difference_update(due)
        window_ms = self.state.window_ms
        for twin in due:  # on the journal thread, the state's writer: no lock needed to read
            body = msgspec.json.encode(twin.public(window_ms))
            self.publish(self.topics.twin(twin.site, twin.machine), body, True)
            self.hub.publish_json("twin", twin.site, twin.machine, body)
            self._sent[twin.machine] = now

    def _budget(self, now: float) -> float:
        """How many twins may go out now."""
        if not self.max_per_s:
            return float("inf")
        elapsed, self._refilled = now - self._refilled, now
        self._allowance = min(self.max_per_s, self._allowance + elapsed * self.max_per_s)
        return int(self._allowance)

    def _note_limit(self, limited: bool) -> None:
        """Say when the budget starts holding twins back (at most once a minute)."""
        now = time.monotonic()
        if limited and now - self._limit_logged >= 60:
            self._limit_logged = now
            log.info(
                "twin publication at its budget of %.0f a second: %d twins waiting, so each goes "
                "out less often than every %.1f s (TWIN_TWIN_PUBLISH_MAX_PER_S)",
                self.max_per_s,
                len(self._due),
                self.interval_s,
            )
