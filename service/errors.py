"""Errors of the service and the handlers that turn every failure into an :class:`~service.models.ErrorResponse`.

Bad input is always a 4xx whose ``message`` names the problem; a 500 means a bug (its message says so and the
traceback goes to the log, never to the client).
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from service.models import ErrorResponse

log = logging.getLogger("service")

#: short problem class per status when the raiser gave none
_DEFAULT_ERROR = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    500: "internal_error",
    503: "unavailable",
}


class ServiceError(Exception):
    """An answer other than 2xx, with a machine-readable ``error`` class and a message naming the problem."""

    def __init__(self, status: int, error: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = int(status)
        self.error = error
        self.message = message
        self.headers = headers


def bad_request(error: str, message: str) -> ServiceError:
    return ServiceError(400, error, message)


def unprocessable(error: str, message: str) -> ServiceError:
    return ServiceError(422, error, message)


def error_response(status: int, error: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(status=status, error=error, message=message)
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _loc(loc: Iterable[Any]) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        where = {"body": "body", "query": "query parameter", "path": "path parameter", "header": "header",
                 "cookie": "cookie"}[parts[0]]
        rest = ".".join(parts[1:])
        return f"{where} {rest!r}" if rest else where
    return ".".join(parts) or "input"


def describe_errors(errors: list[dict[str, Any]], limit: int = 3) -> tuple[str, str]:
    """(error class, message) for pydantic/FastAPI validation errors: malformed JSON is its own class."""
    if any(e.get("type") == "json_invalid" for e in errors):
        e = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (e.get("ctx") or {}).get("error") or e.get("msg", "")
        return "malformed_json", f"request body is not valid JSON: {detail}"
    msgs = []
    for e in errors[:limit]:
        msg = str(e.get("msg", "invalid"))
        inp = e.get("input")
        shown = ""
        if isinstance(inp, (int, float, str, bool)) or inp is None:
            text = repr(inp)
            shown = f" (got {text[:60]})" if e.get("type") != "missing" else ""
        msgs.append(f"{_loc(e.get('loc', ()))}: {msg}{shown}")
    more = f" (and {len(errors) - limit} more)" if len(errors) > limit else ""
    return "invalid_input", "; ".join(msgs) + more


async def _service_error(request: Request, exc: ServiceError) -> JSONResponse:
    return error_response(exc.status, exc.error, exc.message, exc.headers)


async def _validation_error(request: Request, exc: RequestValidationError | ValidationError) -> JSONResponse:
    error, message = describe_errors(list(exc.errors()))
    status = 400 if error == "malformed_json" else 422
    return error_response(status, error, message)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    status = exc.status_code
    if status == 404 and isinstance(exc.detail, str) and exc.detail == "Not Found":
        message = f"no such endpoint: {request.method} {request.url.path} (see /docs)"
    elif status == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
    else:
        message = str(exc.detail)
    headers = dict(exc.headers) if exc.headers else None
    return error_response(status, _DEFAULT_ERROR.get(status, "error"), message, headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return error_response(500, "internal_error", f"internal error ({type(exc).__name__}); this is a bug in the "
                          "service, please report it")


def install_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected)
