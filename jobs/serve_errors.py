"""The JSON errors `serve` answers with, OpenAI's shape (`{"error": {"message", "type", "param",
"code"}}`) and statuses; shared by the OpenAI routes and the adapter routes."""
from __future__ import annotations

import sys
import traceback

from fastapi.responses import JSONResponse

from common.errors import UserError

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
               413: "invalid_request_error", 499: "client_closed", 503: "server_busy", 500: "internal_error"}


def error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": ERROR_TYPES.get(status, "error"), "param": param,
                                   "code": code}}, status_code=status)


def failure(exc) -> JSONResponse:
    """A job's exception as a response: a user's mistake is 400; a bug is logged in full, one line out."""
    if isinstance(exc, UserError):
        return error(400, str(exc))
    traceback.print_exception(exc, file=sys.stderr)
    return error(500, f"internal error ({type(exc).__name__}); the server log has the details")


def busy(engine) -> JSONResponse:
    return error(503, f"the server is busy: {engine.limit - 1} requests are already waiting; retry later",
                 code="queue_full")
