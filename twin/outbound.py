"""What the twin tells the outside: over MQTT, for tools that speak MQTT but not HTTP, and on
the `/stream` event hub.

Every alert change goes to `{root}/{site}/{machine}/alert` (QoS 1). A machine's twin state goes
retained to `{root}/{site}/{machine}/twin` when it changes, at most once per
`twin_publish_interval_s` per machine (changes in between are sent when the interval is up). The
stream gets the same events at the same cadence.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable, Iterable

import msgspec

from twin.alerts import Alert
from twin.state import FleetState, MachineTwin
from twin.stream import EventHub
from twin.topics import Topics

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
    ) -> None:
        self.state = state
        self.hub = hub
        self.topics = topics
        self.publish = publish
        self.interval_s = interval_s
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
        due = []
        while self._due and self._due[0][0] <= now:
            due.append(heapq.heappop(self._due)[2])
        if not due:
            return
        self._waiting.difference_update(due)
        window_ms = self.state.window_ms
        for twin in due:  # on the journal thread, the state's writer: no lock needed to read
            body = msgspec.json.encode(twin.public(window_ms))
            self.publish(self.topics.twin(twin.site, twin.machine), body, True)
            self.hub.publish_json("twin", twin.site, twin.machine, body)
            self._sent[twin.machine] = now
