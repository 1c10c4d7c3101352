"""OpenAIBackend against a hostile upstream (turnout.testing.HostileServer): every oddity is a typed BackendError,
memory stays bounded while gigabytes are offered, an endless line costs bounded CPU, invalid usage is replaced."""

from __future__ import annotations

import asyncio
import logging
import time
import tracemalloc
from collections.abc import Iterator

import pytest

from turnout.backends import OpenAIBackend, Timeouts
from turnout.backends._client import Limits
from turnout.errors import (
    BackendConnectionError,
    BackendError,
    BackendProtocolError,
    BackendStatusError,
    BackendTimeoutError,
)
from turnout.testing import HostileServer
from turnout.types import ChatRequest, StreamChunk

MiB = 1 << 20
#: long enough that only a limit (never a deadline) stops the endless cues, even on a busy machine
PATIENT = Timeouts(connect=5, first_token=10, total=20, idle=10)
#: short deadlines for the cues that only a deadline can stop
HASTY = Timeouts(connect=2, first_token=2, total=1.5, idle=0.4)


def req() -> ChatRequest:
    return ChatRequest(model="any", messages=[{"role": "user", "content": "Say hello to the hostile server"}])


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    with HostileServer(drip_s=0.05) as srv:
        yield srv


async def call(backend: OpenAIBackend, cue: str, stream: bool) -> list[StreamChunk] | dict[str, object]:
    if stream:
        return [chunk async for chunk in backend.stream(req(), model=cue)]
    return (await backend.complete(req(), model=cue)).body


PROTOCOL, CONNECTION, TIMEOUT = BackendProtocolError, BackendConnectionError, BackendTimeoutError
# (cue, stream, error, retryable); limits -> BackendProtocolError that is not retried (a fallback is tried instead)
FAILURES = [
    ("truncated-head", False, CONNECTION, True),
    ("truncated-head", True, CONNECTION, True),
    ("truncated-body", False, CONNECTION, True),
    ("cut-mid-event", True, CONNECTION, True),
    ("reset", False, CONNECTION, True),
    ("reset", True, CONNECTION, True),
    ("oversized-declared", False, PROTOCOL, False),
    ("oversized-declared", True, PROTOCOL, False),
    ("oversized-actual", False, PROTOCOL, False),
    ("oversized-actual", True, PROTOCOL, False),
    ("gzip-bomb", False, PROTOCOL, False),
    ("gzip-bomb", True, PROTOCOL, False),
    ("huge-chunk", False, PROTOCOL, False),
    ("huge-chunk", True, PROTOCOL, False),
    ("head-flood", False, PROTOCOL, False),
    ("endless-line", False, PROTOCOL, False),
    ("endless-line", True, PROTOCOL, False),
    ("endless-event", True, PROTOCOL, False),
    ("chunk-size-negative", False, PROTOCOL, True),
    ("chunk-size-0x", True, PROTOCOL, True),
    ("chunk-size-zz", False, PROTOCOL, True),
    ("chunk-size-plus", True, PROTOCOL, True),
    ("chunk-size-underscore", False, PROTOCOL, True),
    ("chunk-missing-crlf", False, PROTOCOL, True),
    ("chunk-missing-crlf", True, PROTOCOL, True),
    ("content-length-abc", False, PROTOCOL, True),
    ("content-length-superscript", False, PROTOCOL, True),
    ("content-length-negative", True, PROTOCOL, True),
    ("content-length-conflict", False, PROTOCOL, True),
    ("bad-status-line", False, PROTOCOL, True),
    ("switching-protocols", True, PROTOCOL, True),
    ("invalid-json", False, PROTOCOL, True),
    ("invalid-json", True, PROTOCOL, True),
    ("nan", False, PROTOCOL, True),
    ("nan", True, PROTOCOL, True),
    ("usage-huge", False, PROTOCOL, True),  # 1e400 is not JSON: the answer is refused, not re-counted
    ("usage-huge", True, PROTOCOL, True),
    ("choices-wrong-type", False, PROTOCOL, True),
    ("choices-wrong-type", True, PROTOCOL, True),
    ("content-wrong-type", False, PROTOCOL, True),
    ("content-wrong-type", True, PROTOCOL, True),
    ("no-finish", True, PROTOCOL, True),
    ("no-such-cue", False, BackendStatusError, False),
]


@pytest.mark.parametrize(
    ("cue", "stream", "error", "retryable"), FAILURES, ids=[f"{c}-{'stream' if s else 'complete'}" for c, s, *_ in FAILURES]
)
async def test_every_oddity_is_a_typed_backend_error(
    hostile: HostileServer, cue: str, stream: bool, error: type[BackendError], retryable: bool
) -> None:
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT) as backend:
        with pytest.raises(error) as info:
            await call(backend, cue, stream)
    assert type(info.value) is error and info.value.retryable is retryable
    assert info.value.backend == "evil" and info.value.model == cue


@pytest.mark.parametrize(
    ("cue", "stream", "phase"),
    [
        ("stall", True, "idle"),
        ("slow-drip", True, "idle"),
        ("stall", False, "total"),
        ("slow-drip", False, "total"),
    ],
)
async def test_a_silent_or_dripping_upstream_times_out_in_the_right_phase(
    hostile: HostileServer, cue: str, stream: bool, phase: str
) -> None:
    async with OpenAIBackend("evil", hostile.base_url, timeouts=HASTY) as backend:
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError) as info:
            await call(backend, cue, stream)
    assert info.value.phase == phase and info.value.retryable
    limit = HASTY.idle if phase == "idle" else HASTY.total
    assert limit <= time.monotonic() - started < limit + 1.0


