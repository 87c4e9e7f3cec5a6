"""Dependencies shared by the routers, as `Annotated` aliases."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from twin.api.schemas import Problem
from twin.app import Twin


def _twin(request: Request) -> Twin:
    twin: Twin = request.app.state.twin
    return twin


TwinDep = Annotated[Twin, Depends(_twin)]

_bearer = HTTPBearer(
    auto_error=False, description="Required for writes when TWIN_API_TOKENS is set"
)


def _require(role: str) -> Callable[..., None]:
    def check(
        twin: TwinDep,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> None:
        """`Authorization: Bearer <token>` with `role` when tokens are configured."""
        settings = twin.settings
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
