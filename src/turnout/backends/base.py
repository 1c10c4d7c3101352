"""The backend seam: one provider protocol behind three coroutines.

A backend owns its connection pool. ``complete`` returns a whole answer,
``stream`` yields chunks, ``aclose`` releases the pool; ``async with`` closes
it too. Both calls take the *concrete* upstream model name (routing has already
happened) and raise only :class:`turnout.errors.BackendError` subclasses:
provider errors (HTTP statuses, malformed JSON, resets, timeouts) are
translated here, at the boundary, and nowhere else.

Contract for ``stream``: the first chunk is yielded only once the provider has
sent a valid first event, so a caller that has not received anything yet may
still fall back elsewhere. The iterator always ends with a chunk whose
``finish_reason`` is set, or raises.

Example::

    async with OpenAIBackend("vllm", base_url="http://127.0.0.1:8000/v1") as b:
        resp = await b.complete(ChatRequest(model="auto", messages=[...]), model="qwen2.5-7b")
        async for chunk in b.stream(req, model="qwen2.5-7b"):
            print(chunk.text, end="")
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from turnout.types import ChatRequest, ChatResponse, StreamChunk


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed to connect, to receive the first token, for the whole answer, and between stream events.

    ``idle`` bounds the silence between two events of a stream once the first
    has arrived (a provider that stalls mid-answer fails after ``idle``
    seconds, with ``phase="idle"``, instead of holding the client until
    ``total``). It should be at most ``total``: a larger value never fires,
    as the total deadline ends the stream first.
    """

    connect: float = 5.0
    first_token: float = 30.0
    total: float = 120.0
    idle: float = 60.0


class Backend(ABC):
    """One provider endpoint (a base URL and its credentials), shared by its models."""

    name: str
    protocol: str

    @abstractmethod
    async def complete(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> ChatResponse:
        """Send ``request`` to ``model`` and return the whole answer."""

    @abstractmethod
    def stream(self, request: ChatRequest, *, model: str, timeouts: Timeouts | None = None) -> AsyncIterator[StreamChunk]:
        """Send ``request`` to ``model`` and yield its answer chunk by chunk."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release the connection pool. Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()
