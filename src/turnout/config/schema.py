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

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator


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
    """A spending target the policy calibrates lambda to (exactly one target field).

    ``controller`` says how the route's actual spend steers lambda after start-up: ``tighten`` raises
    it while the running figure is over target and never lowers it; ``pi`` holds the running figure at
    the target both ways (a PI controller on a sliding window, per model for share targets), with the
    gains ``kp``, ``ki``, ``window`` and ``lambda_range`` (lambda stays within the start-up value
    divided and multiplied by it). See gateway/budget.py.
    """

    target_cost_per_request: float | None = Field(None, gt=0)
    target_share: dict[str, float] | None = None
    controller: Literal["tighten", "pi"] = "pi"
    kp: float | None = Field(None, ge=0)
    ki: float | None = Field(None, ge=0)
    window: int | None = Field(None, ge=1)
    lambda_range: float | None = Field(None, gt=1)

    @model_validator(mode="after")
    def _exactly_one(self) -> BudgetSettings:
        if (self.target_cost_per_request is None) == (self.target_share is None):
            raise ValueError("give exactly one of target_cost_per_request or target_share")
        gains = [k for k in ("kp", "ki", "window", "lambda_range") if getattr(self, k) is not None]
        if gains and self.controller != "pi":
            raise ValueError(f"{', '.join(gains)} tune the PI controller: set controller: pi, or leave them out")
        return self


class BanditSettings(_Strict):
    """Online learning of a ``router: {type: bandit}`` route (see gateway/bandit_route.py).

    The learned state is saved to ``state_path`` (temp file + rename) every ``save_every_s`` while
    feedback comes in and at shutdown, and loaded from it at start-up: learning survives a restart.
    With ``share`` on, replicas pool their learning through the shared state every ``share_every_s``
    (see gateway/bandit_sync.py).
    """

    #: the bandit's state file (a router artifact); null keeps the learning in memory only
    state_path: str | None = None
    save_every_s: float = Field(30.0, gt=0)
    #: recent decisions whose context is kept in memory for their feedback; older ones re-embed the logged prompt
    remember: int = Field(10_000, ge=0)
    #: seed of the exploration draws (null: fresh entropy at every start)
    seed: int | None = None
    #: pool the learning with the other replicas through the state store: auto = when the store is shared (Redis);
    #: on = also with the in-process store (gateways of one process built on one shared object: tests)
    share: Literal["auto", "on", "off"] = "auto"
    #: seconds between two exchanges with the shared state (a crash loses at most this much of a replica's learning)
    share_every_s: float = Field(1.0, gt=0)

    @field_validator("share", mode="before")
    @classmethod
    def _yaml_booleans(cls, value: object) -> object:
        # YAML 1.1 reads a bare on/off as a boolean: 'share: on' must mean "on", not fail as True
        if isinstance(value, bool):
            return "on" if value else "off"
        return value


class CascadeStepSettings(_Strict):
    """One step of a cascade: a model (or the route's router's pick among some), and when to accept its answer.

    Every step but the last names an acceptance signal (``accept``) and a ``threshold`` (or the plan is
    calibrated): its answer is kept when the signal's confidence is at least the threshold, else the next
    step runs. ``samples`` extra answers of the same model, or the answers of the ``probe`` models, are
    what an ``agreement`` (or ``verifier``) signal compares the answer with.
    """

    model: str | None = None
    #: the route's router and policy choose this step's model per request among these
    router_pick: list[str] | None = None
    fallbacks: list[str] = []
    accept: str | None = None
    #: the acceptance signal's parameters (the verifier's ``artifact``)
    params: dict[str, object] = {}
    threshold: float | None = Field(None, ge=0, le=1)
    samples: int = Field(0, ge=0, le=8)
    #: temperature of the extra samples (they must differ to mean anything)
    sample_temperature: float = Field(0.8, ge=0, le=2)
    probe: list[str] = []

    @model_validator(mode="after")
    def _one_model(self) -> CascadeStepSettings:
        if (self.model is None) == (self.router_pick is None):
            raise ValueError("give a step either model (fixed) or router_pick (a list the router chooses from)")
        if self.router_pick is not None and not self.router_pick:
            raise ValueError("router_pick needs at least one model")
        return self


