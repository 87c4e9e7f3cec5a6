"""`/allocations` on `twin api`: `twin serve`'s allocation records, shared by every API.

An allocation is solved on the fleet the API follows and kept in the `twin_allocations`
bucket (key `a.<id>`; ids from the `next` key, taken by compare-and-swap), so any instance
answers for it. Every instance follows the alerts: a risk or offline alert on a machine with
assigned work marks the allocation by compare-and-swap (the first instance marks it, the others
find it marked), and `/stream` says so (`allocation` events). A replan is a compare-and-swap
too: two at once, and the second is a 409 to try again. Unlike `twin serve`'s, these survive a
restart of the API.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from typing import Any

from nats.js.errors import KeyNotFoundError, KeyValueError
from nats.js.kv import KeyValue

from twin.cluster.layout import ClusterError
from twin.errors import Conflict, NotFound
from twin.planning.allocation import Machine, Task, allocate
from twin.planning.ledger import (
    apply_replan,
    mark_affected,
    marks,
    new_record,
    public,
    replan_inputs,
)
from twin.stream import EventHub

log = logging.getLogger(__name__)

_NEXT = "next"
_MARK_ATTEMPTS = 50


def _key(allocation_id: int) -> str:
    return f"a.{allocation_id}"


def _encode(record: dict[str, Any]) -> bytes:
    tasks = [dataclasses.asdict(t) for t in record["tasks"].values()]
    return json.dumps({**record, "tasks": tasks}).encode()


def _decode(value: bytes | None) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(value or b"{}")
    record["tasks"] = {t["id"]: Task(**t) for t in record["tasks"]}
    return record


def machines_of(twins: list[dict[str, Any]], load: dict[str, float] | None = None) -> list[Machine]:
    """The allocation's view of the fleet, from the twins' public documents."""
    load = load or {}
    return [
        Machine(
            t["machine"],
            t["site"],
            t.get("type"),
            t.get("online"),
            (t.get("risk") or {}).get("probability"),
            dict((t.get("risk") or {}).get("contributions") or {}),
            load.get(t["machine"], 0.0),
        )
        for t in twins
    ]


class ClusterLedger:
    """Allocations in a KV bucket."""

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self._kv: KeyValue | None = None
        self._marking = asyncio.Lock()

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise ClusterError("not connected to NATS")
        return self._kv

    def start(self, kv: KeyValue) -> None:
        self._kv = kv

    async def _next_id(self) -> int:
        while True:
            try:
                entry = await self.kv.get(_NEXT)
            except KeyNotFoundError:
                try:
                    await self.kv.create(_NEXT, b"1")
                    return 1
                except KeyValueError:
                    continue  # another instance made it first
            taken = int(entry.value or b"0") + 1
            try:
                await self.kv.update(_NEXT, str(taken).encode(), last=entry.revision)
                return taken
            except KeyValueError:
                continue

    async def allocate(
        self, tasks: list[Task], twins: list[dict[str, Any]], horizon_min: float, limit: float
    ) -> dict[str, Any]:
        # Off the event loop: a large solve must not stop the API following the streams.
        result = await asyncio.to_thread(allocate, tasks, machines_of(twins), horizon_min, limit)
        record = new_record(await self._next_id(), tasks, horizon_min, limit, result)
        await self.kv.create(_key(record["id"]), _encode(record))
        return public(record)

    async def _get(self, allocation_id: int) -> tuple[dict[str, Any], int]:
        try:
            entry = await self.kv.get(_key(allocation_id))
        except KeyNotFoundError:
            raise NotFound(f"no allocation {allocation_id}") from None
        return _decode(entry.value), entry.revision or 0

    async def get(self, allocation_id: int) -> dict[str, Any]:
        return public((await self._get(allocation_id))[0])

    async def replan(self, allocation_id: int, twins: list[dict[str, Any]]) -> dict[str, Any]:
        """Move the tasks of affected machines; keep every other assignment."""
        record, revision = await self._get(allocation_id)
        affected, keep, moving, load = replan_inputs(record)
        fleet = [m for m in machines_of(twins, load) if m.machine not in affected]
        moved = await asyncio.to_thread(
            allocate, moving, fleet, record["horizon_min"], record["max_risk"]
        )
        apply_replan(record, keep, moved)
        try:
            await self.kv.update(_key(allocation_id), _encode(record), last=revision)
        except KeyValueError:
            raise Conflict(f"allocation {allocation_id} changed meanwhile; replan again") from None
        return public(record)

    async def on_alert(self, alert: dict[str, Any], entries: list[KeyValue.Entry]) -> None:
        """Mark the allocations (the bucket's `entries`, followed) with work on the alert's
        machine."""
        if not marks(alert["state"], alert["kind"]):
            return
        machine = alert["machine"]
        ids = [
            int(e.key.removeprefix("a."))
            for e in entries
            if e.key.startswith("a.") and f'"machine": "{machine}"' in (e.value or b"").decode()
        ]
        async with self._marking:  # this instance's marks one at a time; others by CAS
            for allocation_id in ids:
                await self._mark(allocation_id, alert)

    async def _mark(self, allocation_id: int, alert: dict[str, Any]) -> None:
        machine = alert["machine"]
        for _ in range(_MARK_ATTEMPTS):
            try:
                record, revision = await self._get(allocation_id)
            except NotFound:
                return
            if not mark_affected(record, machine, alert["id"], alert["rule"], alert["updated_at"]):
                return  # no work there, or another instance marked it
            try:
                await self.kv.update(_key(allocation_id), _encode(record), last=revision)
            except KeyValueError:
                await asyncio.sleep(random.uniform(0.01, 0.05))  # changed meanwhile: again
                continue
            self.hub.publish("allocation", alert["site"], machine, public(record))
            log.info("allocation %d: %s is in alert (%s)", allocation_id, machine, alert["rule"])
            return
        log.warning(
            "allocation %d: %s not marked after %d tries", allocation_id, machine, _MARK_ATTEMPTS
        )
