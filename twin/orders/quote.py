"""Quotes: a customer's choices become a customised scheme, promised against the live fleet.

`configure` turns a product and options (defaults for those left out) into the scheme: the
routing in sequence with each operation's duration for the quantity (set-up plus minutes per
unit), and the price. An unknown option, a value an option does not allow, or a combination a
rule forbids is an `InvalidRequest` naming it.

The promise is capable-to-promise on the fleet as it is: only machines online and under the risk
limit, each free from the end of its accepted work and booked operations, around its accepted
maintenance window, the routing scheduled in order (`twin.planning.routing`). The chance of
finishing on time comes from the risk of the machines used: the expected number of failures
during their operations (`hazard_for`: each machine's forecast chance of a failure per minute,
as it operates now), each failure delaying the order by `repair_min`; with failures as a
Poisson count, the order is on time if no more of them happen than its slack before the due
time absorbs. Up to two alternatives: the whole routing at another site, and the quantity split into
two lots. Deterministic: the same request and fleet give the same scheme and times (minutes
from now).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from scipy.stats import poisson

from twin.errors import InvalidRequest
from twin.orders.catalogue import Catalogue, Operation, Product
from twin.planning.allocation import Machine
from twin.planning.routing import Booking, Step, schedule, split

MINUTE_MS = 60_000
TRANSFER_MIN = 60.0  # moving work between sites
REPAIR_MIN = 60.0  # the delay one failure causes


@dataclass(frozen=True)
class Scheme:
    product: Product
    options: dict[str, str]
    quantity: int
    steps: list[Step]
    price_per_unit: float
    price_once: float

    def public(self) -> dict[str, Any]:
        total = self.price_per_unit * self.quantity + self.price_once
        return {
            "operations": [s.public() for s in self.steps],
            "work_min": round(sum(s.duration_min for s in self.steps), 6),
            "price": {
                "per_unit": round(self.price_per_unit, 2),
                "once": round(self.price_once, 2),
                "total": round(total, 2),
                "currency": self.product.currency,
            },
        }


def configure(
    catalogue: Catalogue, product_id: str, options: Mapping[str, str], quantity: int
) -> Scheme:
    product = catalogue.product(product_id)
    unknown = sorted(set(options) - set(product.options))
    if unknown:
        known = ", ".join(product.options) or "none"
        raise InvalidRequest(f"{product.id} has no option {', '.join(unknown)} (it has {known})")
    chosen = {name: options.get(name, option.default) for name, option in product.options.items()}
    for name, value in chosen.items():
        problem = product.options[name].check(value)
        if problem:
            raise InvalidRequest(f"option {name} = {value!r}: {problem}")
    for rule in product.rules:
        if all(chosen[k] == v for k, v in rule.forbid.items()):
            combination = ", ".join(f"{k} = {v}" for k, v in rule.forbid.items())
            raise InvalidRequest(f"{combination} cannot be combined: {rule.reason}")

    def step(o: Operation) -> Step:
        return Step(o.name, o.machine_type, o.site, o.setup_min, o.minutes_per_unit, quantity)

    steps = [step(o) for o in product.operations]
    per_unit, once = product.price_per_unit, 0.0
    for name, option in product.options.items():
        effect = option.effect_of(chosen[name])
        if effect is None:
            continue
        per_unit += effect.price_per_unit
        once += effect.price
        for op in effect.operations:
            names = [s.name for s in steps]
            steps.insert(names.index(op.after) + 1 if op.after else len(steps), step(op))
        steps = [
            replace(s, minutes_per_unit=s.minutes_per_unit * effect.scale.get(s.name, 1.0))
            for s in steps
        ]
    return Scheme(product, chosen, quantity, steps, per_unit, once)


Hazard = Callable[[str, float, float], float]  # machine, start, end (min) -> expected failures


def promise_of(
    bookings: list[Booking],
    hazard: Hazard,
    now_ms: int,
    due_min: float | None,
    repair_min: float,
) -> dict[str, Any]:
    completion = max(b.end_min for b in bookings)
    expected = sum(hazard(b.machine.machine, b.start_min, b.end_min) for b in bookings)
    p_on_time = None
    if due_min is not None:
        slack = due_min - completion
        p_on_time = (
            0.0 if slack < 0 else float(poisson.cdf(math.floor(slack / repair_min), expected))
        )
    return {
        "completion": rfc3339(now_ms + completion * MINUTE_MS),
        "completion_min": round(completion, 3),
        "on_time": None if due_min is None else completion <= due_min,
        "p_on_time": None if p_on_time is None else round(p_on_time, 4),
        "p_no_failure": round(math.exp(-expected), 4),
        "expected_failures": round(expected, 4),
        "operations": [
            {
                "operation": b.step.name,
                "machine": b.machine.machine,
                "site": b.machine.site,
                "quantity": b.step.quantity,
                "start_min": round(b.start_min, 3),
                "end_min": round(b.end_min, 3),
                "transfer_min": b.transfer_min,
                "risk": b.machine.risk,
            }
            for b in bookings
        ],
    }


def rfc3339(ms: float) -> str:
    return (
        datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class QuoteRequest:
    product: str
    options: dict[str, str]
    quantity: int
    due_ms: int | None = None
    customer: str | None = None
    max_risk: float | None = None


def plans(
    scheme: Scheme, machines: list[Machine], transfer_min: float
) -> tuple[list[Booking] | str, list[tuple[str, str, list[Booking]]]]:
    """The promised plan (or why there is none) and the alternatives: (kind, description,
    bookings), the earliest first, at most two."""
    primary = schedule(scheme.steps, machines, transfer_min)
    alternatives: list[tuple[str, str, list[Booking]]] = []
    if isinstance(primary, str):
        return primary, alternatives
    used = {b.machine.site for b in primary}
    by_site: list[tuple[float, str, list[Booking]]] = []
    for site in sorted({m.site for m in machines} - (used if len(used) == 1 else set())):
        at = schedule(scheme.steps, machines, transfer_min, site)
        if not isinstance(at, str):
            by_site.append((max(b.end_min for b in at), site, at))
    if by_site:
        _, site, at = min(by_site, key=lambda x: (x[0], x[1]))
        alternatives.append(("site", f"every operation at site {site}", at))
    if scheme.quantity >= 2:
        first, second = split(scheme.steps)
        lot1 = schedule(first, machines, transfer_min)
        if not isinstance(lot1, str):
            busy = {b.machine.machine: b.end_min for b in lot1}
            after = [
                replace(m, load_min=max(m.load_min, busy.get(m.machine, 0.0))) for m in machines
            ]
            lot2 = schedule(second, after, transfer_min)
            if not isinstance(lot2, str):
                lots = f"two lots of {first[0].quantity} and {second[0].quantity}"
                alternatives.append(("split", lots, lot1 + lot2))
    alternatives.sort(key=lambda a: (max(b.end_min for b in a[2]), a[0]))
    return primary, alternatives[:2]


def quote(
    catalogue: Catalogue,
    request: QuoteRequest,
    fleet: tuple[list[Machine], list[dict[str, Any]]],
    max_risk: float,
    hazard_for: Callable[[dict[str, float]], Hazard],
    now_ms: int,
    transfer_min: float = TRANSFER_MIN,
    repair_min: float = REPAIR_MIN,
) -> dict[str, Any]:
    """The scheme and its promise on `fleet` (the machines usable under `max_risk`, with their
    load, and the others with why); `hazard_for(risks)` gives the expected failures of the
    machines used (machine -> live risk)."""
    scheme = configure(catalogue, request.product, request.options, request.quantity)
    machines, excluded = fleet
    primary, alternatives = plans(scheme, machines, transfer_min)
    due_min = None if request.due_ms is None else (request.due_ms - now_ms) / MINUTE_MS
    body: dict[str, Any] = {
        "product": scheme.product.id,
        "name": scheme.product.name,
        "options": scheme.options,
        "quantity": scheme.quantity,
        "customer": request.customer,
        "due": None if request.due_ms is None else rfc3339(request.due_ms),
        "quoted_at": rfc3339(now_ms),
        "scheme": scheme.public(),
        "max_risk": max_risk,
        "excluded": excluded,
        "promise": None,
        "unavailable": None,
        "alternatives": [],
    }
    if isinstance(primary, str):
        body["unavailable"] = primary
        return body
    every = [primary, *(b for _, _, b in alternatives)]
    hazard = hazard_for({b.machine.machine: b.machine.risk or 0.0 for bs in every for b in bs})
    body["promise"] = promise_of(primary, hazard, now_ms, due_min, repair_min)
    body["alternatives"] = [
        {"kind": kind, "description": text, **promise_of(b, hazard, now_ms, due_min, repair_min)}
        for kind, text, b in alternatives
    ]
    return body
