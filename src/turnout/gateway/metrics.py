"""Prometheus metrics of one gateway, in a registry the gateway owns.

Each :class:`Metrics` builds its own ``prometheus_client.CollectorRegistry``
instead of using the process-global default one: two gateways in one process
(or two tests) never clash over metric names, and nothing is registered at
import time.

Series (all names start with ``turnout_``)::

    requests_total{route,model,status}            counter
    tokens_total{route,model,kind}                counter, kind = prompt | completion
    cost_usd_total{route,model}                   counter
    fallbacks_total{route,from_model,to_model}    counter
    errors_total{kind}                            counter, kind = TurnoutError.kind
    answered_by_total{route,source}               counter: answers no model made (cache, a guard's reply)
    stage_outcomes_total{stage,outcome}           counter: a stage blocked, redirected or answered
    request_log_dropped_total, request_log_write_errors_total   the request log's losses (read at scrape)
    embedding_batches_total{embedder}, embedding_texts_total{embedder}   micro-batching (read at scrape)
    routing_decision_seconds{route}               histogram, buckets from 50 µs
    time_to_first_token_seconds{route,model}      histogram (streamed answers only)
    request_duration_seconds{route,model}         histogram

Hot path: ``Counter.labels(...)`` takes a lock and hashes the label tuple on
every call, so the labelled children are cached in plain dicts keyed by the
label tuple. A cache miss only creates the same child prometheus_client would
return anyway, so a race between two threads is harmless.

Label cardinality is the caller's job: ``model`` must be a configured model
(never a free-form string from the client), ``status`` a short word such as
``ok`` or ``error``.

Example::

    metrics = Metrics()
    metrics.observe_request("auto", "qwen2.5-7b", "ok", latency_s=0.8, ttft_s=0.12,
                            decision_s=0.0003, prompt_tokens=42, completion_tokens=80,
                            cost_usd=0.00012)
    body, content_type = metrics.render()
"""

from __future__ import annotations

from typing import Any

from turnout.errors import MissingDependency

#: routing runs in tens of microseconds (a kNN lookup) up to tens of milliseconds
#: (an embedding plus an MLP): buckets must resolve both ends.
DECISION_BUCKETS: tuple[float, ...] = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)
#: first token: a local llama.cpp answers in ~50-150 ms, hosted APIs in 0.3-3 s, cold starts in tens of seconds
TTFT_BUCKETS: tuple[float, ...] = (0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0)
#: whole requests: long generations run for minutes
DURATION_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0, 300.0)


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:  # the server extra is not installed
        raise MissingDependency("prometheus-client", "server", "metrics") from exc
    return prometheus_client


