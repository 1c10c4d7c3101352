"""turnout's public surface, written down: what ``turnout`` and each room export, and what importing them costs.

A name added to or removed from a room's ``__all__`` fails :func:`test_room_exports_exactly_the_listed_names`
until :data:`SURFACE` below is updated with it, so every change to the public surface is a deliberate,
reviewed one (httpx's ``tests/test_exported_members.py`` guards its surface the same way). A room without
``__all__`` declares an empty surface (``turnout.cli``: its surface is the ``turnout`` command).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

import turnout

REPO = Path(__file__).resolve().parents[1]

#: every room's ``__all__``, sorted; update it together with the room (and say so in the change's notes)
SURFACE: dict[str, list[str]] = {
    "turnout": ["__version__"],
    "turnout.types": [
        "Candidate",
        "ChatRequest",
        "ChatResponse",
        "Decision",
        "PLAN_CASCADE",
        "PLAN_FANOUT",
        "PLAN_SINGLE",
        "Plan",
        "PlanStep",
        "Price",
        "Reason",
        "StreamChunk",
        "Usage",
    ],
    "turnout.errors": [
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
        "MethodNotAllowedError",
        "MissingDependency",
        "ModelNotAllowedError",
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
        "UnsupportedRequestError",
        "UpstreamRejectedError",
    ],
    "turnout.tokens": ["CHARS_PER_TOKEN", "MESSAGE_OVERHEAD_TOKENS", "estimate_prompt_tokens", "estimate_tokens", "message_text"],
    "turnout.fastjson": ["DecodeError", "MAX_WRITE_DEPTH", "dumps", "loads"],
    "turnout.plugins": ["BACKENDS", "EMBEDDERS", "ROUTERS", "STAGES", "plugin_entry_points"],
    "turnout.routing": [
        "Policy",
        "Prediction",
        "Router",
        "TrainingData",
        "calibrate_lambda",
        "choose",
        "create_router",
        "estimate_tokens",
        "lambda_grid",
        "load_router",
        "register_router",
        "router_class",
        "router_names",
        "save_router",
    ],
    "turnout.embed": [
        "BatchingEmbedder",
        "BatchingStats",
        "CachedEmbedder",
        "Embedder",
        "EmbedderRegistry",
        "EmbedderSpec",
        "HashingEmbedder",
        "MemoryCachedEmbedder",
        "builtin_registry",
        "create_embedder",
        "default_cache_dir",
        "default_registry",
        "register_embedder",
    ],
    "turnout.backends": [
        "AnthropicBackend",
        "Backend",
        "OpenAIBackend",
        "Timeouts",
        "backend_protocols",
        "create_backend",
        "register_backend",
    ],
    "turnout.evaluation": ["RoutingTable", "aiq", "apgr_cpt", "cost_fraction_to_match", "load_table", "nondecreasing_hull"],
    "turnout.testing": [
        "HashEmbedder",
        "HostileServer",
        "Rule",
        "Script",
        "ScriptedBackend",
        "ScriptedServer",
        "StaticRouter",
        "Step",
    ],
    "turnout.config": [
        "BackendSettings",
        "KeySettings",
        "ModelSettings",
        "RouteSettings",
        "ServerSettings",
        "TurnoutConfig",
        "default_config",
        "load_config",
        "parse_config",
        "resolve",
    ],
    "turnout.gateway": [
        "Answer",
        "Attempt",
        "Backoff",
        "Block",
        "CircuitBreaker",
        "Endpoint",
        "Gateway",
        "ModelTarget",
        "Offloader",
        "PlanExecutor",
        "Price",
        "Redirect",
        "RequestContext",
        "RouteRuntime",
        "Stages",
        "StreamSession",
        "register_plan",
        "register_stage",
    ],
    "turnout.signals": [],
    "turnout.cache": [
        "Blocked",
        "CHECKS",
        "CacheEntry",
        "CacheHit",
        "CachePolicy",
        "CacheSettings",
        "CacheStore",
        "ContextFingerprint",
        "DEFAULT_THRESHOLD",
        "GuardVerdict",
        "HARMLESS_PARAMS",
        "InMemoryCacheStore",
        "LookalikeGuard",
        "LookupResult",
        "SemanticCache",
        "StoreOutcome",
        "assemble_body",
        "build_cache",
        "normalise",
        "replay_chunks",
    ],
    "turnout.state": ["Counters", "InMemoryCounters", "RedisCounters", "Reservation", "SqliteCounters", "StateStore"],
    "turnout.cli": [],
    "turnout.server": [],
}

#: exported names defined outside turnout on purpose: (room, name) -> why
FOREIGN_OK = {
    ("turnout.fastjson", "DecodeError"): "orjson's (or json's) decode error, so callers catch one class either way",
}

#: what the optional extras install (and pandas/pyarrow, read only when a table is): no room may import them
HEAVY = (
    "torch",
    "sklearn",  # ml
    "onnxruntime",
    "onnx",
    "sentence_transformers",
    "transformers",
    "tokenizers",  # embed
    "starlette",
    "uvicorn",
    "prometheus_client",  # server
    "llama_cpp",  # local
    "redis",  # redis
    "names",  # guards
    "matplotlib",  # plot
    "pandas",
    "pyarrow",
    "scipy",
)

#: run in a fresh interpreter: import one room, print which heavy packages got imported and from which turnout line
_PROBE = r"""
import importlib, json, sys, traceback