class CalibrateSettings(_Strict):
    """A cascade's thresholds set at start-up from training confidences: a target share of escalations or a
    target mean cost per request (exactly one)."""

    #: JSONL of training confidences and costs: {prompt_id, model, signal, confidence, cost_usd, split?}
    sample: str
    target_escalation: float | None = Field(None, ge=0, le=1)
    target_cost: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _exactly_one(self) -> CalibrateSettings:
        if (self.target_escalation is None) == (self.target_cost is None):
            raise ValueError("give exactly one of target_escalation or target_cost")
        return self


class SwitchSettings(_Strict):
    """A fan-out's routing–aggregation switch: fan out only when its predicted utility beats the single
    model's by ``min_gain`` (utility = quality − λ·cost, predicted by the route's router)."""

    min_gain: float = 0.0


class PlanSettings(_Strict):
    """How a route answers once its policy has decided: a cascade, a fan-out, or multi-round routing.

    ``cascade``: ``steps`` (cheap first), ``calibrate`` or per-step thresholds, ``max_calls``, ``stream``.
    ``fanout``: ``models`` answer in parallel; ``aggregator`` is ``vote`` or a model that reads their
    answers; ``min_answers`` that must come back; an optional ``switch``. ``rounds``: ``router_model`` reads
    the question, may ask ``models`` (up to ``max_rounds`` times, within ``max_cost_usd``), then answers.
    """

    kind: Literal["cascade", "fanout", "rounds"]
    steps: list[CascadeStepSettings] = []
    calibrate: CalibrateSettings | None = None
    max_calls: int | None = Field(None, ge=1)
    #: buffer: every answer waits for its acceptance; live_last: the last step (always kept) streams live
    stream: Literal["buffer", "live_last"] = "live_last"
    models: list[str] = []
    aggregator: str | None = None
    min_answers: int | None = Field(None, ge=1)
    switch: SwitchSettings | None = None
    router_model: str | None = None
    max_rounds: int = Field(2, ge=1, le=8)
    max_cost_usd: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _fits_kind(self) -> PlanSettings:
        own = {
            "cascade": {"steps", "calibrate", "max_calls", "stream"},
            "fanout": {"models", "aggregator", "min_answers", "switch"},
            "rounds": {"router_model", "models", "max_rounds", "max_cost_usd"},
        }[self.kind]
        foreign = sorted(k for k in self.model_fields_set if k != "kind" and k not in own)
        if foreign:
            raise ValueError(f"{', '.join(foreign)} do(es) not apply to a {self.kind} plan (it takes: {', '.join(sorted(own))})")
        if self.kind == "cascade" and len(self.steps) < 2:
            raise ValueError("a cascade needs at least two steps (one model is a plain route)")
        if self.kind == "fanout":
            if len(self.models) < 2:
                raise ValueError("a fan-out needs at least two models")
            if self.aggregator is None:
                raise ValueError("a fan-out needs an aggregator: 'vote' or the model that reads the answers")
            if self.min_answers is not None and self.min_answers > len(self.models):
                raise ValueError(f"min_answers ({self.min_answers}) exceeds the {len(self.models)} models")
        if self.kind == "rounds" and (self.router_model is None or not self.models):
            raise ValueError("a rounds plan needs router_model and the models it may ask")
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
    #: online learning of a bandit route (its state file, the contexts kept for feedback, the seed)
    bandit: BanditSettings | None = None
    #: a cascade, fan-out or multi-round plan instead of one model with its fallbacks
    plan: PlanSettings | None = None

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
    #: requests this key may start in any 60 s window (every replica together); null = no limit
    rpm: int | None = Field(None, ge=1)
    #: tokens (prompt + completion) this key may use in any 60 s window; null = no limit
    tpm: int | None = Field(None, ge=1)
    #: the key's team and tags, for decision rules (a ``key`` signal)
    team: str | None = None
    tags: list[str] = []

    @model_validator(mode="after")
    def _one_secret(self) -> KeySettings:
        if (self.key_sha256 is None) == (self.key_env is None):
            raise ValueError("give exactly one of key_sha256 or key_env")
        return self


