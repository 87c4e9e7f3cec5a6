"""Planning on the live fleet: task allocation (`allocation`), the ledger that keeps allocations
and re-plans them when alerts hit (`ledger`), and production across sites (`sites`)."""

from twin.planning.allocation import MILP_MAX_PAIRS, Allocation, Machine, Task, allocate
from twin.planning.ledger import AllocationLedger
from twin.planning.sites import Demand, PlanError, Site, plan

__all__ = [
    "MILP_MAX_PAIRS",
    "Allocation",
    "AllocationLedger",
    "Demand",
    "Machine",
    "PlanError",
    "Site",
    "Task",
    "allocate",
    "plan",
]
