"""A scripted provider for tests and benches: answers, delays and faults on cue.

One :class:`Script` drives two faces:

* :class:`ScriptedBackend` implements :class:`turnout.backends.base.Backend`
  in-process (no sockets), raising the same errors the real backends would;
* :class:`ScriptedServer` serves the wire protocol on a free loopback port
  (``openai``: ``/v1/chat/completions``, ``/v1/completions`` and
  ``/v1/models``; ``anthropic``: ``/v1/messages``), from a raw asyncio HTTP/1.1
  server with keep-alive in a background thread. A raw server keeps the
  per-request overhead far below a framework's, which matters because the
  gateway bench uses it as the fixed-latency upstream at concurrency 64.

The parts live in private modules (the script model in ``_script``, the
backend in ``_scripted_backend``, the server in ``_scripted_server``, the wire
bodies in ``_wire``); this module is their public face and the command line.

Script format. A :class:`Step` says how to answer one request. For each
request the script takes, in this order: the first *rule* whose ``match``
regex is found in the prompt (the user turns) and whose ``model`` (if set)
equals the requested model; else the next *queued* step (each used once);
else the *default* step. Step fields:

``text``          the answer (streamed one word-ish token per chunk)
``latency``       seconds before the first byte
``slow``          seconds between stream chunks
``fault``         ``None`` or one of ``status`` (error status with an OpenAI /
                  Anthropic error body), ``reset`` (close the connection
                  abruptly, no answer), ``cut`` (stop mid-way: a stream without
                  its finish chunk and ``[DONE]``, a body shorter than its
                  ``Content-Length``), ``malformed`` (invalid JSON / broken SSE),
                  ``hang`` (never answer)
``status``        HTTP status for ``fault="status"`` (default 500)
``prompt_tokens`` / ``completion_tokens``  usage to report (estimated if unset)
``stream_usage``  send the usage chunk when streaming (False mimics llama.cpp)
``tool_calls``    calls the model makes after ``text``: ``[{"id", "name", "arguments"}]``
                  (arguments as JSON text); the answer then finishes with
                  ``tool_calls`` (OpenAI) / ``tool_use`` (Anthropic), and streams
                  send each call's arguments in several pieces, as providers do

Example::

    script = Script(
        default=Step(text="Hello there", latency=0.02),
        queue=[Step(fault="status", status=503)],          # the first request fails
        rules=[Rule(match="boom", step=Step(fault="reset"))],
    )
    with ScriptedServer(script) as srv:                     # srv.base_url -> http://127.0.0.1:P/v1
        ...
    assert srv.count == 2                                   # attempts that reached it

The same script as JSON (``Script.from_dict``; ``--script FILE`` on the command line)::

    {"default": {"text": "Hello there", "latency": 0.02},
     "queue": [{"fault": "status", "status": 503}],
     "rules": [{"match": "boom", "step": {"fault": "reset"}}]}

Standalone process (for benches and foreign gateways)::

    python -m turnout.testing.scripted --port 9100 --latency-ms 20
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence

from turnout.testing._script import FAULTS, RecordedRequest, Rule, Script, Step
from turnout.testing._scripted_backend import ScriptedBackend
from turnout.testing._scripted_server import ScriptedServer


def main(argv: Sequence[str] | None = None) -> None:
    """Run a scripted server in the foreground: ``python -m turnout.testing.scripted --port P``."""
    p = argparse.ArgumentParser(prog="python -m turnout.testing.scripted", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 picks a free port (printed on start)")
    p.add_argument("--protocol", choices=("openai", "anthropic"), default="openai")
    p.add_argument("--latency-ms", type=float, default=0.0, help="delay before the first byte of every answer")
    p.add_argument("--slow-ms", type=float, default=0.0, help="delay between stream chunks")
    p.add_argument("--text", default=Step.text)
    p.add_argument("--model", action="append", default=None, help="model names listed by /v1/models")
    p.add_argument("--script", help="JSON script file (overrides --latency-ms/--slow-ms/--text)")
    args = p.parse_args(argv)
    if args.script:
        with open(args.script, encoding="utf-8") as f:
            script = Script.from_dict(json.load(f))
    else:
        script = Script(Step(text=args.text, latency=args.latency_ms / 1000, slow=args.slow_ms / 1000))
    srv = ScriptedServer(script, protocol=args.protocol, host=args.host, port=args.port, models=args.model or ("scripted",))

    async def run() -> None:
        task = asyncio.create_task(srv.serve_forever())
        await asyncio.to_thread(srv.wait_ready)
        print(f"scripted {args.protocol} server listening on {srv.base_url}", flush=True)
        await task

    try:
        import uvloop  # optional: a faster event loop when installed (uvicorn[standard] brings it)

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


__all__ = ["FAULTS", "RecordedRequest", "Rule", "Script", "ScriptedBackend", "ScriptedServer", "Step", "main"]


if __name__ == "__main__":
    main()
