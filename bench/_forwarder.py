"""The floor of any Python proxy: a keep-alive HTTP/1.1 forwarder that parses nothing but the framing.

``python bench/_forwarder.py LISTEN_PORT UPSTREAM_PORT``. One upstream connection
per client connection, uvloop when installed, ``Content-Length`` bodies only
(what the gateway bench sends and the scripted upstream answers). The gateway
bench runs it as the ``forwarder`` target: the latency it adds over ``direct``
is what one more process on the path costs on this machine, before any
gateway does any work.
"""

from __future__ import annotations

import asyncio
import sys


def _length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            return int(line[15:])
    return 0


async def _serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: tuple[str, int]) -> None:
    up_reader, up_writer = await asyncio.open_connection(*upstream)
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            up_writer.write(head + await reader.readexactly(_length(head)))
            answer = await up_reader.readuntil(b"\r\n\r\n")
            writer.write(answer + await up_reader.readexactly(_length(answer)))
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        up_writer.close()
        writer.close()


async def main(port: int, upstream_port: int) -> None:
    server = await asyncio.start_server(lambda r, w: _serve(r, w, ("127.0.0.1", upstream_port)), "127.0.0.1", port)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    try:
        import uvloop

        uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
    except ImportError:
        asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
