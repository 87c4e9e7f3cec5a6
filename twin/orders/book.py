"""The order book: placed orders, scheduled onto the fleet, followed to delivery.

An order is a scheme (`quote.configure`) scheduled in routing order (`planning.routing`) after
the work the fleet already holds: the allocations the ledger keeps and every booked operation
of the open orders, so that no machine is booked twice. Orders are kept in the twin's SQLite
file (one row per order, as JSON) and survive a restart.

Machines are told their work: `{root}/{site}/{machine}/jobs` (retained, QoS 1) holds its next
`JOBS` operations in planned order, each `ready` once the operations before it are done,
re-published whenever they change. A machine reports
`{"type": "job", "code": "started" | "done", "job": "<order>/<operation>"}` events; an
operation goes `planned` -> `started` -> `done` (an event that does not advance it is ignored,
so a replay changes nothing), and the order `accepted` -> `in_production` -> `done`, or
`cancelled`; `late` while its ETA is past its due time. The ETA is recomputed from what has
happened: done operations at their end, a started one at its start plus its duration (not
before now), the rest in sequence from their planned start (not before now).

Trouble re-plans: when a machine holding planned operations raises a risk or offline alert, or
reports a failure, each order with a planned operation on it has its planned operations (from
the first) scheduled again on the usable machines without it; started operations stay. Every
change goes out as an `order` event on `/stream` and on `{root}/$twin/orders` (QoS 1).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from twin import database
from twin.alerts import Alert
from twin.errors import Conflict, NotFound, StorageError
from twin.messages import DeviceEvent
from twin.orders.quote import MINUTE_MS, Scheme, rfc3339
from twin.outbound import Publish
from twin.planning import AllocationLedger, Machine
from twin.planning.allocation import usable_machines
from twin.planning.ledger import marks
from twin.planning.routing import Booking, Step, eligible, schedule
from twin.stream import EventHub
from twin.topics import Topics

log = logging.getLogger(__name__)

JOBS = 5  # operations a machine's jobs topic lists
OpState = Literal["planned", "started", "done", "cancelled"]
Status = Literal["accepted", "in_production", "late", "done", "cancelled"]
_CLOSED = ("done", "cancelled")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at INTEGER NOT NULL,
    status TEXT NOT NULL,
    customer TEXT,
    product TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_status ON orders (status, id);
"""


@dataclass
class Operation:
    seq: int
    name: str
    machine_type: str | None
    site_required: str | None
    quantity: int
    setup_min: float
    minutes_per_unit: float
    machine: str
    site: str
    planned_start_ms: int
    planned_end_ms: int
    transfer_min: float
    state: OpState = "planned"
    started_ms: int | None = None
    done_ms: int | None = None

    @property
    def duration_ms(self) -> int:
        return round((self.setup_min + self.minutes_per_unit * self.quantity) * MINUTE_MS)

    def step(self) -> Step:
        return Step(
            self.name,
            self.machine_type,
            self.site_required,
            self.setup_min,
            self.minutes_per_unit,
            self.quantity,
        )


@dataclass
class Order:
    id: int
    created_at: int
    product: str
    name: str
    options: dict[str, str]
    quantity: int
    customer: str | None
    due_ms: int | None
    price: dict[str, Any]
    operations: list[Operation]
    status: Status = "accepted"
    eta_ms: int = 0
    done_at: int | None = None
    cancelled_at: int | None = None
    replans: int = 0
    moves: list[dict[str, Any]] = field(default_factory=list)

    def public(self) -> dict[str, Any]:
        body = asdict(self)
        body["eta"] = rfc3339(self.eta_ms)
        body["due"] = None if self.due_ms is None else rfc3339(self.due_ms)
        body["on_time"] = None if self.due_ms is None else self.eta_ms <= self.due_ms
        for op in body["operations"]:
            op["job"] = f"{self.id}/{op['name']}"
        return body


def _order(body: dict[str, Any]) -> Order:
    ops = [Operation(**op) for op in body.pop("operations")]
    return Order(**body, operations=ops)


