"""The shape of ``turnout.yaml``: pydantic models that reject every unknown key.

This module only describes *shape* (types, ranges, which keys exist). Whether a
route's candidates name real models, whether an environment variable is set,
whether a router artifact exists: those cross-references are checked in a
second phase by :func:`turnout.config.loader.resolve`, so a config is never
half-valid. See ``docs/config.md`` for the full reference and an example.

Secrets never appear in the file: backends and keys name an environment
variable (``api_key_env: OPENAI_API_KEY``) and the gateway reads it at start.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator


class _Strict(BaseModel):
    # extra="forbid": a typo is an error at start-up, never a silently ignored key.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ServerSettings(_Strict):
    """Where the ASGI server listens and what it keeps."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    #: request bodies above this size are answered 413 without being parsed
    max_body_bytes: int = Field(1_048_576, gt=0)
    #: SQLite request log path; null turns the request log off
    request_log: str | None = "./turnout-requests.sqlite"
    #: seconds the log writer gathers entries into one transaction: a crash loses at most this window's rows
    request_log_linger_s: float = Field(0.1, ge=0, le=60)
    #: expose Prometheus metrics at GET /metrics
    metrics: bool = True
    #: seconds a client may take to send a request's headers before the connection is closed (slowloris)
    header_timeout_s: float = Field(10.0, gt=0)


class TimeoutSettings(_Strict):
    """Seconds allowed to connect, to the first token, for the whole answer, and between two stream events."""

    connect: float = Field(5.0, gt=0)
    first_token: float = Field(30.0, gt=0)
    total: float = Field(120.0, gt=0)
    #: silence allowed between two events of a stream after the first (default: 60 s, or total if shorter)
    idle: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> TimeoutSettings:
        if self.first_token > self.total:
            raise ValueError(f"first_token ({self.first_token}) must not exceed total ({self.total})")
        if self.idle is not None and self.idle > self.total:
            raise ValueError(f"idle ({self.idle}) must not exceed total ({self.total}): it would never fire")
        return self


class RetrySettings(_Strict):
    """How often one model is tried before the next fallback, with jittered exponential backoff."""

    #: total tries per model (1 = no retry)
    attempts: int = Field(2, ge=1, le=10)
    backoff_s: float = Field(0.1, ge=0)
    max_backoff_s: float = Field(2.0, ge=0)


class CooldownSettings(_Strict):
    """Circuit breaker: after ``failures`` consecutive failures skip the model for ``seconds``."""

    failures: int = Field(5, ge=1)
    seconds: float = Field(30.0, gt=0)


class BackendSettings(_Strict):
    """One provider endpoint, or a llama.cpp server that turnout starts itself.

    ``protocol: llamacpp`` starts ``python -m llama_cpp.server`` on loopback
    with ``model`` (``smollm2``, ``gemma3-270m`` or a GGUF path) and talks to it
    with the ``openai`` protocol. ``completion_template`` turns a chat into a
    ``/v1/completions`` prompt for completion-only models.
    """

    #: a registered backend protocol (openai, anthropic, or a plugin's), or llamacpp
    protocol: str
    base_url: str | None = None
    api_key_env: str | None = None
    completion_template: str | None = None
    timeouts: TimeoutSettings = TimeoutSettings()
    retries: RetrySettings = RetrySettings()
    cooldown: CooldownSettings = CooldownSettings()
    # llamacpp only
    model: str | None = None
    n_ctx: int | None = Field(None, gt=0)
    n_threads: int | None = Field(None, gt=0)


class PriceSettings(_Strict):
    """USD per million tokens; cost of an answer = usage x these prices."""

    input_per_mtok: float = Field(0.0, ge=0)
    output_per_mtok: float = Field(0.0, ge=0)


class EndpointSettings(_Strict):
    """One copy of a model: a backend (its protocol, credentials, timeouts) at a base URL, with a weight.

    ``base_url`` overrides the backend's, so one backend entry can describe every replica of an engine.
    """

    backend: str
    base_url: str | None = None
    weight: float = Field(1.0, gt=0)
    #: a name for logs and metrics (default: the backend's name, or its name and base URL)
    name: str | None = None
    #: requests the engine runs at once (llama.cpp's server: 1); the balancers' TTFT estimate uses it
    slots: int = Field(1, ge=1)


class BalanceSettings(_Strict):
    """How a model with several endpoints chooses one per try (see turnout.gateway.balance)."""

    strategy: str = "least_loaded"
    params: dict[str, object] = {}


