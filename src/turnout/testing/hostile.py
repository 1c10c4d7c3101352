"""A hostile OpenAI-compatible upstream: a loopback server that breaks HTTP/1.1, SSE and JSON on cue.

:class:`HostileServer` is a raw asyncio TCP server (no HTTP library between
it and the socket, so it can send anything), run in a background thread like
:class:`~turnout.testing.ScriptedServer` and used the same way::

    with HostileServer() as srv:
        backend = OpenAIBackend("evil", srv.base_url)
        await backend.complete(request, model="gzip-bomb")    # the cue is the model name

**Choosing a cue.** Per request, the first of: the ``x-hostile-cue`` request
header; the ``model`` of the JSON body; the server's ``default`` cue. Each cue
behaves as described for a plain request and, where it says so, differently for
a streamed one (``"stream": true`` in the body). Unknown names answer 404.

==========================  ==================================================================
cue                         what the server sends
==========================  ==================================================================
``ok``                      a valid answer (a stream: chunked SSE, usage chunk, ``[DONE]``)
``truncated-head``          half a status line and headers, then closes
``truncated-body``          a ``Content-Length`` answer cut at half (a stream: cut mid-chunk)
``oversized-declared``      ``Content-Length: 2147483648``, then zeros until the client leaves
``oversized-actual``        a chunked body of JSON filler with no end (up to ``offer_bytes``)
``gzip-bomb``               ``content-encoding: gzip``, 1 MB inflating to 1 GiB of zeros
``huge-chunk``              a chunk announced as ``7fffffff`` bytes, then zeros
``chunk-size-negative``     a chunk-size line ``-1`` (which ``int(x, 16)`` accepts)
``chunk-size-0x``           a chunk-size line ``0x10`` (``int`` accepts it too)
``chunk-size-zz``           a chunk-size line ``zz``
``chunk-size-plus``         a chunk-size line ``+10`` (``int`` accepts it)
``chunk-size-underscore``   a chunk-size line ``1_0`` (``int`` accepts it)
``chunk-missing-crlf``      a chunk's data followed by ``XX`` instead of CRLF
``content-length-abc``      ``Content-Length: abc``
``content-length-superscript``  ``Content-Length: ²`` (byte ``0xb2``; ``str.isdigit()`` says yes)
``content-length-negative`` ``Content-Length: -1``
``content-length-conflict`` two ``Content-Length`` fields that disagree
``head-flood``              200 KiB of headers
``bad-status-line``         ``HTTP/1.1 OK 200``
``switching-protocols``     ``101 Switching Protocols``, never asked for
``reset``                   closes the connection as soon as the request is in
``endless-line``            ``data: aaaa...`` with no newline, ever (a plain request: the same
                            bytes as its body)
``endless-event``           ``data: x`` lines with no blank line, ever (a stream's one event grows)
``endless-events``          valid content events, never a finish (a plain request: ``ok``)
``slow-drip``               head and first event at once, then one byte every ``drip_s``
``stall``                   head (and a stream's first event), then silence, connection open
``cut-mid-event``           a stream cut inside its second event (a plain request: as
                            ``truncated-body``)
``invalid-json``            a body (or an event) that is not JSON
``nan``                     JSON with ``NaN`` in it
``usage-negative``          ``usage.prompt_tokens: -1000000`` (a stream: in its usage chunk)
``usage-huge``              ``usage.prompt_tokens: 1e400``
``usage-too-big``           ``usage.prompt_tokens: 1000000000000``
``usage-string``            ``usage.prompt_tokens: "12"``
``usage-bool``              ``usage.prompt_tokens: true``
``choices-wrong-type``      ``choices`` a string (a stream: ``choices`` an object)
``content-wrong-type``      ``message.content`` (a stream: ``delta.content``) is ``42``
``events-after-done``       a valid stream, ``[DONE]``, then more events (a plain request: a
                            valid body with junk after its ``Content-Length``)
``no-finish``               a stream that ends with ``[DONE]`` but no ``finish_reason`` (a
                            plain request: a choice without ``finish_reason``)
==========================  ==================================================================

``requests`` lists the cue each request got; ``connections`` counts the
connections accepted. Nothing is sent faster than the client reads (every
write is drained), so the server itself never holds more than a few hundred
KiB whatever it offers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import struct
import uuid
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from turnout.testing._loopback import LoopbackServer, read_request
from turnout.testing._wire import chat_body, chunk_body
from turnout.types import Usage

_TEXT_TOKENS = ("Hello ", "from ", "the ", "hostile ", "server.")
_BLOCK = 64 * 1024
_ZEROS = bytes(_BLOCK)


@functools.cache
def gzip_bomb(inflated: int = 1 << 30) -> bytes:
    """A valid gzip stream of ``inflated`` zero bytes (a multiple of 1 MiB) in about 1 KB per MiB.

    Built without ever holding the inflated data: after a full flush, deflate
    encodes each further MiB of zeros to the same bytes, so one block repeats.
    """
    mib = 1 << 20
    if inflated % mib or inflated <= 0:
        raise ValueError("the bomb's size must be a positive multiple of 1 MiB")
    block = bytes(mib)
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    first = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    repeat = comp.compress(block) + comp.flush(zlib.Z_FULL_FLUSH)
    end = comp.flush()[:-8]  # the final empty block; the trailer is rewritten for the whole size
    crc = 0
    for _ in range(inflated // mib):
        crc = zlib.crc32(block, crc)
    return first + repeat * (inflated // mib - 1) + end + struct.pack("<II", crc, inflated & 0xFFFFFFFF)


def _head(status: str = "200 OK", *fields: str) -> bytes:
    return ("HTTP/1.1 " + status + "\r\n" + "".join(f + "\r\n" for f in fields) + "\r\n").encode("latin-1")


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class HostileServer(LoopbackServer):
    """An upstream that misbehaves on cue (see the module docstring for the cues and how to pick one).

    ``default`` is the cue of requests that name none; ``offer_bytes`` how much
    the endless cues offer at most; ``drip_s`` the pause between two bytes of
    ``slow-drip``; ``bomb_bytes`` what ``gzip-bomb`` inflates to.
    """

    kind = "hostile"

    def __init__(
        self,
        *,
        default: str = "ok",
        host: str = "127.0.0.1",
        port: int = 0,
        offer_bytes: int = 2 << 30,
        drip_s: float = 0.05,
        bomb_bytes: int = 1 << 30,
    ) -> None:
        super().__init__(host=host, port=port)
        self._cues: dict[str, Callable[[asyncio.StreamWriter, bool, str], Awaitable[bool]]] = {
            name.removeprefix("_cue_").replace("_", "-"): getattr(self, name) for name in dir(self) if name.startswith("_cue_")
        }
        if default not in self._cues:
            raise ValueError(f"unknown cue {default!r}; the cues are: {', '.join(sorted(self._cues))}")
        self.default = default
        self.offer_bytes = offer_bytes
        self.drip_s = drip_s
        self.bomb_bytes = bomb_bytes
        self.requests: list[str] = []
        self.connections = 0

    @property
    def cues(self) -> list[str]:
        """Every cue's name."""
        return sorted(self._cues)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while (req := await read_request(reader)) is not None:
            try:
                body = json.loads(req.body or b"{}")
            except ValueError:
                body = {}
            body = body if isinstance(body, dict) else {}
            cue = req.headers.get("x-hostile-cue") or str(body.get("model") or self.default)
            self.requests.append(cue)
            handler = self._cues.get(cue)
            if handler is None:
                msg = json.dumps({"error": {"message": f"no cue {cue!r}; cues: {', '.join(self.cues)}"}}).encode()
                writer.write(_head("404 Not Found", f"content-length: {len(msg)}") + msg)
                continue
            if not await handler(writer, bool(body.get("stream")), cue):
                return

    # -- building blocks ------------------------------------------------------

    @staticmethod
    def _events(model: str, usage: Any = None, finish: bool = True, done: bool = True) -> list[bytes]:
        """A valid chat stream's SSE events (``usage``: the raw usage JSON text of the usage chunk)."""
        cid = f"chatcmpl-{uuid.uuid4().hex[:12]}"
        out = [
            f"data: {json.dumps(chunk_body(cid, model, tok, None, first=not i))}\n\n".encode()
            for i, tok in enumerate(_TEXT_TOKENS)
        ]
        if finish:
            out.append(f"data: {json.dumps(chunk_body(cid, model, '', 'stop'))}\n\n".encode())
        usage_json = usage if usage is not None else json.dumps(Usage(7, len(_TEXT_TOKENS)).to_dict())
        out.append(
            f'data: {{"id": "{cid}", "object": "chat.completion.chunk", "model": "{model}", "choices": [], '
            f'"usage": {usage_json}}}\n\n'.encode()
        )
        if done:
            out.append(b"data: [DONE]\n\n")
        return out

    @staticmethod
    def _body(model: str, **raw: str) -> bytes:
        """A valid chat completion as JSON text, with fields replaced by raw JSON text (``usage='{...}'``)."""
        body = chat_body("".join(_TEXT_TOKENS), model, Usage(7, len(_TEXT_TOKENS)))
        for key in raw:
            body[key] = f"@@{key}@@"
        text = json.dumps(body)
        for key, value in raw.items():
            text = text.replace(f'"@@{key}@@"', value)
        return text.encode()

    async def _send_json(self, w: asyncio.StreamWriter, data: bytes, *extra: str) -> bool:
        w.write(_head("200 OK", "content-type: application/json", f"content-length: {len(data)}", *extra) + data)
        await w.drain()
        return True

    async def _send_stream(self, w: asyncio.StreamWriter, events: list[bytes]) -> bool:
        w.write(_head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked"))
        for ev in events:
            w.write(_chunk(ev))
        w.write(b"0\r\n\r\n")
        await w.drain()
        return True

    async def _offer(self, w: asyncio.StreamWriter, block: bytes, framed: bool) -> bool:
        """Send ``block`` (as chunks when ``framed``) until ``offer_bytes`` or the client hangs up."""
        piece = _chunk(block) if framed else block
        sent = 0
        while sent < self.offer_bytes:
            w.write(piece)
            await w.drain()
            sent += len(block)
        return False

    async def _answer(self, w: asyncio.StreamWriter, stream: bool, model: str, usage: str) -> bool:
        if stream:
            return await self._send_stream(w, self._events(model, usage=usage))
        return await self._send_json(w, self._body(model, usage=usage))

    # -- cues (method _cue_a_b serves cue "a-b") --------------------------------

    async def _cue_ok(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            return await self._send_stream(w, self._events(model))
        return await self._send_json(w, self._body(model))

    async def _cue_truncated_head(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: appl")
        await w.drain()
        return False

    async def _cue_truncated_body(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            events = self._events(model)
            w.write(
                _head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked")
                + _chunk(events[0])
                + _chunk(events[1])[:20]
            )
        else:
            data = self._body(model)
            w.write(_head("200 OK", "content-type: application/json", f"content-length: {len(data)}") + data[: len(data) // 2])
        await w.drain()
        return False

    _cue_cut_mid_event = _cue_truncated_body

    async def _cue_oversized_declared(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(_head("200 OK", "content-type: application/json", "content-length: 2147483648"))
        return await self._offer(w, _ZEROS, framed=False)

    async def _cue_oversized_actual(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(_head("200 OK", "content-type: application/json", "transfer-encoding: chunked") + _chunk(b"["))
        return await self._offer(w, b"0," * (_BLOCK // 2), framed=True)

    async def _cue_gzip_bomb(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        bomb = await asyncio.to_thread(gzip_bomb, self.bomb_bytes)
        ctype = "text/event-stream" if stream else "application/json"
        w.write(_head("200 OK", f"content-type: {ctype}", "content-encoding: gzip", f"content-length: {len(bomb)}"))
        for i in range(0, len(bomb), _BLOCK):
            w.write(bomb[i : i + _BLOCK])
            await w.drain()
        return True

    async def _cue_huge_chunk(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(_head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked") + b"7fffffff\r\n")
        return await self._offer(w, _ZEROS, framed=False)

    async def _bad_chunk(self, w: asyncio.StreamWriter, size_line: bytes) -> bool:
        w.write(
            _head("200 OK", "content-type: application/json", "transfer-encoding: chunked")
            + size_line
            + b"\r\n"
            + b"x" * 16
            + b"\r\n0\r\n\r\n"
        )
        await w.drain()
        return False

    async def _cue_chunk_size_negative(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._bad_chunk(w, b"-1")

    async def _cue_chunk_size_0x(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._bad_chunk(w, b"0x10")

    async def _cue_chunk_size_zz(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._bad_chunk(w, b"zz")

    async def _cue_chunk_size_plus(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._bad_chunk(w, b"+10")

    async def _cue_chunk_size_underscore(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._bad_chunk(w, b"1_0")

    async def _cue_chunk_missing_crlf(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        data = self._body(model)
        w.write(
            _head("200 OK", "content-type: application/json", "transfer-encoding: chunked")
            + b"%x\r\n%sXX0\r\n\r\n" % (len(data), data)
        )
        await w.drain()
        return False

    async def _bad_length(self, w: asyncio.StreamWriter, model: str, *fields: bytes) -> bool:
        data = self._body(model)
        w.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" + b"".join(f + b"\r\n" for f in fields) + b"\r\n" + data)
        await w.drain()
        return False

    async def _cue_content_length_abc(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._bad_length(w, model, b"content-length: abc")

    async def _cue_content_length_superscript(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._bad_length(w, model, b"content-length: \xb2")

    async def _cue_content_length_negative(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._bad_length(w, model, b"content-length: -1")

    async def _cue_content_length_conflict(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        n = len(self._body(model))
        return await self._bad_length(w, model, b"content-length: %d" % n, b"content-length: %d" % (n + 10))

    async def _cue_head_flood(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\n" + b"x-flood: " + b"f" * 1000 + b"\r\n")
        for _ in range(200):
            w.write(b"x-flood: " + b"f" * 1000 + b"\r\n")
            await w.drain()
        return False

    async def _cue_bad_status_line(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(b"HTTP/1.1 OK 200\r\ncontent-length: 0\r\n\r\n")
        await w.drain()
        return False

    async def _cue_switching_protocols(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(_head("101 Switching Protocols", "upgrade: h2c", "connection: upgrade"))
        await w.drain()
        return False

    async def _cue_reset(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.transport.abort()
        return False

    async def _cue_endless_line(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(_head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked") + _chunk(b"data: "))
        return await self._offer(w, b"a" * _BLOCK, framed=True)

    async def _cue_endless_event(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        w.write(_head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked"))
        return await self._offer(w, b"data: x\n" * (_BLOCK // 8), framed=True)

    async def _cue_endless_events(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if not stream:
            return await self._cue_ok(w, stream, model)
        w.write(_head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked"))
        event = self._events(model)[1]
        return await self._offer(w, event * (_BLOCK // len(event)), framed=True)

    async def _cue_slow_drip(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            events = self._events(model)
            w.write(_head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked") + _chunk(events[0]))
            rest = b"".join(_chunk(ev) for ev in events[1:]) + b"0\r\n\r\n"
        else:
            rest = self._body(model)
            w.write(_head("200 OK", "content-type: application/json", f"content-length: {len(rest)}"))
        for i in range(len(rest)):
            w.write(rest[i : i + 1])
            await w.drain()
            await asyncio.sleep(self.drip_s)
        return True

    async def _cue_stall(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            w.write(
                _head("200 OK", "content-type: text/event-stream", "transfer-encoding: chunked") + _chunk(self._events(model)[0])
            )
        else:
            w.write(_head("200 OK", "content-type: application/json", "content-length: 100"))
        await w.drain()
        await asyncio.Event().wait()  # until the client leaves or the server stops
        return False

    async def _cue_invalid_json(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            return await self._send_stream(w, [b'data: {"choices": [ {not json\n\n'])
        return await self._send_json(w, b'{"id": "x", "choices": [ {not json')

    async def _cue_nan(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            return await self._send_stream(
                w, [ev.replace(b'"created": ', b'"created": NaN, "was": ', 1) for ev in self._events(model)]
            )
        return await self._send_json(w, self._body(model, created="NaN"))

    async def _cue_usage_negative(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._answer(w, stream, model, '{"prompt_tokens": -1000000, "completion_tokens": 5}')

    async def _cue_usage_huge(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._answer(w, stream, model, '{"prompt_tokens": 1e400, "completion_tokens": 5}')

    async def _cue_usage_too_big(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._answer(w, stream, model, '{"prompt_tokens": 1000000000000, "completion_tokens": 5}')

    async def _cue_usage_string(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._answer(w, stream, model, '{"prompt_tokens": "12", "completion_tokens": 5}')

    async def _cue_usage_bool(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        return await self._answer(w, stream, model, '{"prompt_tokens": true, "completion_tokens": 5}')

    async def _cue_choices_wrong_type(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            return await self._send_stream(w, [b'data: {"id": "x", "choices": {"0": {"delta": {}}}}\n\n'])
        return await self._send_json(w, self._body(model, choices='"abc"'))

    async def _cue_content_wrong_type(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            return await self._send_stream(w, [b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": 42}}]}\n\n'])
        return await self._send_json(w, self._body(model).replace(b'"content": "', b'"content": 42, "was": "', 1))

    async def _cue_events_after_done(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            more = [ev.replace(b"hostile", b"SMUGGLED") for ev in self._events(model)]
            return await self._send_stream(w, self._events(model) + more)
        await self._send_json(w, self._body(model))
        w.write(_head("200 OK", "content-length: 2") + b"{}")  # an answer nobody asked for, after the framed one
        await w.drain()
        return True

    async def _cue_no_finish(self, w: asyncio.StreamWriter, stream: bool, model: str) -> bool:
        if stream:
            return await self._send_stream(w, self._events(model, finish=False))
        return await self._send_json(w, self._body(model).replace(b'"finish_reason": "stop"', b'"logprobs": null'))


__all__ = ["HostileServer", "gzip_bomb"]
