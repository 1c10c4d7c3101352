from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from turnout.errors import RoutingError
from turnout.routing import Prediction, Router, TrainingData, create_router, register_router, router_names
from turnout.routing.registry import RouterRegistry


def test_builtin_names() -> None:
    names = router_names()
    for n in ["random", "best-single", "cheapest", "prior", "knn", "mlp", "mf", "bt", "graph", "profile", "ensemble"]:
        assert n in names


def test_importing_routing_does_not_import_torch_or_router_modules() -> None:
    code = (
        "import sys, turnout.routing as r; r.create_router('random');"
        "print('torch' in sys.modules, 'turnout.routing.knn' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_unknown_router_and_bad_params_tell_the_fix() -> None:
    with pytest.raises(RoutingError, match="choose one of: .*knn"):
        create_router("nope")
    with pytest.raises(RoutingError, match="accepted: k, temperature, shrink"):
        create_router("knn", kk=3)
    with pytest.raises(RoutingError, match="invalid parameters"):
        create_router("knn", k=0)


def test_third_party_router_registers_like_builtins() -> None:
    reg = RouterRegistry()

    @reg.register
    class Constant(Router):
        name = "const-test"

        def __init__(self, value: float = 0.5) -> None:
            self.value = value
            self.models: list[str] = []

        def fit(self, data: TrainingData) -> Constant:
            self.models = list(data.models)
            return self

        def predict(self, X: np.ndarray) -> Prediction:
            q = np.full((len(X), len(self.models)), self.value)
            return Prediction(self.models, q, np.zeros_like(q))

    assert reg.names() == ["const-test"]
    r = reg.create("const-test", {"value": 0.7})
    assert isinstance(r, Constant) and r.value == 0.7
    with pytest.raises(RoutingError, match="needs a class attribute 'name'"):
        reg.register(type("Nameless", (Router,), {}))  # type: ignore[arg-type]


def test_register_router_decorator_adds_to_default_registry() -> None:
    @register_router
    class Echo(Router):
        name = "echo-test"

        def fit(self, data: TrainingData) -> Echo:
            return self

        def predict(self, X: np.ndarray) -> Prediction:
            raise NotImplementedError

    assert "echo-test" in router_names()
    assert isinstance(create_router("echo-test"), Echo)
