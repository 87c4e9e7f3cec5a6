"""Open alerts in the `twin_alerts` bucket: one key per (site, machine, rule) episode.

Opening an alert is a KV `create`, which fails when the key exists: a worker that replays what a
former owner of the partition already reacted to finds the episode open and takes it over
instead of raising it again. A change is a compare-and-swap that first takes in what others
wrote (an acknowledgement from `twin api`); clearing deletes the key. Every alert has the same
id wherever it is seen: a hash of (site, machine, rule, raised_at).

The alert manager runs on the worker's core thread; these calls hop to the worker's event loop
and wait for the server (a round trip each, and alerts change rarely). If the server does not
answer, the worker goes on with its own view and logs it: an alert may then be raised twice,
never lost.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import msgspec
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import Error as NatsError
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from twin.alerts import Alert
from twin.cluster.layout import Mirror

log = logging.getLogger(__name__)

T = TypeVar("T")
_WAIT_S = 3.0  # for one bucket call
_BACKOFF_S = 5.0  # after a failed call, this long on the worker's own view only


def episode_key(site: str, machine: str, rule: str) -> str:
    """The bucket key; '.' in a name becomes '=' (a key's tokens are split on '.')."""
    return ".".join(part.replace(".", "=") for part in (site, machine, rule))


def episode_id(alert: Alert) -> int:
    """The same id for an episode on every worker and API (48 bits: exact in JSON numbers)."""
    name = f"{alert.site}/{alert.machine}/{alert.rule}/{alert.raised_at}".encode()
    return int.from_bytes(hashlib.blake2b(name, digest_size=6).digest(), "big")


def message_id(alert: Alert) -> str:
    """The alerts stream's `Nats-Msg-Id` of one change: duplicates within its window drop."""
    return f"{alert.id}:{alert.state}:{alert.updated_at}:{int(alert.acknowledged)}"


class KvEpisodes:
    """`Episodes` over a KV bucket, for the alert manager of a worker."""

    def __init__(self) -> None:
        self._kv: KeyValue | None = None
        self._mirror: Mirror | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.failures = 0
        self._skip_until = 0.0

    async def start(self, kv: KeyValue) -> None:
        """Bind to the bucket and follow it (from the worker's event loop)."""
        self._kv, self._loop = kv, asyncio.get_running_loop()
        self._mirror = Mirror(kv)
        await self._mirror.start()

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()

    def open_for(self, machines: Iterable[str]) -> list[Alert]:
        """The open episodes of `machines`, to adopt with a partition."""
        if self._mirror is None:
            return []
        wanted = set(machines)
        found = []
        for entry in list(self._mirror.entries.values()):
            if entry.value:
                alert = msgspec.json.decode(entry.value, type=Alert)
                if alert.machine in wanted:
                    found.append(alert)
        return found

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a bucket call on the loop; while the bucket has just failed (a leader moving, the
        server away), fail at once rather than hold the core thread for each alert."""
        if self._loop is None or time.monotonic() < self._skip_until:
            coro.close()
            raise RuntimeError("the alert bucket is not available")
        try:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_WAIT_S)
        except (TimeoutError, OSError, NoRespondersError, ConnectionClosedError):
            self._skip_until = time.monotonic() + _BACKOFF_S
            raise

    def _kv_(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("the alert bucket is not bound")
        return self._kv

    # -- Episodes (core thread) ---------------------------------------------------------------

    def open(self, alert: Alert) -> Alert:
        alert.id = episode_id(alert)
        key = episode_key(alert.site, alert.machine, alert.rule)
        kv = self._kv_()
        try:
            self._call(kv.create(key, msgspec.json.encode(alert)))
            return alert
        except KeyWrongLastSequenceError:
            pass
        except (NatsError, TimeoutError, OSError, RuntimeError) as exc:
            self._failed("open", alert, exc)
            return alert
        try:
            entry = self._call(kv.get(key))
        except (NatsError, TimeoutError, OSError, RuntimeError) as exc:
            self._failed("read", alert, exc)
            return alert
        if not entry.value:
            return alert
        open_ = msgspec.json.decode(entry.value, type=Alert)
        log.info(
            "alert %d on %s (%s) is open already: taken over", open_.id, alert.machine, alert.rule
        )
        return open_

    def changed(self, alert: Alert) -> None:
        key = episode_key(alert.site, alert.machine, alert.rule)
        kv = self._kv_()
        for _ in range(3):
            try:
                entry = self._call(kv.get(key))
                if entry.value:
                    theirs = msgspec.json.decode(entry.value, type=Alert)
                    if theirs.id == alert.id and theirs.acknowledged and not alert.acknowledged:
                        alert.acknowledged = True
                        alert.acknowledged_by = theirs.acknowledged_by
                        alert.acknowledged_at = theirs.acknowledged_at
                        alert.comment = theirs.comment
                self._call(kv.update(key, msgspec.json.encode(alert), last=entry.revision))
                return
            except KeyWrongLastSequenceError:
                continue  # written meanwhile: read it again
            except (NatsError, TimeoutError, OSError, RuntimeError) as exc:
                self._failed("update", alert, exc)
                return

    def close(self, alert: Alert) -> None:
        try:
            self._call(self._kv_().delete(episode_key(alert.site, alert.machine, alert.rule)))
        except (NatsError, TimeoutError, OSError, RuntimeError) as exc:
            self._failed("close", alert, exc)

    def _failed(self, what: str, alert: Alert, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            log.warning(
                "could not %s alert %d in the cluster's bucket (%s); %d such failures so far",
                what,
                alert.id,
                exc or type(exc).__name__,
                self.failures,
            )
