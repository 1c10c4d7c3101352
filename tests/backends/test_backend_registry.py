"""The backend registry: built-ins by protocol name, plugins, and settings checked."""

from __future__ import annotations

import pytest

from turnout.backends.anthropic import AnthropicBackend
from turnout.backends.openai import OpenAIBackend
from turnout.backends.registry import BackendRegistry, backend_protocols, create_backend
from turnout.errors import ConfigError
from turnout.plugins import plugin_entry_points
from turnout.testing.scripted import ScriptedBackend
from turnout.types import ChatRequest


async def test_builtins_by_protocol():
    assert {"openai", "anthropic", "scripted"} <= set(backend_protocols())
    b = create_backend("openai", "v", base_url="http://127.0.0.1:1/v1", api_key="k")
    a = create_backend("anthropic", "c", api_key="k")
    s = create_backend("scripted", "s", script={"default": {"text": "hi"}})
    assert isinstance(b, OpenAIBackend) and b.name == "v"
    assert isinstance(a, AnthropicBackend) and a.base_url == "https://api.anthropic.com"
    assert isinstance(s, ScriptedBackend)
    resp = await s.complete(ChatRequest(model="auto", messages=[{"role": "user", "content": "x"}]), model="m")
    assert resp.content == "hi"
    for x in (a, b, s):
        await x.aclose()


def test_unknown_protocol_names_the_choices():
    with pytest.raises(ConfigError, match="use one of: anthropic, openai, scripted"):
        create_backend("grpc", "x")


def test_unknown_setting_names_accepted_ones():
    with pytest.raises(ConfigError) as info:
        create_backend("openai", "x", base_url="http://h/v1", apikey="typo")
    assert "apikey" in str(info.value) and "api_key" in str(info.value)


def test_plugin_registration_is_per_registry():
    reg = BackendRegistry()
    reg.register("echo", lambda name, text="": ScriptedBackend(name, {"default": {"text": text}}))
    assert reg.names() == ["echo"]
    assert isinstance(reg.create("echo", "e", {"text": "yo"}), ScriptedBackend)
    assert "echo" not in backend_protocols()  # the default registry is untouched


def _dist_with_entry_points(root, text: str) -> None:
    """An installed distribution on ``root`` (a sys.path entry) declaring ``text`` as its entry_points.txt."""
    info = root / "turnout_fake_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: turnout-fake-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(text)


def test_installed_entry_points_register_backends_lazily(tmp_path, monkeypatch):
    _dist_with_entry_points(
        tmp_path,
        "[turnout.backends]\n"
        "fakeproto = turnout.testing.scripted:ScriptedBackend\n"
        "openai = turnout.testing.scripted:ScriptedBackend\n"
        "broken = turnout_no_such_module:Backend\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    plugin_entry_points.cache_clear()  # the installed set is read once per process: read it again, with the new one
    try:
        reg = BackendRegistry({"openai": "turnout.backends.openai:OpenAIBackend"}, entry_point_group="turnout.backends")
        assert {"fakeproto", "openai", "broken"} <= set(reg.names())
        assert isinstance(reg.create("fakeproto", "f", {}), ScriptedBackend)
        assert reg.get("openai") is OpenAIBackend  # a built-in keeps its name
        with pytest.raises(ConfigError, match="'broken' .*cannot be loaded.*install the package"):
            reg.get("broken")
    finally:
        plugin_entry_points.cache_clear()  # forget the temporary distribution