class OrderBook:
    """Orders, their bookings and their progress (any thread; one lock, one connection)."""

    def __init__(
        self,
        path: Path,
        planner: AllocationLedger,
        hub: EventHub,
        publish: Publish,
        topics: Topics,
        transfer_min: float,
    ) -> None:
        self.path = path
        self.planner = planner
        self.hub = hub
        self.publish = publish
        self.topics = topics
        self.transfer_min = transfer_min
        self._db: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._open: dict[int, Order] = {}
        self._by_machine: dict[str, set[int]] = {}  # machine -> open orders with work on it

    def open(self) -> None:
        try:
            db = self._db = database.connect(self.path)
            db.executescript(_SCHEMA)
            rows = db.execute(
                "SELECT body FROM orders WHERE status NOT IN (?, ?) ORDER BY id", _CLOSED
            ).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the orders in {self.path}: {exc}") from exc
        for (body,) in rows:
            order = _order(json.loads(body))
            self._open[order.id] = order
            self._index(order)
        log.info("orders: %d open", len(self._open))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        assert self._db is not None, "the order book is not open"
        try:
            return self._db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StorageError(f"orders in {self.path}: {exc}") from exc

    def _save(self, order: Order) -> None:
        body = json.dumps(asdict(order))
        self._execute(
            "UPDATE orders SET status = ?, body = ? WHERE id = ?", (order.status, body, order.id)
        )

    # -- placing ----------------------------------------------------------------------------

    def booked(self, now_ms: int, leave_out: Collection[int] = ()) -> dict[str, float]:
        """Per machine, minutes from now until the open orders' operations on it end (and the
        ledger's allocations), leaving out the planned operations of the orders `leave_out`."""
        load = self.planner.committed(now_ms)
        with self._lock:
            for machine, ids in self._by_machine.items():
                end = max(
                    (
                        _end(op, now_ms)
                        for i in ids
                        for op in self._open[i].operations
                        if op.machine == machine
                        and op.state in ("planned", "started")
                        and not (op.state == "planned" and i in leave_out)
                    ),
                    default=now_ms,
                )
                if end > now_ms:
                    load[machine] = max(load.get(machine, 0.0), (end - now_ms) / MINUTE_MS)
        return load

    def _index(self, order: Order) -> None:
        """Keep `_by_machine` true for `order` (after a change or a close)."""
        for ids in self._by_machine.values():
            ids.discard(order.id)
        if order.status not in _CLOSED:
            for op in order.operations:
                if op.state in ("planned", "started"):
                    self._by_machine.setdefault(op.machine, set()).add(order.id)

    def fleet(
        self, now_ms: int, max_risk: float | None, leave_out: Collection[int] = ()
    ) -> tuple[list[Machine], list[dict[str, Any]]]:
        """The machines usable under `max_risk` (default: the model's threshold), loaded with
        what they hold, and the others with why (`allocation.usable_machines`)."""
        limit = self.planner.default_max_risk() if max_risk is None else max_risk
        fleet = self.planner.fleet(self.booked(now_ms, leave_out))
        return usable_machines(sorted(fleet, key=lambda m: m.machine), limit)

    def place(
        self,
        scheme: Scheme,
        customer: str | None,
        due_ms: int | None,
        max_risk: float | None,
        now_ms: int,
    ) -> dict[str, Any]:
        """Schedule the scheme after the work the fleet holds and keep it; a 409 naming the
        operation when no usable machine can take one."""
        with self._lock:
            machines, _ = self.fleet(now_ms, max_risk)
            bookings = schedule(scheme.steps, machines, self.transfer_min)
            if isinstance(bookings, str):
                raise Conflict(f"the order cannot be scheduled now: {bookings}")
            price = scheme.public()["price"]
            cursor = self._execute(
                "INSERT INTO orders (created_at, status, customer, product, body) "
                "VALUES (?, 'accepted', ?, ?, '{}')",
                (now_ms, customer, scheme.product.id),
            )
            assert cursor.lastrowid is not None
            order = Order(
                cursor.lastrowid,
                now_ms,
                scheme.product.id,
                scheme.product.name,
                scheme.options,
                scheme.quantity,
                customer,
                due_ms,
                price,
                [_operation(i, b, now_ms) for i, b in enumerate(bookings)],
            )
            self._open[order.id] = order
            self._changed(order, now_ms, {op.machine for op in order.operations})
            return order.public()

    # -- reading ----------------------------------------------------------------------------

    def get(self, order_id: int) -> dict[str, Any]:
        with self._lock:
            order = self._open.get(order_id)
            if order is not None:
                return order.public()
            row = self._execute("SELECT body FROM orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            raise NotFound(f"no order {order_id}")
        return _order(json.loads(row[0])).public()

    def page(
        self,
        status: str | None,
        customer: str | None,
        product: str | None,
        limit: int,
        offset: int,
    ) -> tuple[list[dict[str, Any]], int]:
        where, args = [], []
        for column, value in (("status", status), ("customer", customer), ("product", product)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        sql = " WHERE " + " AND ".join(where) if where else ""
        with self._lock:
            total = self._execute(f"SELECT count(*) FROM orders{sql}", tuple(args)).fetchone()[0]
            rows = self._execute(
                f"SELECT body FROM orders{sql} ORDER BY id DESC LIMIT ? OFFSET ?",
                (*args, limit, offset),
            ).fetchall()
        return [_order(json.loads(b)).public() for (b,) in rows], int(total)

    def jobs(self, machine: str) -> list[dict[str, Any]]:
        """The machine's next operations in planned order: what its jobs topic holds."""
        with self._lock:
            orders = [self._open[i] for i in self._by_machine.get(machine, ())]
            ops = [
                (op.planned_start_ms, order.id, op, all(o.state == "done" for o in before))
                for order in orders
                for k, op in enumerate(order.operations)
                if op.machine == machine and op.state in ("planned", "started")
                for before in [order.operations[:k]]
            ]
        return [
            {
                "job": f"{order_id}/{op.name}",
                "order": order_id,
                "operation": op.name,
                "quantity": op.quantity,
                "duration_min": round(op.duration_ms / MINUTE_MS, 3),
                "planned_start": op.planned_start_ms,
                "planned_end": op.planned_end_ms,
                "state": op.state,
                "ready": ready,  # the operations before it are done
            }
            for _, order_id, op, ready in sorted(ops, key=lambda x: (x[0], x[1]))[:JOBS]
        ]

    def late_on(self, machine: str, now_ms: int) -> dict[str, Any] | None:
        """An open order that is late and whose next operation is on `machine`: what the
        `order_late` alert of that machine says."""
        with self._lock:
            for i in sorted(self._by_machine.get(machine, ())):
                order = self._open[i]
                if order.due_ms is None:
                    continue
                eta = _eta(order, now_ms, self.transfer_min)
                if eta <= order.due_ms:
                    continue
                current = next(op for op in order.operations if op.state != "done")
                if current.machine == machine:
                    return {"order": order.id, "eta": rfc3339(eta), "due": rfc3339(order.due_ms)}
        return None

    # -- changes ----------------------------------------------------------------------------

    def cancel(self, order_id: int, now_ms: int) -> dict[str, Any]:
        with self._lock:
            order = self._open.get(order_id)
            if order is None:
                self.get(order_id)  # a 404 if there is none
                raise Conflict(f"order {order_id} is closed already")
            for op in order.operations:
                if op.state != "done":
                    op.state = "cancelled"
            order.status, order.cancelled_at = "cancelled", now_ms
            self._changed(order, now_ms, {op.machine for op in order.operations})
            return order.public()

    def on_event(self, site: str, machine: str, event: DeviceEvent, at_ms: int) -> None:
        """A machine's job progress, or its failure (its planned operations move); `at_ms`
        is the event's time."""
        if event.type == "failure":
            self.replan_machine(machine, f"failure {event.code}", at_ms)
            return
        if event.type != "job" or event.job is None:
            return
        order_id, _, name = event.job.partition("/")
        with self._lock:
            order = self._open.get(int(order_id)) if order_id.isdigit() else None
            op = next((o for o in order.operations if o.name == name), None) if order else None
            if order is None or op is None:
                log.info("%s reported job %s, which no open order has", machine, event.job)
                return
            touched = {op.machine, machine}
            if event.code == "started" and op.state == "planned":
                op.state, op.started_ms, op.machine, op.site = "started", at_ms, machine, site
            elif event.code == "done" and op.state in ("planned", "started"):
                op.started_ms = op.started_ms or at_ms
                op.state, op.done_ms, op.machine, op.site = "done", at_ms, machine, site
            else:
                return
            self._changed(order, int(time.time() * 1000), touched)

    def on_alert(self, alert: Alert) -> None:
        """A risk or offline alert on a machine with planned operations moves them (the alerts
        that mark allocations, `ledger.marks`)."""
        if marks(alert.state, alert.kind):
            self.replan_machine(alert.machine, f"alert {alert.rule}", alert.updated_at)

    def replan_machine(self, machine: str, why: str, at_ms: int) -> None:
        """Move the planned operations on `machine` of the orders placed before `at_ms` (an
        order placed later knew of the trouble; a replayed event moves nothing twice)."""
        with self._lock:
            hit = [
                self._open[i]
                for i in sorted(self._by_machine.get(machine, ()))
                if self._open[i].created_at <= at_ms
                and any(
                    op.machine == machine and op.state == "planned"
                    for op in self._open[i].operations
                )
            ]
            now_ms = int(time.time() * 1000)
            for order in hit:
                self._replan(order, machine, why, max(now_ms, at_ms))

    def _reschedule(
        self, order: Order, machines: list[Machine], now_ms: int
    ) -> list[tuple[Operation, Operation]] | str:
        """The order's planned operations (from the first) scheduled again on `machines`,
        after what came before them: (old, new) pairs, the new ones in place; or why not."""
        first = next(i for i, op in enumerate(order.operations) if op.state == "planned")
        before = order.operations[first - 1] if first else None
        ready_ms = now_ms if before is None else max(now_ms, _end(before, now_ms))
        moving = order.operations[first:]
        bookings = schedule(
            [op.step() for op in moving],
            machines,
            self.transfer_min,
            ready_min=(ready_ms - now_ms) / MINUTE_MS,
            here=None if before is None else before.site,
        )
        if isinstance(bookings, str):
            return bookings
        pairs = [
            (op, _operation(op.seq, b, now_ms)) for op, b in zip(moving, bookings, strict=True)
        ]
        for _, new in pairs:
            order.operations[new.seq] = new
        return pairs

    def _replan(self, order: Order, avoid: str, why: str, now_ms: int) -> None:
        machines, _ = self.fleet(now_ms, None, leave_out={order.id})
        pairs = self._reschedule(order, [m for m in machines if m.machine != avoid], now_ms)
        if isinstance(pairs, str):
            log.warning("order %d: cannot move its operations off %s: %s", order.id, avoid, pairs)
            return
        touched = {old.machine for old, _ in pairs}
        moves = [
            {"operation": old.name, "from": old.machine, "to": new.machine}
            for old, new in pairs
            if new.machine != old.machine
        ]
        order.replans += 1
        order.moves = [{"why": why, "at": now_ms, **m} for m in moves]
        log.info("order %d re-planned (%s): %s", order.id, why, moves or "no machine changed")
        self._changed(order, now_ms, touched | {op.machine for op in order.operations})

    def _changed(self, order: Order, now_ms: int, machines: Iterable[str]) -> None:
        """Status and ETA from the operations; stored; machines told; the change sent."""
        sites = self._update(order, now_ms)
        self._tell(set(machines) | set(sites), sites, now_ms)  # `ready` moves down the routing

    def _update(self, order: Order, now_ms: int) -> dict[str, str]:
        """Status and ETA from the operations; stored; the change sent. Its machines' sites."""
        ops = order.operations
        order.eta_ms = _eta(order, now_ms, self.transfer_min)
        if order.status != "cancelled":
            if all(op.state == "done" for op in ops):
                order.status, order.done_at = "done", max(op.done_ms or 0 for op in ops)
            elif order.due_ms is not None and order.eta_ms > order.due_ms:
                order.status = "late"
            elif any(op.state != "planned" for op in ops):
                order.status = "in_production"
            else:
                order.status = "accepted"
        self._save(order)
        self._index(order)
        if order.status in _CLOSED:
            self._open.pop(order.id, None)
        body = order.public()
        current = next((op for op in ops if op.state not in _CLOSED), ops[-1])
        data = msgspec.json.encode(body)
        self.hub.publish_json("order", current.site, current.machine, data)
        self.publish(self.topics.orders, data, False)
        return {op.machine: op.site for op in ops}

    def _tell(self, machines: Iterable[str], sites: dict[str, str], now_ms: int) -> None:
        """Each machine's jobs topic, as its jobs now are."""
        for machine in sorted(machines):
            payload = {"machine": machine, "ts": now_ms, "jobs": self.jobs(machine)}
            topic = self.topics.jobs(sites.get(machine) or self._site(machine), machine)
            self.publish(topic, msgspec.json.encode(payload), True)

    def resequence(self, now_ms: int) -> dict[str, Any]:
        """Every open order's planned operations scheduled again, the earliest due first (those
        without a due time last): the EDD list schedule of the work not started, which orders
        placed as they arrived only approximate. Started and done operations stay."""
        began = time.perf_counter()
        with self._lock:
            machines, _ = self.fleet(now_ms, None, leave_out=set(self._open))
            free = {m.machine: m.load_min for m in machines}
            by_due = sorted(
                self._open.values(), key=lambda o: (o.due_ms is None, o.due_ms or 0, o.id)
            )
            moved, kept = 0, 0
            sites: dict[str, str] = {}
            kinds = list({(m.type, m.site): m for m in machines}.values())  # one of each
            movable = []
            for order in by_due:
                planned = [op for op in order.operations if op.state == "planned"]
                if all(any(eligible(op.step(), m) for m in kinds) for op in planned):
                    movable.append(order)
                else:  # some operation has no usable machine now: it keeps its bookings
                    kept += 1
                    for op in planned:
                        end = (op.planned_end_ms - now_ms) / MINUTE_MS
                        free[op.machine] = max(free.get(op.machine, 0.0), end)
            for order in movable:
                if all(op.state != "planned" for op in order.operations):
                    continue
                fleet = [dataclasses.replace(m, load_min=free[m.machine]) for m in machines]
                pairs = self._reschedule(order, fleet, now_ms)
                assert not isinstance(pairs, str), pairs  # every step has a machine
                for old, new in pairs:
                    moved += (new.machine, new.planned_start_ms) != (
                        old.machine,
                        old.planned_start_ms,
                    )
                    free[new.machine] = (new.planned_end_ms - now_ms) / MINUTE_MS
                sites |= self._update(order, now_ms)
            self._tell(set(sites), sites, now_ms)
        seconds = time.perf_counter() - began
        log.info(
            "resequenced %d orders (%d operations moved) in %.2f s", len(by_due), moved, seconds
        )
        return {
            "orders": len(by_due),
            "operations_moved": moved,
            "kept": kept,
            "seconds": round(seconds, 3),
        }

    def _site(self, machine: str) -> str:
        found = self.planner.state.get(machine)
        return str(found["site"]) if found else "unknown"


def _operation(seq: int, booking: Booking, now_ms: int) -> Operation:
    step = booking.step
    return Operation(
        seq,
        step.name,
        step.machine_type,
        step.site,
        step.quantity,
        step.setup_min,
        step.minutes_per_unit,
        booking.machine.machine,
        booking.machine.site,
        now_ms + round(booking.start_min * MINUTE_MS),
        now_ms + round(booking.end_min * MINUTE_MS),
        booking.transfer_min,
    )


def _end(op: Operation, now_ms: int) -> int:
    if op.state == "done" and op.done_ms is not None:
        return op.done_ms
    if op.state == "started" and op.started_ms is not None:
        return max(now_ms, op.started_ms + op.duration_ms)
    return op.planned_end_ms


def _eta(order: Order, now_ms: int, transfer_min: float) -> int:
    """When the last operation will end, from what has happened so far."""
    end, site = order.created_at, None
    for op in order.operations:
        if op.state in ("done", "started"):
            end = _end(op, now_ms)
        elif op.state == "planned":
            moved = round(transfer_min * MINUTE_MS) if site is not None and op.site != site else 0
            start = max(op.planned_start_ms, now_ms, end + moved)
            end = start + op.duration_ms
        site = op.site
    return end
