"""Start N turnout replicas behind nginx, sharing one redis-server, in front of two engine replicas; all on loopback.

What it starts, in order, each a child process of this script with its log in the work folder:

1. ``redis-server`` (Debian's) on a free port, no persistence: the replicas' shared state (key spend and
   holds, rate windows, route budgets, out-of-rotation marks, the feedback index);
2. the engines: two llama.cpp servers of SmolLM2-135M-Instruct (the GGUF shipped on PyPI, one thread
   each), or with ``--engines scripted`` two scripted OpenAI servers (``turnout.testing.scripted``) with a
   fixed latency, for load tests that must not depend on a model's speed;
3. ``--replicas`` turnout processes (``turnout serve``), one config each (``replica-<i>.yaml`` in the
   work folder): the same fleet (model ``smollm2`` with one endpoint per engine, balanced by
   ``--balance``), the same Redis, their own request log, their own port;
4. ``nginx`` (Debian's) with ``deploy/nginx.conf.template`` rendered to ``nginx.conf``: ``least_conn``
   over the replicas, keep-alive, streams unbuffered.

It waits until each answers (redis PING, the engines' ``/v1/models``, the replicas' ``/readyz``, nginx's
port), prints the URLs, and on Ctrl-C (or SIGTERM) stops everything in reverse order.

    python deploy/replicas.py                       # 3 replicas, 2 llama.cpp engines, nginx on :8080
    python deploy/replicas.py --engines scripted --replicas 2 --port 9000
    python deploy/replicas.py --extra keys.yaml     # merged into every replica's config (keys, health, ...)

Then point any OpenAI client at ``http://127.0.0.1:8080/v1`` (model ``smollm2``).

The :class:`Deployment` class is the same recipe as a library: ``tests/deploy/test_replicas.py`` and
``bench/gateway_overhead.py`` start it from Python (``with Deployment(...) as d: d.url``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TEMPLATE = HERE / "nginx.conf.template"


def free_port() -> int:
    """A free TCP port on loopback (bound and released: another process could take it first, rarely)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(what: str, check: Any, proc: subprocess.Popen[bytes] | None, timeout: float, log: Path | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
            raise RuntimeError(f"{what} exited with code {proc.returncode} while starting; its log ({log}):\n{tail}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not answer within {timeout:.0f} s; see {log}")


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True


def _http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


@dataclass
class Child:
    """One child process of the deployment: its command, port, log, and the Popen once started."""

    name: str
    cmd: list[str]
    port: int
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def launch(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env},
                start_new_session=True,
            )

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (only this child's own process group)."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            p.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(5)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def replica_config(
    i: int,
    port: int,
    workdir: Path,
    engines: list[str],
    redis_url: str,
    *,
    balance: str,
    upstream_model: str,
    extra: dict[str, Any] | None,
    price: tuple[float, float] = (0.5, 1.5),
) -> dict[str, Any]:
    """The config of replica ``i``: one model over every engine, the shared Redis, its own port and log."""
    cfg: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": port, "request_log": str(workdir / f"replica-{i}.sqlite"), "metrics": True},
        "backends": {
            "engine": {
                "protocol": "openai",
                "base_url": engines[0],
                "timeouts": {"connect": 2, "first_token": 60, "total": 120},
                "retries": {"attempts": 2, "backoff_s": 0.05, "max_backoff_s": 0.2},
                "cooldown": {"failures": 3, "seconds": 10},
            }
        },
        "models": {
            "smollm2": {
                "endpoints": [
                    {"backend": "engine", "base_url": url, "name": f"engine-{j}", "slots": 1} for j, url in enumerate(engines)
                ],
                "balance": {"strategy": balance},
                "upstream_model": upstream_model,
                "price": {"input_per_mtok": price[0], "output_per_mtok": price[1]},
                "context_window": 2048,
            }
        },
        "state": {"redis_url": redis_url},
        "health": {"interval_s": 1.0, "active": True},
    }
    for key, value in (extra or {}).items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


