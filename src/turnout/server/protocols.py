"""A header-read timeout for uvicorn's HTTP protocol: a client gets ``header_timeout_s`` to send its headers.

uvicorn bounds idle keep-alive connections but not a client that opens a connection and then sends its
request line and headers a byte at a time (slowloris): 150 such connections were held for 75 s in an
attack run against ``turnout serve``. :func:`header_timeout_protocol` returns uvicorn's httptools protocol
with one timer: started when a connection opens and when a request begins on a kept-alive one, cancelled
when the request's headers are complete; when it fires, the connection is closed. Bodies are bounded
elsewhere (``server.max_body_bytes``). With the pure-Python h11 protocol (httptools not installed) no such
timer exists: put nginx (``client_header_timeout``) in front, as docs/deploy.md describes.
"""

from __future__ import annotations

import asyncio
from typing import Any


def header_timeout_protocol(header_timeout_s: float) -> type[Any]:
    """uvicorn's ``HttpToolsProtocol`` closing connections whose headers take longer than ``header_timeout_s``."""
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderTimeoutProtocol(HttpToolsProtocol):  # type: ignore[misc]
        """HttpToolsProtocol with a header-read deadline (see the module docstring)."""

        _header_timer: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout_s, self._headers_too_slow)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.transport is not None and not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderTimeoutProtocol


__all__ = ["header_timeout_protocol"]