class ModelSettings(_Strict):
    """A model of the fleet: which backend(s) serve it, under which upstream name, at what price.

    Give ``backend`` (one endpoint) or ``endpoints`` (replicas, chosen by ``balance``).
    """

    backend: str | None = None
    endpoints: list[EndpointSettings] | None = None
    balance: BalanceSettings = BalanceSettings()
    #: a model whose provider may see personal data (a PII guard may allow only these)
    private: bool = False
    #: the name the provider knows it by; defaults to the fleet name
    upstream_model: str | None = None
    price: PriceSettings = PriceSettings()
    context_window: int | None = Field(None, gt=0)
    #: tried in order when this model fails and it was asked for by name
    fallbacks: list[str] = []

    @model_validator(mode="after")
    def _backend_or_endpoints(self) -> ModelSettings:
        if (self.backend is None) == (not self.endpoints):
            raise ValueError("give either backend (one endpoint) or endpoints (a non-empty list), not both")
        return self

    @property
    def endpoint_list(self) -> list[EndpointSettings]:
        """Every endpoint of the model (a lone ``backend`` is one endpoint)."""
        return list(self.endpoints) if self.endpoints else [EndpointSettings(backend=self.backend or "")]


class RouterSettings(_Strict):
    """Which router scores the candidates: a registry name, its artifact and parameters."""

    type: str
    artifact: str | None = None
    params: dict[str, object] = {}


class BudgetSettings(_Strict):
    """A spending target the policy calibrates lambda to (exactly one field)."""

    target_cost_per_request: float | None = Field(None, gt=0)
    target_share: dict[str, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetSettings:
        if (self.target_cost_per_request is None) == (self.target_share is None):
            raise ValueError("give exactly one of target_cost_per_request or target_share")
        return self


class RouteSettings(_Strict):
    """A virtual model name (``auto``) that a router resolves to a concrete model per request.

    ``candidates`` is a list of fleet models, or a mapping from the names the
    router artifact was trained on to fleet models.
    """

    router: RouterSettings
    #: a registered embedder (minilm, minilm-int8, minilm-static, hashing, or a plugin's)
    embedder: str | None = None
    candidates: list[str] | dict[str, str]
    lam: float | None = Field(None, alias="lambda", ge=0)
    budget: BudgetSettings | None = None
    fallbacks: list[str] = []

    @model_validator(mode="after")
    def _lambda_or_budget(self) -> RouteSettings:
        if self.lam is not None and self.budget is not None:
            raise ValueError("give either lambda or budget, not both (budget calibrates lambda)")
        if not self.candidates:
            raise ValueError("a route needs at least one candidate model")
        return self

    @property
    def candidate_map(self) -> dict[str, str]:
        """Router (artifact) model name -> fleet model name."""
        if isinstance(self.candidates, dict):
            return dict(self.candidates)
        return {m: m for m in self.candidates}


class KeySettings(_Strict):
    """One API key: its hash (or the env var holding it), its USD budget and what it may use."""

    name: str
    key_sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")
    key_env: str | None = None
    budget_usd: float | None = Field(None, ge=0)
    #: route and model names this key may use; null = everything
    allowed: list[str] | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> KeySettings:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError("give exactly one of key_sha256 or key_env")
        return self


class StateSettings(_Strict):
    """Where the shared state lives: API keys' spend and holds, route budgets' running figures.

    Neither URL: in the process (one gateway), persisted to SQLite so spend survives a restart
    (``path``, default: the request log's own file; ``persist: false`` keeps it in memory only).
    ``redis_url`` (no password in it) or ``redis_url_env`` (the variable holding the URL, password
    and all): in Redis, shared by every gateway replica pointed at it, under ``prefix``.
    """

    redis_url: str | None = None
    redis_url_env: str | None = None
    prefix: str = Field("turnout:", min_length=1)
    persist: bool = True
    path: str | None = None
    #: seconds between two writes of the SQLite state (a crash loses at most this window's spend)
    flush_s: float = Field(0.5, gt=0, le=60)

    @model_validator(mode="after")
    def _one_url(self) -> StateSettings:
        if self.redis_url is not None and self.redis_url_env is not None:
            raise ValueError("give redis_url or redis_url_env, not both")
        return self


class StageSettings(_Strict):
    """One pipeline stage: a registered type name, an entry point, or ``package.module:Class``, with its params."""

    type: str
    name: str | None = None
    params: dict[str, object] = {}


class TurnoutConfig(_Strict):
    """The whole ``turnout.yaml``. ``keys`` absent means an open server (no auth)."""

    server: ServerSettings = ServerSettings()
    backends: dict[str, BackendSettings]
    models: dict[str, ModelSettings]
    routes: dict[str, RouteSettings] = {}
    keys: list[KeySettings] | None = None
    state: StateSettings = StateSettings()
    #: pipeline stages (signals, guards, cache, response plugins), in order within their phase
    stages: list[StageSettings] = []
    # where this config came from (a path, or "<embedded default>"); set by the loader
    _source: str = PrivateAttr("<memory>")

    @property
    def source(self) -> str:
        """The file this config was read from, for error messages."""
        return self._source


__all__ = [
    "BackendSettings",
    "BalanceSettings",
    "BudgetSettings",
    "CooldownSettings",
    "EndpointSettings",
    "KeySettings",
    "ModelSettings",
    "PriceSettings",
    "RetrySettings",
    "RouteSettings",
    "RouterSettings",
    "ServerSettings",
    "StageSettings",
    "StateSettings",
    "TimeoutSettings",
    "TurnoutConfig",
]
