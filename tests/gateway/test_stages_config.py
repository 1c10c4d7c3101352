"""Stages from ``turnout.yaml``: how a type is found (registered name, dotted path) and how a mistake is told —
the file, the key (``stages[i]``...) and the fix, before anything serves."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

import pytest

from turnout.config import load_config
from turnout.errors import ConfigError, InvalidRequestError
from turnout.gateway import Gateway
from turnout.gateway.builder import build_gateway
from turnout.gateway.context import RequestContext
from turnout.gateway.embeddings import EmbeddingService
from turnout.gateway.stages import Block, register_stage, stage_types


class Words:
    """A guard refusing prompts with any of ``words``; it takes the shared embedding service if offered."""

    phase = "guard"

    def __init__(self, words: list[str], name: str = "words", embeddings: EmbeddingService | None = None) -> None:
        if not isinstance(words, list) or not all(isinstance(w, str) for w in words):
            raise TypeError("words must be a list of strings")
        self.words = words
        self.name = name
        self.embeddings = embeddings

    async def on_request(self, ctx: RequestContext) -> Block | None:
        hit = [w for w in self.words if w in ctx.last_user_text]
        return Block(InvalidRequestError(f"refused: {hit[0]}")) if hit else None


class NoPhase:
    name = "no-phase"

    async def on_request(self, ctx: RequestContext) -> None:
        return None


class NoHook:
    phase = "response"
    name = "no-hook"


register_stage("test-words", Words)


def build(tmp_path: Path, stages: str) -> Gateway:
    path = tmp_path / "turnout.yaml"
    path.write_text(
        textwrap.dedent("""\
        server: {request_log: null}
        backends: {up: {protocol: openai, base_url: "http://127.0.0.1:9/v1"}}
        models: {m: {backend: up}}
        stages:
        """)
        + textwrap.indent(textwrap.dedent(stages), "  ")
    )
    return build_gateway(load_config(path))


def test_a_registered_name_and_a_dotted_path_build_the_same_stage_with_the_shared_parts(tmp_path: Path) -> None:
    gw = build(
        tmp_path,
        """\
        - {type: test-words, params: {words: [a]}}
        - {type: "test_stages_config:Words", name: second, params: {words: [b]}}
        """,
    )
    first, second = gw.stages.all
    assert type(first) is Words and type(second) is Words  # the very class of this module, both ways
    assert (first.name, second.name) == ("test-words", "second")  # the type names a stage left unnamed
    assert first.embeddings is gw.embeddings and second.embeddings is gw.embeddings
    assert gw.stages.request["guard"] == [first, second]
    assert "test-words" in stage_types()


@pytest.mark.parametrize(
    ("stages", "key", "says", "fix"),
    [
        ("- {type: no-such-stage}", "stages[0]", "not a known stage name", "use one of"),
        ("- {type: 'no_such_module:Thing'}", "stages[0]", "cannot import stage", "check the module path"),
        ("- {type: 'test_stages_config:Missing'}", "stages[0]", "cannot import stage", "check the module path"),
        (
            "- {type: test-words, params: {words: [a], colour: red}}",
            "stages[0].params",
            "no parameter colour",
            "its parameters are: words, name, embeddings",
        ),
        ("- {type: test-words, params: {words: a}}", "stages[0].params", "words must be a list", "check the stage's"),
        ("- {type: test-words, params: {words: [a]}}\n- {type: test-words}", "stages[1].params", "words", "check the stage's"),
    ],
)
def test_a_stage_mistake_names_the_file_the_key_and_the_fix(tmp_path: Path, stages: str, key: str, says: str, fix: str) -> None:
    with pytest.raises(ConfigError) as err:
        build(tmp_path, stages)
    e = err.value
    assert e.key == key and says in e.message and fix in (e.fix or "")
    assert e.file is not None and e.file.endswith("turnout.yaml")


@pytest.mark.parametrize(
    ("cls", "says", "fix"),
    [
        ("NoPhase", "has phase None", "a stage's phase is one of: signals, guard, cache, response"),
        ("NoHook", "implements no hook of its phase", "on_response(ctx, response)"),
    ],
)
def test_a_stage_without_a_phase_or_a_hook_is_refused_naming_the_file_and_the_fix(
    tmp_path: Path, cls: str, says: str, fix: str
) -> None:
    with pytest.raises(ConfigError) as err:
        build(tmp_path, f"- {{type: 'test_stages_config:{cls}'}}")
    e: Any = err.value
    assert says in e.message and fix in (e.fix or "") and e.key == "stages[0]"
    assert e.file is not None and e.file.endswith("turnout.yaml")
