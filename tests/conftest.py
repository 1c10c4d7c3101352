"""Shared fixtures: where the real data lives, a real redis-server, and skipping with a reason when one is absent."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from turnout.backends._net import free_port

REPO = Path(__file__).resolve().parents[1]
#: the shared data folder beside the checkout; TURNOUT_DATA overrides it
DATA = Path(os.environ.get("TURNOUT_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not DATA.is_dir():
        pytest.skip(f"real routing data not found at {DATA} (set TURNOUT_DATA to the shared data folder)")
    return DATA


def require(path: Path) -> Path:
    """Skip the calling test, with the reason, when a real data file is absent."""
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared data folder is not beside this checkout)")
    return path


class RedisServer:
    """A real redis-server on a free loopback port, no persistence; :meth:`stop` ends it (idempotent)."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.skip("redis-server is not on PATH (install it: apt-get install -y redis-server)")
        pytest.importorskip("redis", reason="the redis package is not installed (pip install 'turnout[redis]')")
        # a port free a moment ago can be taken before redis binds it (by any process's outgoing connection):
        # a server that exits at once is started again on another port
        for _attempt in range(3):
            self.port = free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self.proc = subprocess.Popen(
                [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            if self._wait_up():
                return
        pytest.fail(f"redis-server did not start on port {self.port} (exit code {self.proc.poll()})")

    def _wait_up(self) -> bool:
        """Whether this server answers on its port (False once it has exited: the port was taken)."""
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                if self.proc.poll() is None:  # ours, not another process that holds the port
                    return True
            except OSError:
                pass
            if self.proc.poll() is not None:
                return False
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"redis-server did not answer on port {self.port} within 10 s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server for the whole session; tests keep apart by writing under their own key prefix."""
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Callable[[], RedisServer]]:
    """Start a redis-server of the test's own, which the test may stop (Redis going down mid-serve)."""
    started: list[RedisServer] = []

    def start() -> RedisServer:
        workdir = tmp_path / f"redis-{len(started)}"
        workdir.mkdir()
        server = RedisServer(workdir)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