class Metrics:
    """The gateway's counters and histograms, rendered in Prometheus text format.

    Thread-safe (prometheus_client children are); every method is cheap enough
    to call on the event loop.
    """

    def __init__(self) -> None:
        prom = _prometheus()
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = prom.Counter(
            "turnout_requests_total",
            "Chat requests answered, by route, model and status.",
            ("route", "model", "status"),
            registry=r,
        )
        self._tokens = prom.Counter(
            "turnout_tokens_total",
            "Tokens processed, by route, model and kind (prompt or completion).",
            ("route", "model", "kind"),
            registry=r,
        )
        self._cost = prom.Counter(
            "turnout_cost_usd_total",
            "Estimated spend in USD, by route and model.",
            ("route", "model"),
            registry=r,
        )
        self._fallbacks = prom.Counter(
            "turnout_fallbacks_total",
            "Fallbacks from one model to the next after a failed attempt.",
            ("route", "from_model", "to_model"),
            registry=r,
        )
        self._errors = prom.Counter(
            "turnout_errors_total",
            "Errors by kind (the TurnoutError kind).",
            ("kind",),
            registry=r,
        )
        self._decision = prom.Histogram(
            "turnout_routing_decision_seconds",
            "Time the router and policy took to pick a model.",
            ("route",),
            buckets=DECISION_BUCKETS,
            registry=r,
        )
        self._ttft = prom.Histogram(
            "turnout_time_to_first_token_seconds",
            "Time from request to the first streamed token.",
            ("route", "model"),
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self._duration = prom.Histogram(
            "turnout_request_duration_seconds",
            "Time from request to the last byte of the answer.",
            ("route", "model"),
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self._answered_by = prom.Counter(
            "turnout_answered_by_total",
            "Answers no model made, by route and source (cache, a guard's reply).",
            ("route", "source"),
            registry=r,
        )
        self._stages = prom.Counter(
            "turnout_stage_outcomes_total",
            "Pipeline stage outcomes: block, redirect, answer.",
            ("stage", "outcome"),
            registry=r,
        )
        # label tuple -> labelled child; see the module docstring for why
        self._request_children: dict[tuple[str, str, str], Any] = {}
        self._model_children: dict[tuple[str, str], tuple[Any, Any, Any, Any, Any]] = {}
        self._decision_children: dict[str, Any] = {}
        self._fallback_children: dict[tuple[str, str, str], Any] = {}
        self._error_children: dict[str, Any] = {}
        self._answered_by_children: dict[tuple[str, str], Any] = {}
        self._stage_children: dict[tuple[str, str], Any] = {}

    def _per_model(self, route: str, model: str) -> tuple[Any, Any, Any, Any, Any]:
        key = (route, model)
        children = self._model_children.get(key)
        if children is None:
            children = (
                self._tokens.labels(route, model, "prompt"),
                self._tokens.labels(route, model, "completion"),
                self._cost.labels(route, model),
                self._ttft.labels(route, model),
                self._duration.labels(route, model),
            )
            self._model_children[key] = children
        return children

    def observe_request(
        self,
        route: str,
        model: str,
        status: str,
        latency_s: float,
        ttft_s: float | None = None,
        decision_s: float | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        cost_usd: float = 0.0,
    ) -> None:
        """Record one finished request (successful or not).

        ``ttft_s`` is None for non-streamed answers; ``decision_s`` is None when
        no routing happened (the client named a concrete model). Token counts and
        cost of zero add nothing; negative values are a caller bug and rejected
        by prometheus_client with ``ValueError``.
        """
        rkey = (route, model, status)
        child = self._request_children.get(rkey)
        if child is None:
            child = self._request_children[rkey] = self._requests.labels(route, model, status)
        child.inc()
        self.observe_call(route, model, prompt_tokens, completion_tokens, cost_usd)
        _, _, _, ttft, duration = self._per_model(route, model)
        duration.observe(latency_s)
        if ttft_s is not None:
            ttft.observe(ttft_s)
        if decision_s is not None:
            self.observe_decision(route, decision_s)

    def observe_call(self, route: str, model: str, prompt_tokens: int, completion_tokens: int, cost_usd: float) -> None:
        """Add the tokens and cost of model calls to ``model``'s series (:meth:`observe_request` does for the answering
        model; the ledger for the calls of a request that another model answered: a cascade's rejected step, a
        fan-out member, a fallback that failed part-way), so spend is counted where it was made."""
        prompt, completion, cost, _, _ = self._per_model(route, model)
        if prompt_tokens:
            prompt.inc(prompt_tokens)
        if completion_tokens:
            completion.inc(completion_tokens)
        if cost_usd:
            cost.inc(cost_usd)

    def observe_decision(self, route: str, decision_s: float) -> None:
        """Record one routing decision's duration (also done by :meth:`observe_request`)."""
        child = self._decision_children.get(route)
        if child is None:
            child = self._decision_children[route] = self._decision.labels(route)
        child.observe(decision_s)

    def inc_fallback(self, route: str, from_model: str, to_model: str) -> None:
        """Count one fallback from ``from_model`` (which failed) to ``to_model``."""
        key = (route, from_model, to_model)
        child = self._fallback_children.get(key)
        if child is None:
            child = self._fallback_children[key] = self._fallbacks.labels(route, from_model, to_model)
        child.inc()

    def inc_error(self, kind: str) -> None:
        """Count one error of ``kind`` (use ``TurnoutError.kind``, a short fixed word)."""
        child = self._error_children.get(kind)
        if child is None:
            child = self._error_children[kind] = self._errors.labels(kind)
        child.inc()

    def inc_answered_by(self, route: str, source: str) -> None:
        """Count one answer made without a model (``source``: cache, or the stage that answered)."""
        key = (route, source)
        child = self._answered_by_children.get(key)
        if child is None:
            child = self._answered_by_children[key] = self._answered_by.labels(route, source)
        child.inc()

    def inc_stage(self, stage: str, outcome: str) -> None:
        """Count one stage outcome (``block``, ``redirect`` or ``answer``)."""
        key = (stage, outcome)
        child = self._stage_children.get(key)
        if child is None:
            child = self._stage_children[key] = self._stages.labels(stage, outcome)
        child.inc()

    def watch(self, request_log: Any = None, embeddings: Any = None) -> None:
        """Report the request log's losses and the embedders' batching, read when /metrics is scraped."""
        self.registry.register(_Watched(self._prom, request_log, embeddings))

    def render(self) -> tuple[bytes, str]:
        """The registry in Prometheus text exposition format: ``(body, content_type)``."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST


class _Watched:
    """A collector of figures other parts keep (read at scrape time: nothing to update per request)."""

    def __init__(self, prom: Any, request_log: Any, embeddings: Any) -> None:
        self._prom = prom
        self._log = request_log
        self._emb = embeddings

    def describe(self) -> list[Any]:
        return []

    def collect(self) -> Any:
        from prometheus_client import core

        if self._log is not None:
            yield core.CounterMetricFamily(
                "turnout_request_log_dropped",
                "Request-log entries dropped (queue full or log closed).",
                value=getattr(self._log, "dropped", 0),
            )
            yield core.CounterMetricFamily(
                "turnout_request_log_write_errors",
                "Request-log entries SQLite refused.",
                value=getattr(self._log, "write_errors", 0),
            )
        if self._emb is not None:
            batches = core.CounterMetricFamily(
                "turnout_embedding_batches", "Embedding batches run, by embedder.", labels=["embedder"]
            )
            texts = core.CounterMetricFamily(
                "turnout_embedding_texts", "Texts embedded in batches, by embedder.", labels=["embedder"]
            )
            for name, st in self._emb.stats().items():
                batches.add_metric([name], st["batches"])
                texts.add_metric([name], st["texts"])
            yield batches
            yield texts


__all__ = ["DECISION_BUCKETS", "DURATION_BUCKETS", "TTFT_BUCKETS", "Metrics"]
