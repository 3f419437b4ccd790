"""Optional bearer-token authentication (``REACH_TOKEN``): installed on the ``/v1`` routes and ``/metrics`` only when
a token is configured, so the OpenAPI schema shows the security scheme exactly when it is required."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import ServiceError

bearer = HTTPBearer(auto_error=False, description="`Authorization: Bearer <token>` (the service's REACH_TOKEN).")


async def require_token(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    token: str | None = request.app.state.settings.token
    if token is None:
        return
    if credentials is None:
        raise ServiceError(401, "unauthorized", "this service requires 'Authorization: Bearer <token>'",
                           headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise ServiceError(401, "unauthorized", "wrong bearer token",
                           headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