class StateFailureSettings(_Strict):
    """What a request meets when the shared state fails (Redis down), per concern.

    ``closed`` refuses it with a 503 naming the store; ``open`` serves it unchecked (a warning in the log,
    counted in ``turnout_errors_total{kind="state_unavailable"}``). The semantic cache always fails open (a
    miss), and an answer already made is always served, its spend logged if it cannot be recorded.
    """

    budgets: Literal["closed", "open"] = "closed"
    rate_limits: Literal["closed", "open"] = "closed"


class HealthSettings(_Strict):
    """Endpoint health (gateway/health.py): probes with backoff, and out-of-rotation marks shared by replicas.

    Every ``interval_s`` the gateway probes the endpoints that are out of rotation (backing off while they
    fail) and, with ``active: true``, every endpoint; it shares what it takes out of rotation through the
    state (Redis) and reads the other replicas' marks, so an endpoint one replica takes out is skipped by
    the others within one interval.
    """

    interval_s: float = Field(5.0, gt=0, le=3600)
    #: probe every endpoint each interval (finds a dead engine before a request does), not only those out
    active: bool = False
    #: what is probed: relative to the endpoint's base URL (``models`` -> ``/v1/models``) or, with a leading
    #: slash, a path on its host (``/health``)
    path: str = Field("models", min_length=1)
    timeout_s: float = Field(2.0, gt=0, le=60)
    #: the longest wait between two probes of an endpoint that keeps failing them
    max_backoff_s: float = Field(60.0, gt=0)


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
    #: what a request meets when the store fails (Redis down), per concern: refused (closed) or served unchecked
    on_failure: StateFailureSettings = StateFailureSettings()

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


class SignalSettings(_Strict):
    """One request signal (``docs/signals.md``): a registered type (keywords, regex, tokens, language, domain,
    jailbreak, similarity, score, ...) with its params; ``always`` computes it for every request even when no
    decision rule reads it (its value is then in every decision and log row)."""

    type: str
    always: bool = False
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
    #: endpoint health probes and shared out-of-rotation marks
    health: HealthSettings = HealthSettings()
    #: request signals by name, for decision rules (turnout.signals; docs/signals.md)
    signals: dict[str, SignalSettings] = {}
    #: decision rules, parsed and checked by turnout.signals.decisions (docs/signals.md), or in decisions_file
    decisions: list[dict[str, object]] = []
    #: a YAML file of decision rules, watched and reloaded (and on SIGHUP) after validation
    decisions_file: str | None = None
    #: conflicts among decision rules (never matches, same-priority overlap, shadowed): refuse to start, or warn
    decision_conflicts: Literal["error", "warn"] = "error"
    # where this config came from (a path, or "<embedded default>"); set by the loader
    _source: str = PrivateAttr("<memory>")

    @property
    def source(self) -> str:
        """The file this config was read from, for error messages."""
        return self._source


__all__ = [
    "BackendSettings",
    "BalanceSettings",
    "BanditSettings",
    "BudgetSettings",
    "CalibrateSettings",
    "CascadeStepSettings",
    "CooldownSettings",
    "EndpointSettings",
    "KeySettings",
    "ModelSettings",
    "PlanSettings",
    "PriceSettings",
    "RetrySettings",
    "RouteSettings",
    "RouterSettings",
    "ServerSettings",
    "SignalSettings",
    "StageSettings",
    "HealthSettings",
    "StateFailureSettings",
    "StateSettings",
    "SwitchSettings",
    "TimeoutSettings",
    "TurnoutConfig",
]