async def test_an_endless_stream_of_valid_events_stops_at_the_stream_limit(hostile: HostileServer) -> None:
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT, limits=Limits(stream=2 * MiB)) as backend:
        with pytest.raises(BackendProtocolError, match="exceeds 2097152 bytes") as info:
            await call(backend, "endless-events", True)
    assert not info.value.retryable


async def _peak(backend: OpenAIBackend, cue: str, stream: bool) -> tuple[BaseException | None, int]:
    tracemalloc.start()
    tracemalloc.reset_peak()
    error: BaseException | None = None
    try:
        await call(backend, cue, stream)
    except BackendError as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return error, peak


@pytest.mark.parametrize(
    ("cue", "stream", "bound"),
    [
        ("oversized-declared", False, 8 * MiB),  # a 2 GiB Content-Length is refused at the head
        ("oversized-declared", True, 8 * MiB),
        ("huge-chunk", True, 8 * MiB),  # a 0x7fffffff-byte chunk is refused at its size line
        ("endless-line", True, 8 * MiB),  # a line stops at 1 MiB
        ("oversized-actual", False, 40 * MiB),  # 2 GiB offered, 32 MiB read
        ("gzip-bomb", False, 40 * MiB),  # 1 GiB in 1 MB of gzip, 32 MiB inflated
    ],
)
async def test_memory_stays_bounded_while_gigabytes_are_offered(
    hostile: HostileServer, cue: str, stream: bool, bound: int
) -> None:
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT) as backend:
        error, peak = await _peak(backend, cue, stream)
    assert isinstance(error, BackendProtocolError) and "ResponseTooLarge" in str(error)
    assert peak < bound, f"peak {peak / MiB:.1f} MiB"


async def test_a_smaller_body_limit_bounds_memory_tighter(hostile: HostileServer) -> None:
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT, limits=Limits(body=2 * MiB)) as backend:
        for cue in ("oversized-actual", "gzip-bomb"):
            error, peak = await _peak(backend, cue, False)
            assert isinstance(error, BackendProtocolError) and "exceeds 2097152 bytes" in str(error)
            assert peak < 8 * MiB, f"{cue}: peak {peak / MiB:.1f} MiB"


async def test_an_endless_line_costs_bounded_cpu(hostile: HostileServer) -> None:
    # The server runs in another thread: thread_time counts only the client's work on this loop.
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT) as backend:
        cpu = time.thread_time()
        with pytest.raises(BackendProtocolError, match="a line of the stream exceeds 1048576 bytes"):
            await call(backend, "endless-line", True)
        assert time.thread_time() - cpu < 0.5
        # the backend serves the next request as usual
        chunks = await call(backend, "ok", True)
        assert isinstance(chunks, list) and "".join(c.text for c in chunks) == "Hello from the hostile server."


@pytest.mark.parametrize("cue", ["usage-negative", "usage-too-big", "usage-string", "usage-bool"])
async def test_invalid_usage_is_replaced_by_the_estimate_and_rewritten(
    hostile: HostileServer, cue: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="turnout.backends")
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT) as backend:
        body = await call(backend, cue, False)
        resp = await backend.complete(req(), model=cue)
        chunks = await call(backend, cue, True)
    assert isinstance(body, dict) and isinstance(chunks, list)
    estimate = 4 + 8  # estimate_prompt_tokens: 31 characters -> 8 tokens, plus 4 of framing
    assert resp.usage.prompt_tokens == estimate and resp.usage.completion_tokens == 5  # the valid count is kept
    assert body["usage"] == {"prompt_tokens": estimate, "completion_tokens": 5, "total_tokens": estimate + 5}
    last = chunks[-1]
    assert last.usage is not None and last.usage.prompt_tokens == estimate and last.usage.completion_tokens == 5
    assert last.body["usage"]["prompt_tokens"] == estimate
    warnings = [r for r in caplog.records if "invalid token count" in r.getMessage()]
    assert len(warnings) == 1 and "evil" in warnings[0].getMessage()  # once per backend, not per answer


async def test_events_after_done_are_never_read(hostile: HostileServer) -> None:
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT) as backend:
        chunks = await call(backend, "events-after-done", True)
    assert isinstance(chunks, list)
    assert "".join(c.text for c in chunks) == "Hello from the hostile server." and chunks[-1].finish_reason == "stop"


async def test_an_answer_nobody_asked_for_is_never_taken_for_the_next_one(hostile: HostileServer) -> None:
    # The server sends a second, unrequested answer after the first: the connection must not be reused,
    # or the next request would read that one as its own.
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT) as backend:
        before = hostile.connections
        first = await call(backend, "events-after-done", False)
        # the unrequested answer follows the first at once; on a busy machine it may still be on the wire when the
        # next call takes a connection (then no client can tell it from the next answer): let it arrive first
        await asyncio.sleep(0.2)
        second = await call(backend, "ok", False)
    assert isinstance(first, dict) and isinstance(second, dict)
    assert second["choices"][0]["message"]["content"] == "Hello from the hostile server."
    assert hostile.connections - before == 2


async def test_a_plain_answer_without_finish_reason_is_accepted(hostile: HostileServer) -> None:
    async with OpenAIBackend("evil", hostile.base_url, timeouts=PATIENT) as backend:
        body = await call(backend, "no-finish", False)
    assert isinstance(body, dict) and body["usage"]["completion_tokens"] == 5


def test_every_cue_of_the_server_is_exercised_here() -> None:
    covered = {c for c, *_ in FAILURES} | {
        "stall",
        "slow-drip",
        "endless-events",
        "usage-negative",
        "usage-too-big",
        "usage-string",
        "usage-bool",
        "events-after-done",
        "ok",
        "truncated-body",
    }
    assert set(HostileServer().cues) <= covered
