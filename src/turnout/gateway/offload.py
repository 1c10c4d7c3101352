"""The one offload helper: CPU work (embedding, router prediction, policy) off the event loop.

The gateway owns one :class:`Offloader` (one small thread pool for the whole
process, never a pool per request). Embedding with ONNX Runtime and numpy
release the GIL, so a thread is enough; the loop keeps serving other requests.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


class Offloader:
    """Runs blocking callables on a dedicated thread pool and awaits them.

    Example::

        off = Offloader(max_workers=2)
        vec = await off.run(embedder.embed_one, "hello")
        off.close()
    """

    def __init__(self, max_workers: int = 2, *, name: str = "turnout-offload") -> None:
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)

    async def run(self, fn: Callable[..., T], /, *args: object) -> T:
        """Run ``fn(*args)`` in the pool; cancellation of the caller does not kill the thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop accepting work; running calls finish in the background."""
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["Offloader"]
