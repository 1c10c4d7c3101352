"""turnout's one exception tree.

Every error turnout raises on purpose derives from :class:`TurnoutError`.
Foreign errors (httpx, provider HTTP statuses, pyarrow, pydantic) are
translated at the boundary of the room that meets them, so callers only ever
catch these classes. HTTP status codes are *not* decided here: the server keeps
one table mapping these classes to statuses (``turnout.server.errors``).

    TurnoutError
    ├── MissingDependency        an optional extra is not installed (names the extra)
    ├── ConfigError              the YAML config is wrong (names file, key, fix)
    ├── DataError                a routing table is wrong (names file, row/column, fix)
    ├── RoutingError             a router cannot decide (not fitted, no candidate left)
    │   └── NoCandidateError     every candidate was excluded by constraints
    ├── RequestError             the client's request is wrong (a 4xx, never a 500)
    │   ├── InvalidRequestError  malformed body, wrong types, missing messages
    │   │   └── UpstreamRejectedError  every backend rejected the request itself (its 400s)
    │   ├── UnknownModelError    no route or model by that name
    │   ├── PayloadTooLargeError body over the configured limit
    │   ├── NotFoundError        no endpoint at that path, or no logged request with that id
    │   ├── MethodNotAllowedError the endpoint does not take that HTTP method
    │   └── GuardBlockedError    a guard stage refused the request's content (jailbreak / injection)
    │       ├── OutOfScopeError  it belongs to none of the domains the route serves
    │       └── PiiBlockedError  it carries personal data the PII policy blocks (types and counts only)
    ├── AuthError
    │   ├── AuthenticationError  missing or wrong API key
    │   ├── PermissionDeniedError the key may not use that model or route
    │   ├── BudgetExceededError  the key's USD budget is spent
    │   └── RateLimitedError     the key's requests or tokens per minute are used up (carries retry_after)
    ├── StateError               shared state (counters in Redis) unreachable or failing (names the URL)
    ├── BackendError             one backend failed one attempt
    │   ├── BackendTimeoutError      connect / first-token / total timeout
    │   ├── BackendConnectionError   refused, reset, DNS
    │   ├── BackendStatusError       the provider answered an error status
    │   ├── BackendProtocolError     malformed JSON or SSE from the provider
    │   ├── BackendUnavailableError  skipped: its circuit breaker is open
    │   ├── ModelNotAllowedError     skipped: the API key may not use this fallback
    │   └── UnsupportedRequestError  not sent: the request has no form in this provider's protocol
    └── AllBackendsFailedError   the whole fallback chain failed (carries every error)
"""

from __future__ import annotations

from collections.abc import Sequence


class TurnoutError(Exception):
    """Base of every error turnout raises on purpose."""

    #: short machine-readable kind, used in metrics labels and the OpenAI error ``type``
    kind: str = "turnout_error"


