"""What a gateway serves, as its clients and operators see it: ``/v1/models``, the start-up summary, reachability.

Pure lookups over the gateway's routes and models (and one start-up TCP probe of every remote backend); the
request path never calls them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from turnout.gateway.endpoints import ModelTarget


def model_items(gw: Any, key: Any | None = None) -> list[dict[str, Any]]:
    """Routes and models in OpenAI ``/v1/models`` item form (routes first); with ``key``, only what it may use."""
    allowed = getattr(key, "allowed", None)
    usable = gw.usable_models(key)
    items = [
        {
            "id": r,
            "object": "model",
            "created": 0,
            "owned_by": "turnout",
            "turnout": {"kind": "route", "candidates": list(rt.candidates.values())},
        }
        for r, rt in gw.routes.items()
        if allowed is None or r in allowed
    ]
    items += [
        {
            "id": m,
            "object": "model",
            "created": 0,
            "owned_by": t.backend.name,
            "turnout": {
                "kind": "model",
                "context_window": t.context_window,
                "price": {"input_per_mtok": t.price.input_per_mtok, "output_per_mtok": t.price.output_per_mtok},
            },
        }
        for m, t in gw.targets.items()
        if usable is None or m in usable
    ]
    return items


def describe(gw: Any) -> dict[str, Any]:
    """What this gateway serves: routes (router, candidates, plan), models (endpoints, price), stages."""
    return {
        "routes": {
            n: {
                "router": rt.router_name,
                "candidates": list(rt.candidates.values()),
                "embedder": rt.embedder_name,
                "budget": rt.budget is not None,
                "fallbacks": list(rt.fallbacks),
            }
            for n, rt in gw.routes.items()
        },
        "models": {n: t.describe() for n, t in gw.targets.items()},
        "stages": gw.stages.names(),
        "keys": len(getattr(gw.keys, "specs", []) or []),
        "request_log": str(getattr(gw.request_log, "path", "")) or None,
    }


async def unreachable_backends(targets: Mapping[str, ModelTarget], timeout_s: float = 1.0) -> dict[str, str]:
    """Backends (by name) whose host does not accept a TCP connection now, with the reason.

    A start-up check only: a remote API may come and go, so this warns (log, /readyz) rather than
    refusing to start; the breakers and fallbacks handle it per request.
    """
    from urllib.parse import urlsplit

    backends = {e.backend.name: e.backend for t in targets.values() for e in t.endpoints}

    async def probe(url: str) -> str | None:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, port), timeout_s)
        except (TimeoutError, OSError) as exc:
            return "timed out" if isinstance(exc, asyncio.TimeoutError) else (exc.strerror or type(exc).__name__)
        writer.close()
        return None

    urls: dict[str, str] = {}
    for name, b in backends.items():
        url = getattr(b, "base_url", None)  # a backend of a protocol without one (a plugin's) is not probed
        if isinstance(url, str):
            urls[name] = url
    found = await asyncio.gather(*(probe(u) for u in urls.values()))
    return {name: why for name, why in zip(urls, found) if why is not None}


__all__ = ["describe", "model_items", "unreachable_backends"]
