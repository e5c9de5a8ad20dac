"""Why a request gets no tenant, and how that is answered: RFC 9457 problem details or a 1008 close."""

from __future__ import annotations

from http import HTTPStatus
from typing import ClassVar

from starlette.responses import JSONResponse
from starlette.types import Receive, Send

from pgtenancy.errors import TenancyError

__all__ = [
    "PROBLEM_MEDIA_TYPE",
    "WS_POLICY_VIOLATION",
    "InvalidCredentialsError",
    "MalformedTenantError",
    "MissingTenantError",
    "TenantForbiddenError",
    "TenantResolutionError",
    "close_websocket",
    "problem_response",
]

PROBLEM_MEDIA_TYPE = "application/problem+json"
WS_POLICY_VIOLATION = 1008


class TenantResolutionError(TenancyError):
    """A request cannot be bound to a tenant; ``status`` and ``detail`` are safe to show the client.

    ``detail`` is fixed text chosen by the code that raises, never a piece of the request.
    """

    status: ClassVar[int] = 400
    default_detail: ClassVar[str] = "the request cannot be bound to a tenant"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail if detail is not None else self.default_detail
        super().__init__(self.detail)


class MissingTenantError(TenantResolutionError):
    """No resolver found a tenant in the request (400)."""

    default_detail = "the request does not name a tenant"


class MalformedTenantError(TenantResolutionError):
    """The request names a tenant in a form that is not accepted (400): bad id, injected header..."""

    default_detail = "malformed tenant id"


class InvalidCredentialsError(TenantResolutionError):
    """Credentials are needed but missing, invalid or expired (401, with ``WWW-Authenticate: Bearer``)."""

    status = 401
    default_detail = "valid credentials are required"


class TenantForbiddenError(TenantResolutionError):
    """The authenticated principal may not act for the requested tenant (403)."""

    status = 403
    default_detail = "not allowed to act for this tenant"


def problem_response(error: TenantResolutionError) -> JSONResponse:
    """An ``application/problem+json`` response (RFC 9457) for ``error``; 401s carry a Bearer challenge."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(error.status).phrase,
        "status": error.status,
        "detail": error.detail,
    }
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else None
    return JSONResponse(body, status_code=error.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


async def close_websocket(error: TenantResolutionError, receive: Receive, send: Send) -> None:
    """Refuse a WebSocket before accepting it: read its connect event, close with 1008 (policy violation)."""
    message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": error.detail[:123]})
