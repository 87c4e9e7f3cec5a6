"""Dependencies shared by the routers, as `Annotated` aliases."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from twin.app import Twin


def _twin(request: Request) -> Twin:
    twin: Twin = request.app.state.twin
    return twin


TwinDep = Annotated[Twin, Depends(_twin)]

_bearer = HTTPBearer(
    auto_error=False, description="Required for writes when TWIN_API_TOKENS is set"
)


def require_token(
    twin: TwinDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Writes need `Authorization: Bearer <token>` when tokens are configured."""
    tokens = twin.settings.tokens
    if not tokens:
        return
    if credentials is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "this endpoint needs 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    given = credentials.credentials.encode()
    if not any(secrets.compare_digest(given, token.encode()) for token in tokens):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "the token is not valid")


WriteAccess = Depends(require_token)
