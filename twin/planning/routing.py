"""The allocation engine extended with precedence: chains of operations (an order's routing)
onto the live fleet.

Each operation runs after the one before it has ended, plus `transfer_min` when the work moves
to another site, on the eligible machine (its type, its site if it names one) where it ends
first: list scheduling in routing order. A machine takes work from the end of what it holds
(`Machine.load_min`: kept allocations, booked operations) and never across its accepted
maintenance window, so two chains scheduled one after the other never share a machine's time.
Deterministic: ties go to the lower risk, then the machine id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from twin.planning.allocation import Machine


@dataclass(frozen=True)
class Step:
    """One operation of a customised scheme, for the quantity ordered."""

    name: str
    machine_type: str | None
    site: str | None
    setup_min: float
    minutes_per_unit: float
    quantity: int

    @property
    def duration_min(self) -> float:
        return self.setup_min + self.minutes_per_unit * self.quantity

    def public(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "machine_type": self.machine_type,
            "site": self.site,
            "setup_min": self.setup_min,
            "minutes_per_unit": round(self.minutes_per_unit, 6),
            "duration_min": round(self.duration_min, 6),
        }


@dataclass(frozen=True)
class Booking:
    step: Step
    machine: Machine
    start_min: float
    end_min: float
    transfer_min: float


def eligible(step: Step, machine: Machine, site: str | None = None) -> bool:
    """Whether `machine` can run `step`: its type, and its site (or `site`) if it names one."""
    where = step.site or site
    return (step.machine_type is None or machine.type == step.machine_type) and (
        where is None or machine.site == where
    )


def schedule(
    steps: list[Step],
    machines: list[Machine],
    transfer_min: float,
    site: str | None = None,
    ready_min: float = 0.0,
    here: str | None = None,
) -> list[Booking] | str:
    """Each step in order where it ends first (`site` pins steps that name none), from
    `ready_min` (the end of what came before, at site `here`); the bookings, or why a step has
    no machine. Machines are taken with their `load_min` and window."""
    free = {m.machine: m.load_min for m in machines}
    ready: float = ready_min
    out: list[Booking] = []
    for step in steps:
        best: tuple[tuple[float, float, str], Booking] | None = None
        for m in machines:
            if not eligible(step, m, site):
                continue
            moved = transfer_min if here is not None and m.site != here else 0.0
            start = max(ready + moved, free[m.machine])
            window = m.maintenance
            if window is not None and start < window[1] and start + step.duration_min > window[0]:
                start = window[1]  # not across the window
            end = start + step.duration_min
            key = (end, m.risk or 0.0, m.machine)
            if best is None or key < best[0]:
                best = (key, Booking(step, m, start, end, moved))
        if best is None:
            needs = [
                f"type {step.machine_type}" if step.machine_type else "",
                step.site or site or "",
            ]
            what = " at site ".join(x for x in needs if x) or "any"
            return f"no usable machine ({what}) for operation {step.name}"
        booking = best[1]
        out.append(booking)
        free[booking.machine.machine] = booking.end_min
        ready, here = booking.end_min, booking.machine.site
    return out


def split(steps: list[Step]) -> tuple[list[Step], list[Step]]:
    """The routing for two lots of about half the quantity each (each pays its set-ups)."""
    quantity = steps[0].quantity
    first = math.ceil(quantity / 2)
    return (
        [replace(s, quantity=first) for s in steps],
        [replace(s, quantity=quantity - first) for s in steps],
    )
