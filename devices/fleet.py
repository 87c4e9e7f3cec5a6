"""A simulated fleet: machines stepping at a rate, each with its own connection, on one loop.

Each machine also takes the jobs the twin sends it (`{root}/{site}/{machine}/jobs`): when idle,
it starts the first job that is `ready` (`started` event), works on it for its `duration_min`
of simulated time and reports it `done`; a job the twin withdraws (cancelled, or moved) is
dropped. `time_scale` is simulated minutes per real second for that work (1/60: real time); the
readings keep their rate, with their physics and failures as without jobs.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from devices.publisher import DevicePublisher, NetworkLoop
from devices.simulator import Machine, make_fleet
from twin.config import BrokerAddress
from twin.messages import DeviceEvent, Reading
from twin.topics import Topics

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FleetOptions:
    machines: int = 20
    rate_hz: float = 1.0  # processes (readings) per machine per second
    site: str = "site1"
    seed: int = 0
    batch: int = 1  # readings per MQTT message
    count: int | None = None  # readings per machine, then stop; None runs until stopped
    protocol: str = "5"
    prefix: str = "m"  # machine ids are <prefix>0000, <prefix>0001, ...: unique across sites
    time_scale: float = 1 / 60  # simulated minutes of job work per real second


@dataclass
class _Work:
    """One machine's jobs: the latest list from the twin (swapped whole by the network loop's
    thread, read by the fleet's) and the job under way."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    current: str | None = None
    remaining_min: float = 0.0
    done: set[str] = field(default_factory=set)

    def take(self, jobs: list[dict[str, Any]]) -> None:
        self.jobs = jobs

    def step(self, minutes: float) -> list[DeviceEvent]:
        """Advance the work by `minutes` of simulated time: the job events it causes."""
        jobs = self.jobs
        events = []
        if self.current is not None:
            if all(j.get("job") != self.current for j in jobs):
                log.info("job %s withdrawn", self.current)
                self.current = None
            else:
                self.remaining_min -= minutes
                if self.remaining_min <= 0:
                    events.append(DeviceEvent(type="job", code="done", job=self.current))
                    self.done.add(self.current)
                    self.current = None
        if self.current is None:
            for job in jobs:
                if job.get("ready") and job.get("job") not in self.done:
                    self.current = str(job["job"])
                    self.remaining_min = float(job.get("duration_min", 0.0))
                    events.append(DeviceEvent(type="job", code="started", job=self.current))
                    break
        return events


class Fleet:
    """Runs `FleetOptions.machines` simulated machines against one broker."""

    def __init__(self, broker: BrokerAddress, topics: Topics, options: FleetOptions) -> None:
        self.options = options
        self.machines: list[Machine] = make_fleet(options.machines, options.seed, options.prefix)
        self.loop = NetworkLoop()
        self.work = [_Work() for _ in self.machines]
        self.publishers = [
            DevicePublisher(
                broker,
                topics,
                options.site,
                m.name,
                m.type,
                loop=self.loop,
                protocol=options.protocol,
                on_jobs=work.take,
            )
            for m, work in zip(self.machines, self.work, strict=True)
        ]
        self.readings = 0
        self.events = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, connect_timeout: float = 10.0) -> None:
        """Connect every machine (waiting up to `connect_timeout` in all), then start stepping."""
        for publisher in self.publishers:
            publisher.start()
        total = len(self.publishers)
        deadline = time.monotonic() + connect_timeout
        reported = time.monotonic()
        while (connected := self.connected) < total and time.monotonic() < deadline:
            if time.monotonic() - reported >= 2:
                log.info("%d of %d machines connected", connected, total)
                reported = time.monotonic()
            time.sleep(0.05)
        if connected < total:
            log.warning(
                "%d of %d machines not connected yet; their readings are queued",
                total - connected,
                total,
            )
        self._thread = threading.Thread(target=self._run, name="fleet", daemon=True)
        self._thread.start()

    @property
    def connected(self) -> int:
        """Machines whose connection is up."""
        return sum(p.connected for p in self.publishers)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a `count`-bounded run has published everything; True when done."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Stop stepping, let the broker acknowledge what was published, say offline, disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        deadline = time.monotonic() + timeout
        for publisher in self.publishers:
            publisher.say_offline()
        for publisher in self.publishers:
            publisher.wait_delivered(max(0.0, deadline - time.monotonic()))
            publisher.disconnect()
        self.loop.close(max(0.0, deadline - time.monotonic()))

    def _run(self) -> None:
        opts = self.options
        period = 1.0 / opts.rate_hz
        minutes = opts.time_scale * period  # of job work per tick
        seqs = [0] * len(self.machines)
        pending: list[list[Reading]] = [[] for _ in self.machines]
        next_tick = time.monotonic()
        step = 0
        last_ms = 0
        while not self._stop.is_set() and (opts.count is None or step < opts.count):
            # Strictly increasing event time: a time-series store keeps one point per series and
            # timestamp, so two readings of a machine in the same millisecond would merge.
            now_ms = max(int(time.time() * 1000), last_ms + 1)
            last_ms = now_ms
            for i, (machine, publisher) in enumerate(
                zip(self.machines, self.publishers, strict=True)
            ):
                values, events = machine.step()
                pending[i].append(Reading(now_ms, seqs[i], values))
                seqs[i] += 1
                if len(pending[i]) >= opts.batch or events:
                    publisher.publish_readings(pending[i])
                    pending[i] = []
                for event in events:
                    publisher.publish_event(
                        DeviceEvent(type=event.type, ts=now_ms, code=event.code)
                    )
                jobs = self.work[i].step(minutes)
                for job in jobs:
                    publisher.publish_event(job.model_copy(update={"ts": now_ms}))
                self.events += len(events) + len(jobs)
            self.readings += len(self.machines)
            step += 1
            next_tick += period
            delay = next_tick - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
        for i, publisher in enumerate(self.publishers):
            if pending[i]:
                publisher.publish_readings(pending[i])