class MissingDependency(TurnoutError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""

    kind = "missing_dependency"

    def __init__(self, package: str, extra: str, feature: str) -> None:
        self.package = package
        self.extra = extra
        super().__init__(
            f"{feature} needs the '{package}' package, which is not installed. Install it with: pip install 'turnout[{extra}]'"
        )


class ConfigError(TurnoutError):
    """The configuration is invalid. Carries the file, the key path and the fix."""

    kind = "config_error"

    def __init__(self, message: str, *, file: str | None = None, key: str | None = None, fix: str | None = None) -> None:
        #: the message alone, without file, key and fix (to re-raise it under a longer key path)
        self.message = message
        self.file = file
        self.key = key
        self.fix = fix
        where = ", ".join(p for p in (file, f"key '{key}'" if key else None) if p)
        text = f"{where}: {message}" if where else message
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class DataError(TurnoutError):
    """A routing table or dataset is invalid. Carries file, row/column and the fix."""

    kind = "data_error"

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
        fix: str | None = None,
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        self.fix = fix
        parts = [p for p in (file, f"row {row}" if row is not None else None, f"column '{column}'" if column else None) if p]
        text = f"{': '.join([', '.join(parts), message])}" if parts else message
        if fix:
            text += f" (fix: {fix})"
        super().__init__(text)


class RoutingError(TurnoutError):
    """A router or policy could not produce a decision."""

    kind = "routing_error"


class NoCandidateError(RoutingError):
    """Every candidate model was excluded (allowed list, context window, budget)."""

    kind = "no_candidate"


class RequestError(TurnoutError):
    """The client's request is wrong. Always a 4xx, never a 500."""

    kind = "invalid_request_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


class InvalidRequestError(RequestError):
    """Malformed JSON, wrong types, missing required fields."""


class UnknownModelError(RequestError):
    """The requested model or route does not exist."""

    kind = "model_not_found"


class PayloadTooLargeError(RequestError):
    """The request body exceeds the configured limit."""

    kind = "payload_too_large"


class NotFoundError(RequestError):
    """No endpoint at that path, or no logged request with that id (``POST /v1/feedback``)."""

    kind = "not_found"


class MethodNotAllowedError(RequestError):
    """The endpoint exists but not for that HTTP method; ``allow`` lists the methods it takes."""

    kind = "method_not_allowed"

    def __init__(self, message: str, *, allow: str = "") -> None:
        self.allow = allow
        super().__init__(message)


class GuardBlockedError(RequestError):
    """A guard stage refused the request for what it says (a jailbreak or prompt-injection attempt).

    A 400 the client should not retry unchanged; ``guard`` names the stage that refused it. The message
    says why in words and never repeats the flagged content.
    """

    kind = "guard_blocked"

    def __init__(self, message: str, *, guard: str, param: str | None = "messages") -> None:
        self.guard = guard
        super().__init__(message, param=param)


class OutOfScopeError(GuardBlockedError):
    """The request belongs to none of the domains its route declares (guarded routing)."""

    kind = "out_of_scope"


class PiiBlockedError(GuardBlockedError):
    """The request carries personal data or secrets whose type the PII policy blocks (types and counts named)."""

    kind = "pii_blocked"


class AuthError(TurnoutError):
    """Base of authentication, authorisation and budget errors."""

    kind = "auth_error"


class AuthenticationError(AuthError):
    """Missing or unknown API key."""

    kind = "invalid_api_key"


class PermissionDeniedError(AuthError):
    """The key exists but may not use the requested model or route."""

    kind = "permission_denied"


class BudgetExceededError(AuthError):
    """The key's USD budget is spent."""

    kind = "insufficient_quota"


class RateLimitedError(AuthError):
    """The key has used up its requests (``rpm``) or tokens (``tpm``) per minute.

    ``retry_after`` is the number of whole seconds after which the same request would be admitted (the
    server sends it as the ``retry-after`` header); ``limit`` says which one (``rpm`` or ``tpm``).
    """

    kind = "rate_limit_exceeded"

    def __init__(self, message: str, *, retry_after: float, limit: str = "rpm") -> None:
        self.retry_after = retry_after
        self.limit = limit
        super().__init__(message)


class StateError(TurnoutError):
    """The shared state a request needs (key spend, route budget figures in Redis) could not be read or written.

    Not the client's fault and not a model's: the server answers 503 and the
    message names the store (its URL) and what to check.
    """

    kind = "state_unavailable"


class BackendError(TurnoutError):
    """One attempt against one backend failed.

    ``retryable`` says whether the same backend may be tried again (timeouts,
    connection errors, 429 and 5xx are; 400-class provider answers are not).
    """

    kind = "backend_error"
    retryable: bool = True

    def __init__(self, message: str, *, backend: str, model: str | None = None, retryable: bool | None = None) -> None:
        self.backend = backend
        self.model = model
        #: the message without the ``[backend/model]`` prefix
        self.detail = message
        if retryable is not None:
            self.retryable = retryable
        super().__init__(f"[{backend}{'/' + model if model else ''}] {message}")


class BackendTimeoutError(BackendError):
    """Connect, first-token or total timeout."""

    kind = "timeout"

    def __init__(self, message: str, *, backend: str, model: str | None = None, phase: str = "total") -> None:
        self.phase = phase
        super().__init__(message, backend=backend, model=model, retryable=True)


class BackendConnectionError(BackendError):
    """Connection refused or reset, name resolution failure."""

    kind = "connection_error"


class BackendStatusError(BackendError):
    """The provider answered an HTTP error status.

    ``request_fault``: the provider rejected the request itself (400, 413, 415, 422, or a
    server that answers its own request validation with a 5xx, as llama.cpp's does): not
    retried, not counted against the breaker, and when every backend says so the client
    gets a 400 (:class:`UpstreamRejectedError`). ``param`` names the field the provider
    rejected, when it says.
    """

    kind = "upstream_status"

    def __init__(
        self,
        message: str,
        *,
        backend: str,
        status: int,
        model: str | None = None,
        body: str | None = None,
        request_fault: bool | None = None,
        param: str | None = None,
    ) -> None:
        self.status = status
        self.body = body
        self.request_fault = status in (400, 413, 415, 422) if request_fault is None else request_fault
        self.param = param
        retryable = not self.request_fault and (status in (408, 409, 425, 429) or status >= 500)
        super().__init__(f"HTTP {status}: {message}", backend=backend, model=model, retryable=retryable)
        self.detail = message  # the provider's reason, without the status


class BackendProtocolError(BackendError):
    """The provider answered something that is not valid JSON / SSE of its protocol."""

    kind = "upstream_protocol"


class BackendUnavailableError(BackendError):
    """The backend was skipped because its circuit breaker is open."""

    kind = "backend_unavailable"


class ModelNotAllowedError(BackendError):
    """A fallback was skipped because the request's API key may not use that model."""

    kind = "model_not_allowed"
    retryable = False


class UnsupportedRequestError(BackendError):
    """The request cannot be expressed in this backend's protocol (e.g. audio for Anthropic); it was not sent."""

    kind = "unsupported_request"
    retryable = False


class UpstreamRejectedError(InvalidRequestError):
    """Every backend tried refused the request itself: a provider rejected it (see
    ``BackendStatusError.request_fault``) or it has no form in that backend's protocol
    (:class:`UnsupportedRequestError`). The request's fault, so a 400 naming each reason;
    ``errors`` holds each one's error."""

    kind = "invalid_request_error"

    def __init__(self, errors: Sequence[BackendError]) -> None:
        self.errors = list(errors)

        def reason(e: BackendError) -> str:
            return f"{e.backend}/{e.model}: {e.detail}" if e.model else f"{e.backend}: {e.detail}"

        super().__init__(
            f"no model in the chain can take the request ({'; '.join(dict.fromkeys(map(reason, self.errors)))})",
            param=next((p for e in self.errors if (p := getattr(e, "param", None))), None),
        )


class AllBackendsFailedError(TurnoutError):
    """Every backend of a fallback chain failed; ``errors`` holds each one's error, in order."""

    kind = "all_backends_failed"

    def __init__(self, errors: Sequence[BackendError], *, route: str | None = None) -> None:
        self.errors = list(errors)
        self.route = route
        detail = "; ".join(str(e) for e in self.errors) or "no backend was tried"
        super().__init__(f"all {len(self.errors)} backend attempt(s){' for route ' + route if route else ''} failed: {detail}")


__all__ = [
    "AllBackendsFailedError",
    "AuthError",
    "AuthenticationError",
    "BackendConnectionError",
    "BackendError",
    "BackendProtocolError",
    "BackendStatusError",
    "BackendTimeoutError",
    "BackendUnavailableError",
    "BudgetExceededError",
    "ConfigError",
    "DataError",
    "GuardBlockedError",
    "InvalidRequestError",
    "MissingDependency",
    "ModelNotAllowedError",
    "MethodNotAllowedError",
    "NoCandidateError",
    "NotFoundError",
    "OutOfScopeError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PiiBlockedError",
    "RateLimitedError",
    "RequestError",
    "RoutingError",
    "StateError",
    "TurnoutError",
    "UnknownModelError",
    "UpstreamRejectedError",
    "UnsupportedRequestError",
]
