from __future__ import annotations

import re

import pytest

from turnout.errors import MissingDependency
from turnout.gateway.metrics import Metrics


@pytest.fixture
def prom() -> object:
    return pytest.importorskip("prometheus_client", reason="the server extra is not installed (pip install 'turnout[server]')")


def test_missing_prometheus_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "prometheus_client", None)  # makes the import fail
    with pytest.raises(MissingDependency, match=r"turnout\[server\]"):
        Metrics()


def _sample(body: str, name: str, **labels: str) -> float:
    """The value of one sample line, whatever order prometheus_client writes the labels in."""
    for line in body.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        if got == labels:
            return float(m.group(3))
    raise AssertionError(f"no sample {name}{labels} in:\n{body}")


def test_render_holds_every_observation(prom: object) -> None:
    m = Metrics()
    m.observe_request(
        "auto",
        "small",
        "ok",
        latency_s=0.4,
        ttft_s=0.08,
        decision_s=0.00007,
        prompt_tokens=12,
        completion_tokens=30,
        cost_usd=0.002,
    )
    m.observe_request("auto", "small", "ok", 1.5, None, 0.0003, 8, 10, 0.001)
    m.observe_request("auto", "big", "error", 0.2)
    m.inc_fallback("auto", "big", "small")
    m.inc_error("timeout")
    m.inc_error("timeout")
    body, content_type = m.render()
    text = body.decode()
    assert content_type.startswith("text/plain")
    assert _sample(text, "turnout_requests_total", route="auto", model="small", status="ok") == 2
    assert _sample(text, "turnout_requests_total", route="auto", model="big", status="error") == 1
    assert _sample(text, "turnout_tokens_total", route="auto", model="small", kind="prompt") == 20
    assert _sample(text, "turnout_tokens_total", route="auto", model="small", kind="completion") == 40
    assert _sample(text, "turnout_cost_usd_total", route="auto", model="small") == pytest.approx(0.003)
    assert _sample(text, "turnout_fallbacks_total", route="auto", from_model="big", to_model="small") == 1
    assert _sample(text, "turnout_errors_total", kind="timeout") == 2
    # histograms: 50 µs is the first decision bucket, so 70 µs lands in the 100 µs one
    assert _sample(text, "turnout_routing_decision_seconds_bucket", route="auto", le="5e-05") == 0
    assert _sample(text, "turnout_routing_decision_seconds_bucket", route="auto", le="0.0001") == 1
    assert _sample(text, "turnout_routing_decision_seconds_count", route="auto") == 2
    assert _sample(text, "turnout_time_to_first_token_seconds_count", route="auto", model="small") == 1
    assert _sample(text, "turnout_request_duration_seconds_count", route="auto", model="small") == 2
    assert _sample(text, "turnout_request_duration_seconds_sum", route="auto", model="small") == pytest.approx(1.9)
    assert _sample(text, "turnout_request_duration_seconds_count", route="auto", model="big") == 1


def test_two_instances_are_independent(prom: object) -> None:
    a, b = Metrics(), Metrics()  # would raise "Duplicated timeseries" on a shared registry
    a.observe_request("auto", "small", "ok", 0.1)
    a.inc_error("timeout")
    b.observe_request("auto", "small", "ok", 0.1)
    b.observe_request("auto", "small", "ok", 0.1)
    ta, tb = a.render()[0].decode(), b.render()[0].decode()
    assert _sample(ta, "turnout_requests_total", route="auto", model="small", status="ok") == 1
    assert _sample(tb, "turnout_requests_total", route="auto", model="small", status="ok") == 2
    assert 'kind="timeout"' not in tb


def test_nothing_goes_to_the_global_registry(prom: object) -> None:
    from prometheus_client import REGISTRY, generate_latest

    Metrics().observe_request("auto", "small", "ok", 0.1)
    assert b"turnout_" not in generate_latest(REGISTRY)
