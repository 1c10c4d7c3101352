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
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from turnout.backends._http import estimate_prompt_tokens
from turnout.backends.base import Backend, Timeouts
from turnout.errors import (
    BackendConnectionError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeoutError,
)
from turnout.testing._wire import (
    REASONS,
    anthropic_body,
    anthropic_error,
    anthropic_events,
    chat_body,
    chunk_body,
    delta_body,
    openai_error,
    openai_events,
    tool_call_deltas,
)
from turnout.types import ChatRequest, ChatResponse, StreamChunk, Usage

FAULTS = frozenset({"status", "reset", "cut", "malformed", "hang"})
_TOKEN = re.compile(r"\S+\s*|\s+")


@dataclass(frozen=True)
class Step:
    """How to answer one request (see the module docstring for each field)."""

    text: str = "Hello from the scripted backend."
    latency: float = 0.0
    slow: float = 0.0
    fault: str | None = None
    status: int = 500
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    stream_usage: bool = True
    tool_calls: tuple[dict[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.fault is not None and self.fault not in FAULTS:
            raise ValueError(f"unknown fault {self.fault!r}; use one of {sorted(FAULTS)} or None")
        calls = tuple(dict(c) for c in self.tool_calls)
        for c in calls:
            if set(c) != {"id", "name", "arguments"}:
                raise ValueError(f"a scripted tool call needs exactly id, name and arguments (JSON text), got {sorted(c)}")
        object.__setattr__(self, "tool_calls", calls)  # a list from JSON becomes an immutable tuple

    @property
    def finish(self) -> str:
        """The OpenAI finish_reason of this answer."""
        return "tool_calls" if self.tool_calls else "stop"

    def tokens(self) -> list[str]:
        return _TOKEN.findall(self.text) or [""]

    def usage(self, messages: list[dict[str, Any]]) -> Usage:
        return Usage(
            self.prompt_tokens if self.prompt_tokens is not None else estimate_prompt_tokens(messages),
            self.completion_tokens if self.completion_tokens is not None else len(_TOKEN.findall(self.text)),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Step:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown step field(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)


@dataclass(frozen=True)
class Rule:
    """Answer with ``step`` whenever ``match`` (a regex) is in the prompt and ``model`` (if set) matches."""

    match: str = ""
    step: Step = field(default_factory=Step)
    model: str | None = None


@dataclass
class RecordedRequest:
    """One request that reached the scripted provider, as received."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    step: Step


class Script:
    """Rules, then a queue of one-shot steps, then a default step. Thread-safe."""

    def __init__(self, default: Step | None = None, *, queue: Sequence[Step] = (), rules: Sequence[Rule] = ()) -> None:
        self.default = default or Step()
        self.queue = list(queue)
        self.rules = list(rules)
        self._lock = threading.Lock()

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Script:
        """Build from the JSON form shown in the module docstring."""
        rules = []
        for r in d.get("rules", []):
            rules.append(Rule(match=r.get("match", ""), model=r.get("model"), step=Step.from_dict(r.get("step", {}))))
        return cls(
            Step.from_dict(d.get("default", {})),
            queue=[Step.from_dict(s) for s in d.get("queue", [])],
            rules=rules,
        )

    @classmethod
    def coerce(cls, script: Script | Step | Sequence[Step] | dict[str, Any] | None) -> Script:
        """Accept a Script, one Step (the default), a list of Steps (a queue) or the JSON dict."""
        if script is None:
            return cls()
        if isinstance(script, Script):
            return script
        if isinstance(script, Step):
            return cls(script)
        if isinstance(script, dict):
            return cls.from_dict(script)
        return cls(queue=list(script))

    def next_step(self, prompt: str, model: str | None) -> Step:
        for rule in self.rules:
            if (rule.model is None or rule.model == model) and re.search(rule.match, prompt):
                return rule.step
        with self._lock:
            if self.queue:
                return self.queue.pop(0)
        return self.default


def _prompt_of(messages: Any) -> str:
    if not isinstance(messages, list):
        return ""
    return ChatRequest(model="", messages=[m for m in messages if isinstance(m, dict)]).prompt_text()


# ---------------------------------------------------------------------------
# Face 1: in-process backend
# ---------------------------------------------------------------------------


class ScriptedBackend(Backend):
    """An in-process :class:`Backend` answering from a :class:`Script`.

    Faults raise what a real backend raises for them: ``status`` →
    BackendStatusError, ``reset`` → BackendConnectionError, ``malformed`` and a
    streamed ``cut`` → BackendProtocolError, ``hang``/long ``latency`` →
    BackendTimeoutError of the phase that expired. ``requests`` logs every call;
    ``cancelled`` counts the calls the caller cancelled (or, for a stream,
    closed) before they had answered in full, by a timeout of its own or
    because its client hung up.
    """

    protocol = "scripted"

    def __init__(self, name: str = "scripted", script: Script | Step | Sequence[Step] | dict[str, Any] | None = None,
                 *, timeouts: Timeouts | None = None) -> None:
        self.name = name
        self.script = Script.coerce(script)
        self.timeouts = timeouts or Timeouts()
        self.requests: list[RecordedRequest] = []
        self.cancelled = 0
        self.closed = False

    @property
    def count(self) -> int:
        """How many attempts reached this backend."""
        return len(self.requests)

    def _begin(self, request: ChatRequest, model: str) -> Step:
        step = self.script.next_step(request.prompt_text(), model)
        body = {"model": model, "messages": request.messages, **request.params}
        self.requests.append(RecordedRequest("/v1/chat/completions", body, {}, step))
        return step

    async def _wait_first(self, step: Step, t: Timeouts, model: str) -> None:
        delay = float("inf") if step.fault == "hang" else step.latency
        limit = min(t.first_token, t.total)
        if delay > limit:
            await asyncio.sleep(limit)
            phase = "first_token" if t.first_token < t.total else "total"
            raise BackendTimeoutError(f"no first token within {limit:g}s", backend=self.name, model=model, phase=phase)
        await asyncio.sleep(delay)
        if step.fault == "status":
            raise BackendStatusError("scripted failure", backend=self.name, model=model, status=step.status,
                                     body=json.dumps(openai_error(step.status)))
        if step.fault == "reset":
            raise BackendConnectionError("connection reset by scripted backend", backend=self.name, model=model)
        if step.fault == "malformed":
            raise BackendProtocolError("invalid JSON in the response body (scripted)", backend=self.name, model=model)

    async def complete(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> ChatResponse:
        t = timeouts or self.timeouts
        step = self._begin(request, model)
        try:
            await self._wait_first(step, t, model)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if step.fault == "cut":
            raise BackendConnectionError("body cut short (scripted)", backend=self.name, model=model)
        usage = step.usage(request.messages)
        return ChatResponse(body=chat_body(step.text, model, usage, step.tool_calls), usage=usage)

    async def stream(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> AsyncIterator[StreamChunk]:
        t = timeouts or self.timeouts
        step = self._begin(request, model)
        try:
            started = time.monotonic()
            await self._wait_first(step, t, model)
            tokens = step.tokens()
            if step.fault == "cut":
                tokens = tokens[: max(1, len(tokens) // 2)]
            cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
            for i, tok in enumerate(tokens):
                if i and step.slow:
                    if time.monotonic() - started + step.slow > t.total:
                        raise BackendTimeoutError(f"no complete answer within {t.total:g}s", backend=self.name,
                                                  model=model, phase="total")
                    await asyncio.sleep(step.slow)
                yield StreamChunk(body=chunk_body(cid, model, tok, None), text=tok)
            if step.fault == "cut":
                raise BackendProtocolError("stream ended before a finish_reason and without [DONE] (scripted cut)",
                                           backend=self.name, model=model)
            for delta in tool_call_deltas(step.tool_calls):
                yield StreamChunk(body=delta_body(cid, model, delta))
            usage = step.usage(request.messages)
            body = chunk_body(cid, model, "", step.finish)
            body["usage"] = usage.to_dict()
            yield StreamChunk(body=body, text="", finish_reason=step.finish, usage=usage)
        except (asyncio.CancelledError, GeneratorExit):  # the caller left before the end
            self.cancelled += 1
            raise

    async def aclose(self) -> None:
        self.closed = True


# ---------------------------------------------------------------------------
# Face 2: the wire server
# ---------------------------------------------------------------------------


class ScriptedServer:
    """Serves a :class:`Script` over HTTP on loopback, from a background thread.

    Use as a context manager (sync or async) or call :meth:`start` / :meth:`stop`.
    ``requests`` logs each completion request that reached it (``/v1/models``
    probes are not logged); ``count`` is their number.
    """

    def __init__(self, script: Script | Step | Sequence[Step] | dict[str, Any] | None = None, *,
                 protocol: str = "openai", host: str = "127.0.0.1", port: int = 0,
                 models: Sequence[str] = ("scripted",)) -> None:
        if protocol not in ("openai", "anthropic"):
            raise ValueError(f"protocol must be 'openai' or 'anthropic', not {protocol!r}")
        self.script = Script.coerce(script)
        self.protocol = protocol
        self.host = host
        self.port = port
        self.models = list(models)
        self.requests: list[RecordedRequest] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def count(self) -> int:
        return len(self.requests)

    @property
    def base_url(self) -> str:
        """The API root clients use, e.g. ``http://127.0.0.1:41234/v1``."""
        return f"http://{self.host}:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> ScriptedServer:
        """Start serving in a daemon thread; returns once the port is bound."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run_thread, name=f"scripted-{self.protocol}", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise RuntimeError(f"scripted server failed to start: {self._error}") from self._error
        return self

    def stop(self) -> None:
        """Stop serving, cut open connections, join the thread. Idempotent."""
        if self._thread is None or self._loop is None or self._stop is None:
            return
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self._thread = None

    def __enter__(self) -> ScriptedServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> ScriptedServer:
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def _run_thread(self) -> None:
        try:
            asyncio.run(self.serve_forever())
        except BaseException as e:  # surfaced to start(); the thread must not die silently
            self._error = e
            self._ready.set()

    async def serve_forever(self) -> None:
        """Serve on the running loop until :meth:`stop` (also used by the standalone process)."""
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._connection, self.host, self.port, backlog=2048)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._tasks):
                task.cancel()
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            await server.wait_closed()

    # -- HTTP/1.1 -----------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, path, _ = (lines[0].split(" ", 2) + ["", ""])[:3]
                headers = {}
                for line in lines[1:]:
                    k, sep, v = line.partition(":")
                    if sep:
                        headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length") or 0)
                raw = await reader.readexactly(n) if n else b""
                keep = await self._dispatch(method, path.split("?", 1)[0], headers, raw, writer)
                if not keep or headers.get("connection", "").lower() == "close":
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        except asyncio.CancelledError:
            # Only stop() cancels these tasks: the server is going away, so cut the
            # connection and end quietly instead of logging a cancelled-task error.
            writer.transport.abort()
            return
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    @staticmethod
    def _send(writer: asyncio.StreamWriter, status: int, body: bytes, ctype: str = "application/json") -> None:
        writer.write(
            f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\ncontent-type: {ctype}\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode() + body
        )

    async def _dispatch(self, method: str, path: str, headers: dict[str, str], raw: bytes,
                        writer: asyncio.StreamWriter) -> bool:
        if method == "GET" and path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "owned_by": "turnout-scripted"} for m in self.models]
            self._send(writer, 200, json.dumps({"object": "list", "data": data}).encode())
            return True
        if method == "GET" and path in ("/health", "/healthz"):
            self._send(writer, 200, b'{"status":"ok"}')
            return True
        routes = ("/v1/messages",) if self.protocol == "anthropic" else ("/v1/chat/completions", "/v1/completions")
        if method != "POST" or path not in routes:
            self._send(writer, 404, json.dumps({"error": {"message": f"no route {method} {path}"}}).encode())
            return True
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._send(writer, 400, json.dumps(openai_error(400)).encode())
            return True
        messages = body.get("messages") or ([{"role": "user", "content": body.get("prompt", "")}] if "prompt" in body else [])
        step = self.script.next_step(_prompt_of(messages), body.get("model"))
        self.requests.append(RecordedRequest(path, body, headers, step))
        if step.fault == "hang":
            await asyncio.Event().wait()  # until the client gives up or the server stops
        if step.latency:
            await asyncio.sleep(step.latency)
        if step.fault == "reset":
            writer.transport.abort()
            return False
        if step.fault == "status":
            err = anthropic_error(step.status) if self.protocol == "anthropic" else openai_error(step.status)
            self._send(writer, step.status, json.dumps(err).encode())
            return True
        model = str(body.get("model") or self.models[0])
        usage = step.usage(messages if isinstance(messages, list) else [])
        if not body.get("stream"):
            if step.fault == "malformed":
                self._send(writer, 200, b'{"id": "x", "choices": [ {not json')
                return True
            if self.protocol == "anthropic":
                payload = anthropic_body(step.text, model, usage, step.tool_calls)
            elif path == "/v1/completions":
                payload = {"id": "cmpl-1", "object": "text_completion", "created": int(time.time()), "model": model,
                           "choices": [{"index": 0, "text": step.text, "finish_reason": "stop"}], "usage": usage.to_dict()}
            else:
                payload = chat_body(step.text, model, usage, step.tool_calls)
            data = json.dumps(payload).encode()
            if step.fault == "cut":  # announce the whole body, send half, hang up
                writer.write(f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n\r\n".encode()
                             + data[: len(data) // 2])
                await writer.drain()
                writer.transport.abort()
                return False
            self._send(writer, 200, data)
            return True
        await self._stream(writer, step, body, path, model, usage)
        return True

    async def _stream(self, writer: asyncio.StreamWriter, step: Step, body: dict[str, Any], path: str,
                      model: str, usage: Usage) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")

        def emit(text: str) -> None:
            data = text.encode()
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))

        tokens = step.tokens()
        cut = step.fault == "cut"
        if cut:
            tokens = tokens[: max(1, len(tokens) // 2)]
        events = (anthropic_events(step, tokens, model, usage, cut) if self.protocol == "anthropic"
                  else openai_events(step, tokens, model, usage, cut, body, completions=path == "/v1/completions"))
        for i, ev in enumerate(events):
            if step.fault == "malformed" and i == 1:
                ev = "data: {\"choices\": [{\"delta\": {\"content\": \"oops\"\n\n"  # broken JSON mid-stream
            if ev is None:  # a pause point between tokens
                if step.slow:
                    await writer.drain()
                    await asyncio.sleep(step.slow)
                continue
            emit(ev)
        writer.write(b"0\r\n\r\n")
        await writer.drain()


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
    srv = ScriptedServer(script, protocol=args.protocol, host=args.host, port=args.port,
                         models=args.model or ("scripted",))

    async def run() -> None:
        task = asyncio.create_task(srv.serve_forever())
        await asyncio.to_thread(srv._ready.wait)
        print(f"scripted {args.protocol} server listening on {srv.base_url}", flush=True)
        await task

    try:
        import uvloop  # optional: a faster event loop when installed (uvicorn[standard] brings it)

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()


__all__ = ["FAULTS", "RecordedRequest", "Rule", "Script", "ScriptedBackend", "ScriptedServer", "Step"]
