"""Dependencies shared by the routers, as `Annotated` aliases: each route gets the part of the
service it uses, never the whole service. The only module of `twin.api` that knows `Twin`."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from twin.alerts import AlertManager
from twin.api.schemas import Problem
from twin.config import Settings
from twin.deadletters import DeadLetters
from twin.foresight import Foresight
from twin.model import Registry
from twin.orders import Quoter
from twin.planning import AllocationLedger
from twin.risk import RiskScorer
from twin.service import Twin
from twin.state import FleetState
from twin.status import TwinStatus
from twin.stream import EventHub
from twin.timeseries import History
from twin.trainer import Trainer

T = TypeVar("T")

Service = Twin  # for `install`'s signature, so no other API module imports the service


def bind(app: FastAPI, twin: Twin) -> None:
    """Make `twin` the service every dependency below reads from."""
    app.state.twin = twin
    app.state.settings = twin.settings
    app.state.hub = twin.hub


def _twin(request: Request) -> Twin:
    twin: Twin = request.app.state.twin
    return twin


def _part(get: Callable[[Twin], T]) -> Callable[[Request], T]:
    """A dependency that hands a route one part of the service."""

    def dependency(request: Request) -> T:
        return get(_twin(request))

    return dependency


def status_source(app: FastAPI) -> Callable[[], TwinStatus]:
    """What `/metrics` reads at scrape time."""
    twin: Twin = app.state.twin
    return twin.status


def _settings(request: Request) -> Settings:
    """The settings, also of an app without a `Twin` (the cluster's `twin api`)."""
    settings: Settings = request.app.state.settings
    return settings


def _hub(request: Request) -> EventHub:
    """The `/stream` events, also of the cluster's `twin api` (fed by the streams it follows)."""
    hub: EventHub = request.app.state.hub
    return hub


SettingsDep = Annotated[Settings, Depends(_settings)]
StateDep = Annotated[FleetState, Depends(_part(lambda t: t.state))]
AlertsDep = Annotated[AlertManager, Depends(_part(lambda t: t.alerts))]
PlannerDep = Annotated[AllocationLedger, Depends(_part(lambda t: t.planner))]
ScorerDep = Annotated[RiskScorer, Depends(_part(lambda t: t.scorer))]
RegistryDep = Annotated[Registry, Depends(_part(lambda t: t.registry))]
TrainerDep = Annotated[Trainer, Depends(_part(lambda t: t.trainer))]
DeadLettersDep = Annotated[DeadLetters, Depends(_part(lambda t: t.deadletters))]
HubDep = Annotated[EventHub, Depends(_hub)]
HistoryDep = Annotated[History, Depends(_part(lambda t: t.history))]
ForesightDep = Annotated[Foresight, Depends(_part(lambda t: t.foresight))]
QuoterDep = Annotated[Quoter, Depends(_part(lambda t: t.quoter))]
StatusDep = Annotated[TwinStatus, Depends(_part(lambda t: t.status()))]

_bearer = HTTPBearer(
    auto_error=False, description="Required for writes when TWIN_API_TOKENS is set"
)


def _require(role: str) -> Callable[..., None]:
    def check(
        settings: SettingsDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        """`Authorization: Bearer <token>` with `role` when tokens are configured."""
        tokens = settings.tokens
        if not tokens or (role == "read" and settings.api_read_open):
            return
        if credentials is None:
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED,
                "this endpoint needs 'Authorization: Bearer <token>'",
                headers={"WWW-Authenticate": "Bearer"},
            )
        given = credentials.credentials.encode()
        roles: frozenset[str] = frozenset()
        for token, granted in tokens.items():  # every comparison runs, in constant time
            if secrets.compare_digest(given, token.encode()):
                roles = granted
        if not roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, "the token is not valid")
        if role not in roles:
            raise HTTPException(status.HTTP_403_FORBIDDEN, f"the token lacks the {role!r} role")

    return check


ReadAccess = Depends(_require("read"))
OperateAccess = Depends(_require("operate"))
AdminAccess = Depends(_require("admin"))


def json_response(payload: Any) -> Response:
    """Encoded by msgspec, in the shape of the route's response model (which documents it):
    validating a 1,000-twin page with pydantic took 67 ms of the GIL, encoding it takes 3."""
    return Response(msgspec.json.encode(payload), media_type="application/json")


def problem(description: str) -> dict[str, Any]:
    """An error response for the OpenAPI schema."""
    return {"model": Problem, "description": description}


# Documented on every resource route (reads can be closed too), on bodies and on lookups.
ACCESS_ERRORS: dict[int | str, dict[str, Any]] = {
    401: problem("a bearer token is needed (TWIN_API_TOKENS is set)"),
    403: problem("the token is not valid, or lacks the role"),
    422: problem("bad parameters or body: a message, or FastAPI's list of errors"),
}
BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    400: problem("the body is not valid JSON"),
    413: problem("the body is over TWIN_MAX_BODY_BYTES"),
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: problem("no such resource")}
