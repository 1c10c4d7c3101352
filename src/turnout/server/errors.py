"""The ONE table from turnout's error tree to HTTP statuses and OpenAI error bodies.

Order matters: the first class that matches wins, so subclasses come before
their bases. A client's mistake (anything under RequestError/AuthError) is a
4xx; a 503 means a store turnout depends on (Redis) is down; a 500 only
ever means a bug in turnout.
"""

from __future__ import annotations

import math
from typing import Any

from turnout.errors import (
    AllBackendsFailedError,
    AuthenticationError,
    BackendError,
    BackendTimeoutError,
    BudgetExceededError,
    MethodNotAllowedError,
    NoCandidateError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RequestError,
    StateError,
    TurnoutError,
    UnknownModelError,
)

STATUS_TABLE: list[tuple[type[BaseException], int]] = [
    (PayloadTooLargeError, 413),
    (UnknownModelError, 404),
    (NotFoundError, 404),
    (MethodNotAllowedError, 405),
    (RequestError, 400),
    (AuthenticationError, 401),
    (PermissionDeniedError, 403),
    # a key's requests or tokens per minute used up: the answer says when to retry (error_headers)
    (RateLimitedError, 429),
    (BudgetExceededError, 429),
    # every candidate excluded by the request's own size or the key's allowed list
    (NoCandidateError, 400),
    # the shared counters (Redis) are unreachable: the service is unavailable, the request is fine
    (StateError, 503),
    (BackendTimeoutError, 504),
    (BackendError, 502),
    (AllBackendsFailedError, 502),
]


def status_for(exc: BaseException | None) -> int:
    """HTTP status for ``exc`` (200 for None). A chain that only timed out is a 504."""
    if exc is None:
        return 200
    if isinstance(exc, AllBackendsFailedError) and exc.errors and all(isinstance(e, BackendTimeoutError) for e in exc.errors):
        return 504
    for cls, status in STATUS_TABLE:
        if isinstance(exc, cls):
            return status
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """OpenAI error body ``{"error": {"message", "type", "param", "code"}}`` (+ ``failures`` for a chain)."""
    if isinstance(exc, TurnoutError):
        err: dict[str, Any] = {"message": str(exc), "type": exc.kind, "param": getattr(exc, "param", None), "code": exc.kind}
    else:
        err = {
            "message": "internal error in turnout (this is a bug; see the server log)",
            "type": "internal_error",
            "param": None,
            "code": "internal_error",
        }
    if isinstance(exc, AllBackendsFailedError):
        err["failures"] = [
            {"backend": e.backend, "model": e.model, "type": e.kind, "message": str(e), "status": getattr(e, "status", None)}
            for e in exc.errors
        ]
    return {"error": err}


def error_headers(exc: BaseException) -> dict[str, str]:
    """Headers an error's answer carries besides turnout's own: ``retry-after`` (whole seconds, at least 1) for a
    rate-limited key, as OpenAI's API and its clients' retry logic expect."""
    if isinstance(exc, RateLimitedError):
        return {"retry-after": str(max(1, math.ceil(exc.retry_after)))}
    return {}


__all__ = ["STATUS_TABLE", "error_body", "error_headers", "status_for"]
