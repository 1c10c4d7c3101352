"""200 concurrent streams through turnout, and Schemathesis against /openapi.json: no 5xx."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from turnout.testing.scripted import ScriptedServer, Step

from server_helpers import fleet_config


def _requests_total(metrics_text: str, status: str) -> float:
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("turnout_requests_total{") and f'status="{status}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_200_concurrent_streams_all_complete_and_are_counted(serve, tmp_path: Path) -> None:
    up = ScriptedServer(Step(text="one two three four five", latency=0.05, slow=0.005)).start()
    try:
        # generous timeouts: 200 streams share 2 CPU cores with the test client itself
        srv = serve(
            fleet_config(
                {"alpha": up.base_url},
                request_log=str(tmp_path / "log.sqlite"),
                backend_extra={"timeouts": {"connect": 5, "first_token": 20, "total": 60}},
            )
        )

        async def run_all() -> list[str]:
            client = openai.AsyncOpenAI(
                base_url=srv.base_url,
                api_key="unused",
                max_retries=0,
                http_client=httpx.AsyncClient(limits=httpx.Limits(max_connections=256), timeout=60),
            )

            async def one(i: int) -> str:
                stream = await client.chat.completions.create(
                    model="auto", stream=True, messages=[{"role": "user", "content": f"request {i}"}]
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            try:
                return await asyncio.gather(*(one(i) for i in range(200)))
            finally:
                await client.close()

        texts = asyncio.run(run_all())
        assert len(texts) == 200 and all(t.replace(" ", "") == "onetwothreefourfive" for t in texts)
        assert up.count == 200
        metrics = httpx.get(srv.root + "/metrics").text
        assert _requests_total(metrics, "ok") == 200, re.findall(r"turnout_requests_total.*", metrics)
        log = srv.gateway.request_log
        log.flush()
        rows = log.query(limit=None)
        assert len(rows) == 200 and {r.status for r in rows} == {"ok"} and len({r.id for r in rows}) == 200
    finally:
        up.stop()


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(serve, tmp_path: Path) -> None:
    st = shutil.which("st") or str(Path(sys.executable).with_name("st"))
    if not Path(st).exists():
        pytest.skip("schemathesis is not installed (pip install 'turnout[dev]')")
    up = ScriptedServer(Step(text="fuzzed")).start()
    try:
        srv = serve(fleet_config({"alpha": up.base_url}))
        proc = subprocess.run(
            [
                st,
                "run",
                srv.root + "/openapi.json",
                "--checks",
                "not_a_server_error",
                "--max-examples",
                "30",
                "--phases",
                "examples,fuzzing",
                "--workers",
                "1",
                "--request-timeout",
                "10",
            ],
            capture_output=True,
            text=True,
            timeout=150,
            cwd=tmp_path,  # st writes a .schemathesis/ cache in its cwd
        )
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    finally:
        up.stop()
