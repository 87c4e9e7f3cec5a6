"""Query parameters that several routes share, in both `twin serve`'s API and `twin api`'s:
one definition each, so the two APIs take the same filters with the same limits."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query

MachineParam = Annotated[str | None, Query(max_length=64)]
SiteParam = Annotated[str | None, Query(max_length=64)]
LimitParam = Annotated[int, Query(ge=1, le=1000)]
OffsetParam = Annotated[int, Query(ge=0)]
MinRiskParam = Annotated[float | None, Query(ge=0, le=1)]
