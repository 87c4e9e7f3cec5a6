"""Personalised orders: the catalogue (`catalogue`), quotes against the live fleet (`quote`) and
the order book (`book`). `Quoter` joins them to the twin: the fleet as the allocation ledger
sees it (health, maintenance windows) with the work the ledger and the book hold, and the
forecasts of the machines a quote would use."""

from __future__ import annotations

import time
from typing import Any

from twin.foresight import Foresight
from twin.foresight.forecast import MAX_STEPS
from twin.orders.book import OrderBook
from twin.orders.catalogue import Catalogue, load_catalogue
from twin.orders.quote import REPAIR_MIN, TRANSFER_MIN, Hazard, QuoteRequest, quote

__all__ = ["Catalogue", "OrderBook", "QuoteRequest", "Quoter", "load_catalogue"]

STEP_MIN = 10.0  # the forecasts' step, made longer for a horizon beyond MAX_STEPS of them


class Quoter:
    def __init__(
        self,
        catalogue: Catalogue,
        book: OrderBook,
        foresight: Foresight,
        transfer_min: float = TRANSFER_MIN,
        repair_min: float = REPAIR_MIN,
    ) -> None:
        self.catalogue = catalogue
        self.book = book
        self.planner = book.planner
        self.foresight = foresight
        self.transfer_min = transfer_min
        self.repair_min = repair_min

    def quote(self, request: QuoteRequest) -> dict[str, Any]:
        now = int(time.time() * 1000)
        limit = self.planner.default_max_risk() if request.max_risk is None else request.max_risk
        fleet = self.planner.fleet(self.book.booked(now))
        return quote(
            self.catalogue,
            request,
            fleet,
            limit,
            self.hazard_for,
            now,
            self.transfer_min,
            self.repair_min,
        )

    def hazard_for(self, machines: set[str], horizon_min: float) -> Hazard:
        """Expected failures of a machine over [start, end) minutes from now, from its forecast
        (the last step's chance repeated beyond the horizon); a machine the forecasts leave out
        counts its live risk once per operation."""
        step = max(STEP_MIN, horizon_min / (MAX_STEPS - 1))
        horizon = max(step, horizon_min)
        found, _ = self.foresight.paths(sorted(machines), horizon, step, [])
        risks = {m.machine: m.risk or 0.0 for m in self.planner.fleet()}

        def hazard(machine: str, start: float, end: float) -> float:
            path = found.get(machine)
            if path is None:
                return risks.get(machine, 0.0)
            h = path[1].hazard
            total, k = 0.0, int(start // step)
            while k * step < end:
                lo, hi = max(start, k * step), min(end, (k + 1) * step)
                total += float(h[min(k, len(h) - 1)]) * (hi - lo) / step
                k += 1
            return total

        return hazard