heavy = set(sys.argv[2].split(","))
first_seen = {}

class Spy:
    # a meta-path finder that finds nothing: it only notes where each heavy package was first asked for
    def find_spec(self, name, path=None, target=None):
        top = name.partition(".")[0]
        if top in heavy and top not in first_seen:
            ours = [f for f in traceback.extract_stack() if "turnout" in f.filename.replace("\\", "/").split("/")]
            first_seen[top] = f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "?"
        return None

sys.meta_path.insert(0, Spy())
importlib.import_module(sys.argv[1])
print(json.dumps({m: first_seen.get(m, "?") for m in sorted(heavy) if m in sys.modules}))
"""


def test_every_room_is_listed() -> None:
    """A new room (a package under src/turnout) or top-level module must get its line in SURFACE."""
    root = Path(turnout.__file__).parent
    packages = {f"turnout.{p.parent.name}" for p in root.glob("*/__init__.py")}
    modules = {f"turnout.{p.stem}" for p in root.glob("*.py") if not p.stem.startswith("_")}
    found = {"turnout"} | packages | modules
    assert found == set(SURFACE), (
        f"rooms without a SURFACE entry: {sorted(found - set(SURFACE))}; entries without a room: {sorted(set(SURFACE) - found)}"
    )


@pytest.mark.parametrize("room", sorted(SURFACE))
def test_room_exports_exactly_the_listed_names(room: str) -> None:
    module = importlib.import_module(room)
    exported = list(getattr(module, "__all__", []))
    assert len(exported) == len(set(exported)), f"{room}.__all__ repeats a name"
    added, removed = sorted(set(exported) - set(SURFACE[room])), sorted(set(SURFACE[room]) - set(exported))
    assert not added and not removed, (
        f"{room}.__all__ changed: added {added}, removed {removed}; if that is intended, update SURFACE in {__file__}"
    )


@pytest.mark.parametrize("room", sorted(SURFACE))
def test_every_exported_name_imports_and_is_documented(room: str) -> None:
    module = importlib.import_module(room)
    for name in SURFACE[room]:
        namespace: dict[str, object] = {}
        exec(f"from {room} import {name}", namespace)  # the form users write, not getattr
        obj = namespace[name]
        assert obj is getattr(module, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            defined_in = obj.__module__ or ""
            if (room, name) not in FOREIGN_OK:
                assert defined_in == "turnout" or defined_in.startswith("turnout."), (
                    f"{room}.{name} is {defined_in}'s: a third-party name re-exported by accident?"
                )
            assert inspect.getdoc(obj), f"{room}.{name} has no docstring"


def test_version_matches_the_installed_distribution() -> None:
    assert turnout.__version__ == importlib.metadata.version("turnout"), (
        "turnout.__version__ and pyproject.toml's version differ: change both"
    )


@pytest.mark.parametrize("room", sorted(SURFACE))
def test_importing_a_room_pulls_in_no_optional_heavy_dependency(room: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, room, ",".join(HEAVY)], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    pulled = json.loads(proc.stdout.strip().splitlines()[-1])
    assert pulled == {}, (
        f"importing {room} imported {', '.join(pulled)} (first asked for at: {pulled}); "
        "import it inside the function that needs it"
    )


def test_the_probe_sees_a_heavy_import() -> None:
    """The subprocess probe itself works: a module that does import numpy is reported, with the importing line."""
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, "turnout.routing", "numpy"], capture_output=True, text=True, cwd=REPO, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    pulled = json.loads(proc.stdout.strip().splitlines()[-1])
    assert list(pulled) == ["numpy"]
    assert "turnout" in pulled["numpy"] and pulled["numpy"].rsplit(":", 1)[1].isdigit()
