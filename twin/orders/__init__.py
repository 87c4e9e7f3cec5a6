"""Personalised orders: the catalogue (`catalogue`), quotes against the live fleet (`quote`) and
the order book (`book`). `Quoter` joins them to the twin: the fleet as the allocation ledger
sees it (health, maintenance windows) with the work the ledger and the book hold, and the
forecasts of the machines a quote would use."""

from __future__ import annotations

import time
from typing import Any

from twin.foresight import Foresight
from twin.orders.book import OrderBook
from twin.orders.catalogue import Catalogue, load_catalogue
from twin.orders.quote import REPAIR_MIN, TRANSFER_MIN, Hazard, QuoteRequest, quote

__all__ = ["Catalogue", "OrderBook", "QuoteRequest", "Quoter", "load_catalogue"]

STEP_MIN = 10.0  # the forecast step whose chance of a failure a quote holds


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
        return quote(
            self.catalogue,
            request,
            self.book.fleet(now, limit),
            limit,
            self.hazard_for,
            now,
            self.transfer_min,
            self.repair_min,
        )

    def hazard_for(self, risks: dict[str, float]) -> Hazard:
        """Expected failures of a machine (of `risks`: machine -> live risk) over [start, end)
        minutes from now: its forecast's chance of a failure in the first step, held over the
        span (a machine's wear does not run on for the hours of a long order: its maintenance
        plans and alerts see to that). A machine the forecasts leave out counts its live risk
        once per operation."""
        found, _ = self.foresight.paths(sorted(risks), STEP_MIN, STEP_MIN, [])
        rates = {m: float(path.hazard[0]) / STEP_MIN for m, (_, path, _) in found.items()}

        def hazard(machine: str, start: float, end: float) -> float:
            rate = rates.get(machine)
            return risks[machine] if rate is None else rate * (end - start)

        return hazard