class Deployment:
    """redis-server + two engines + ``replicas`` turnout processes + nginx, on loopback (see the module docstring).

    ``engines`` is ``llamacpp`` or ``scripted`` (then ``scripted_latency_ms`` before each answer), or
    ``upstreams`` names engines already running (their OpenAI base URLs; none is started); ``price`` is the
    model's (USD per million input and output tokens); ``extra`` is merged into every replica's config
    (``keys``, ``health``, ``state.on_failure``...).
    Use as a context manager; :meth:`stop` is idempotent and stops only what this object started.

    Example::

        with Deployment(replicas=3, engines="scripted") as d:
            openai.OpenAI(base_url=d.url, api_key="...").chat.completions.create(model="smollm2", ...)
    """

    def __init__(
        self,
        *,
        replicas: int = 3,
        engines: str = "llamacpp",
        engine_count: int = 2,
        port: int | None = None,
        workdir: str | Path | None = None,
        balance: str = "dualmap",
        extra: dict[str, Any] | None = None,
        scripted_latency_ms: float = 20.0,
        python: str = sys.executable,
        n_ctx: int = 2048,
        price: tuple[float, float] = (0.5, 1.5),
        upstreams: Sequence[str] | None = None,
    ) -> None:
        if engines not in ("llamacpp", "scripted"):
            raise ValueError(f"engines must be 'llamacpp' or 'scripted', not {engines!r}")
        if replicas < 1 or engine_count < 1:
            raise ValueError("replicas and engine_count must be >= 1")
        self.replicas = replicas
        self.engine_kind = engines
        self.engine_count = engine_count
        self.port = port or free_port()
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="turnout-replicas-"))
        self.balance = balance
        self.extra = extra
        self.scripted_latency_ms = scripted_latency_ms
        self.python = python
        self.n_ctx = n_ctx
        self.price = price
        #: engines someone else runs (OpenAI base URLs): used instead of starting any
        self.upstreams = list(upstreams) if upstreams else None
        self.redis: Child | None = None
        self.engines: list[Child] = []
        self.turnouts: list[Child] = []
        self.nginx: Child | None = None
        self._env = {
            "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_WAIT_POLICY": "PASSIVE",
            "OPENBLAS_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }

    # -- what it serves ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """nginx's OpenAI base URL (``http://127.0.0.1:PORT/v1``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def replica_urls(self) -> list[str]:
        """Each replica's own OpenAI base URL (to reach one replica past nginx)."""
        return [f"http://127.0.0.1:{c.port}/v1" for c in self.turnouts]

    @property
    def engine_urls(self) -> list[str]:
        if self.upstreams is not None:
            return list(self.upstreams)
        return [f"http://127.0.0.1:{c.port}/v1" for c in self.engines]

    @property
    def redis_url(self) -> str:
        assert self.redis is not None
        return f"redis://127.0.0.1:{self.redis.port}/0"

    def request_log(self, i: int) -> Path:
        """Replica ``i``'s request log (SQLite)."""
        return self.workdir / f"replica-{i}.sqlite"

    # -- lifecycle -------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, say: Any = None) -> None:
        """Start everything and wait until each part answers; RuntimeError naming the part (and its log) if not."""
        say = say or (lambda _msg: None)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._start_redis()
        say(f"redis-server: {self.redis_url}")
        self._start_engines()
        say(f"engines ({self.engine_kind}): {', '.join(self.engine_urls)}")
        self._start_turnouts()
        say(f"turnout replicas: {', '.join(self.replica_urls)}")
        self._start_nginx()
        say(f"nginx: {self.url}")

    def _start_redis(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not on PATH (Debian: apt-get install -y redis-server)")
        port = free_port()
        self.redis = Child(
            "redis-server",
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            port,
            self.workdir / "redis.log",
        )
        self.redis.launch()
        _wait("redis-server", lambda: _port_open(port), self.redis.proc, 15, self.redis.log)

    def _start_engines(self) -> None:
        if self.upstreams is not None:
            return
        for j in range(self.engine_count):
            port = free_port()
            if self.engine_kind == "scripted":
                cmd = [
                    self.python,
                    "-m",
                    "turnout.testing.scripted",
                    "--port",
                    str(port),
                    "--latency-ms",
                    str(self.scripted_latency_ms),
                ]
            else:
                # the fleet's own command line (its --interrupt_requests False above all: by default llama_cpp.server
                # ends a stream in progress with [DONE] and no finish_reason whenever another request, even a
                # health probe's GET /v1/models, waits for the model), run by this deployment's python
                model = self._gguf()  # puts the checkout's src on the path when run as a script
                from turnout.backends.llamacpp import LlamaCppServer

                cmd = LlamaCppServer(model, port=port, n_threads=1, n_ctx=self.n_ctx).command()
                cmd[0] = self.python
            child = Child(f"engine-{j}", cmd, port, self.workdir / f"engine-{j}.log", self._env)
            child.launch()
            self.engines.append(child)
        for c in self.engines:  # launched together, waited for in turn: they load at the same time
            _wait(c.name, lambda c=c: _http_ok(f"http://127.0.0.1:{c.port}/v1/models"), c.proc, 120, c.log)

    def _gguf(self) -> Path:
        sys.path.insert(0, str(REPO / "src"))
        from turnout.backends.llamacpp import default_fleet_models

        return default_fleet_models()["smollm2"]

    def _start_turnouts(self) -> None:
        import yaml

        upstream = "scripted" if self.engine_kind == "scripted" else "smollm2"
        for i in range(self.replicas):
            port = free_port()
            cfg = replica_config(
                i,
                port,
                self.workdir,
                self.engine_urls,
                self.redis_url,
                balance=self.balance,
                upstream_model=upstream,
                extra=self.extra,
                price=self.price,
            )
            path = self.workdir / f"replica-{i}.yaml"
            path.write_text(yaml.safe_dump(cfg, sort_keys=False))
            cmd = [
                self.python,
                "-c",
                "import sys; from turnout.cli.main import main; sys.exit(main())",
                "serve",
                "--config",
                str(path),
                "--port",
                str(port),
                "--quiet",
            ]
            child = Child(f"turnout-{i}", cmd, port, self.workdir / f"replica-{i}.log", self._env)
            child.launch()
            self.turnouts.append(child)
        for c in self.turnouts:
            _wait(c.name, lambda c=c: _http_ok(f"http://127.0.0.1:{c.port}/readyz"), c.proc, 120, c.log)

    def render_nginx(self) -> Path:
        """``nginx.conf`` in the work folder, from the template, for the replicas started."""
        tmp = self.workdir / "nginx-tmp"
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            (tmp / sub).chmod(0o777)  # nginx's workers run as 'nobody' when the master is root
        tmp.chmod(0o777)
        servers = "\n".join(f"        server 127.0.0.1:{c.port} max_fails=1 fail_timeout=2s;" for c in self.turnouts)
        text = string.Template(TEMPLATE.read_text()).safe_substitute(
            workdir=str(self.workdir), servers=servers, listen=f"127.0.0.1:{self.port}", max_body="8m"
        )
        left = [p for p in ("${workdir}", "${servers}", "${listen}", "${max_body}") if p in text]
        if left:
            raise RuntimeError(f"the nginx template still holds {left} after rendering")
        conf = self.workdir / "nginx.conf"
        conf.write_text(text)
        return conf

    def _start_nginx(self) -> None:
        exe = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
        if exe is None:
            raise RuntimeError("nginx is not installed (Debian: apt-get install -y nginx)")
        conf = self.render_nginx()
        self.nginx = Child(
            "nginx",
            [exe, "-p", str(self.workdir), "-c", str(conf), "-e", str(self.workdir / "nginx-error.log")],
            self.port,
            self.workdir / "nginx.log",
        )
        self.nginx.launch()
        _wait("nginx", lambda: _port_open(self.port), self.nginx.proc, 15, self.workdir / "nginx-error.log")

    def stop(self) -> None:
        """Stop nginx, the replicas, the engines and Redis, in that order. Idempotent."""
        for c in [self.nginx, *self.turnouts, *self.engines, self.redis]:
            if c is not None:
                c.stop()


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--engines", choices=("llamacpp", "scripted"), default="llamacpp")
    ap.add_argument("--port", type=int, default=8080, help="nginx's port on 127.0.0.1")
    ap.add_argument("--balance", default="dualmap", help="the endpoint strategy of the replicas (gateway/balance.py)")
    ap.add_argument("--workdir", help="where configs, logs and request logs go (default: a new temp folder)")
    ap.add_argument("--extra", help="YAML merged into every replica's config (keys, health, state.on_failure, ...)")
    args = ap.parse_args(argv)
    extra = None
    if args.extra:
        import yaml

        extra = yaml.safe_load(Path(args.extra).read_text())
    d = Deployment(
        replicas=args.replicas, engines=args.engines, port=args.port, workdir=args.workdir, balance=args.balance, extra=extra
    )
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    try:
        d.start(say=lambda msg: print(msg, flush=True))
        print(f"\nready: OpenAI base URL {d.url} (model 'smollm2'); logs and configs in {d.workdir}; Ctrl-C stops", flush=True)
        while not stop and all(c.alive for c in [d.redis, *d.engines, *d.turnouts, d.nginx] if c is not None):
            time.sleep(0.5)
        dead = [c.name for c in [d.redis, *d.engines, *d.turnouts, d.nginx] if c is not None and not c.alive]
        if dead and not stop:
            print(f"stopping: {', '.join(dead)} exited (see its log in {d.workdir})", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        pass
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        d.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
