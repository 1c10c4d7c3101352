"""HostileServer itself: how a cue is chosen, what a few cues put on the wire, the bomb it serves."""

from __future__ import annotations

import zlib

import httpx
import pytest

from turnout.testing import HostileServer
from turnout.testing.hostile import gzip_bomb


def test_a_cue_comes_from_the_header_then_the_model_then_the_default() -> None:
    with HostileServer(default="no-finish") as srv, httpx.Client(base_url=srv.base_url) as client:
        ok = client.post("/chat/completions", json={"model": "nan"}, headers={"x-hostile-cue": "ok"})
        assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "stop"
        assert client.post("/chat/completions", json={"model": "ok"}).json()["usage"]["completion_tokens"] == 5
        unnamed = client.post("/chat/completions", json={})
        assert "finish_reason" not in unnamed.json()["choices"][0]
        missing = client.post("/chat/completions", json={"model": "gpt-4o"})
        assert missing.status_code == 404 and "no cue 'gpt-4o'" in missing.json()["error"]["message"]
    assert srv.requests == ["ok", "ok", "no-finish", "gpt-4o"] and srv.connections == 1


def test_an_unknown_default_names_the_cues() -> None:
    with pytest.raises(ValueError, match="unknown cue 'oops'.*gzip-bomb"):
        HostileServer(default="oops")


def test_lying_chunk_sizes_are_what_int_accepts_and_http_does_not() -> None:
    with HostileServer() as srv, httpx.Client(base_url=srv.base_url) as client:
        for cue, size in (
            ("chunk-size-negative", "-1"),
            ("chunk-size-0x", "0x10"),
            ("chunk-size-plus", "+10"),
            ("chunk-size-underscore", "1_0"),
        ):
            int(size, 16)  # Python would take it
            with pytest.raises(httpx.RemoteProtocolError):  # h11 (httpx) does not
                client.post("/chat/completions", json={"model": cue})


def test_the_gzip_bomb_is_small_and_inflates_to_what_it_says() -> None:
    bomb = gzip_bomb(64 << 20)
    assert len(bomb) < 80_000
    d = zlib.decompressobj(31)
    total, data = 0, bomb
    while data:
        total += len(d.decompress(data, 1 << 22))
        data = d.unconsumed_tail
    assert total == 64 << 20 and d.eof and not d.unused_data  # the trailer's CRC and size check out
    with pytest.raises(ValueError, match="multiple of 1 MiB"):
        gzip_bomb(1000)
