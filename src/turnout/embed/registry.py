"""Embedders by name. The built-ins register through the same call a plugin would use."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import EntryPoint
from pathlib import Path

from turnout.embed.base import Embedder
from turnout.plugins import EMBEDDERS, plugin_entry_points


@dataclass(frozen=True)
class EmbedderSpec:
    """How to build one embedder.

    ``factory(model_dir, progress)`` gets the folder for derived model files
    (e.g. the exported ONNX graph) and whether long batches may draw a bar.
    ``worth_caching`` is False for embedders that compute faster than a cache
    lookup (the hashing embedder), which ``create_embedder`` then never wraps.
    """

    factory: Callable[[Path, bool], Embedder]
    worth_caching: bool
    summary: str


class EmbedderRegistry:
    """A name → :class:`EmbedderSpec` table. ``create_embedder`` uses the default one.

    Example::

        reg = EmbedderRegistry()
        reg.register("hashing", EmbedderSpec(lambda d, p: HashingEmbedder(), False, "hashed n-grams"))
        reg.get("hashing").factory(Path("/tmp"), False).dim
    """

    def __init__(self) -> None:
        self._specs: dict[str, EmbedderSpec] = {}

    def register(self, name: str, spec: EmbedderSpec) -> None:
        if name in self._specs:
            raise ValueError(f"an embedder named {name!r} is already registered")
        self._specs[name] = spec

    def get(self, name: str) -> EmbedderSpec:
        try:
            return self._specs[name]
        except KeyError:
            known = ", ".join(sorted(self._specs)) or "none"
            raise KeyError(f"unknown embedder {name!r}; known embedders: {known}") from None

    def names(self) -> list[str]:
        return sorted(self._specs)


def _minilm(model_dir: Path, progress: bool) -> Embedder:
    from turnout.embed.minilm import MiniLMEmbedder  # lazy: keeps torch/onnxruntime out of `import turnout.embed`

    return MiniLMEmbedder(onnx_dir=model_dir, progress=progress)


def _minilm_int8(model_dir: Path, progress: bool) -> Embedder:
    from turnout.embed.minilm_int8 import MiniLMInt8Embedder

    return MiniLMInt8Embedder(onnx_dir=model_dir, progress=progress)


def _minilm_static(model_dir: Path, progress: bool) -> Embedder:
    from turnout.embed.static import StaticEmbedder

    return StaticEmbedder(model_dir=model_dir, progress=progress)


def _hashing(model_dir: Path, progress: bool) -> Embedder:
    from turnout.embed.hashing import HashingEmbedder

    return HashingEmbedder()


def builtin_registry() -> EmbedderRegistry:
    """A fresh registry holding the built-in embedders."""
    reg = EmbedderRegistry()
    reg.register("minilm", EmbedderSpec(_minilm, True, "all-MiniLM-L6-v2, 384-d, ONNX Runtime (torch fallback)"))
    reg.register(
        "minilm-int8",
        EmbedderSpec(
            _minilm_int8, True, "all-MiniLM-L6-v2 with per-channel int8 weights, 384-d, ONNX Runtime, one text per call"
        ),
    )
    # a static embedder computes faster than a cache lookup: never wrapped in a cache
    reg.register(
        "minilm-static", EmbedderSpec(_minilm_static, False, "word-piece vectors distilled from all-MiniLM-L6-v2, 256-d, numpy")
    )
    reg.register("hashing", EmbedderSpec(_hashing, False, "hashed word and char n-grams, 4096-d, numpy only"))
    return reg


_DEFAULT: EmbedderRegistry | None = None


def default_registry() -> EmbedderRegistry:
    """The registry ``create_embedder``, the gateway and config validation use: the built-ins, the embedders
    installed under the ``turnout.embedders`` entry-point group, and those added with :func:`register_embedder`."""
    global _DEFAULT
    if _DEFAULT is None:
        reg = builtin_registry()
        for name, ep in plugin_entry_points(EMBEDDERS).items():
            if name not in reg.names():
                reg.register(name, _PluginSpec(ep))
        _DEFAULT = reg
    return _DEFAULT


def register_embedder(name: str, spec: EmbedderSpec) -> None:
    """Make ``name`` usable wherever an embedder is named (a route's ``embedder``, ``--embedder``)."""
    default_registry().register(name, spec)


class _PluginSpec(EmbedderSpec):
    """An installed plugin's embedder, loaded on first use: its entry point gives an EmbedderSpec or a factory."""

    # set through object.__setattr__: the base dataclass is frozen (declared here for the type checker only)
    _ep: EntryPoint
    _loaded: EmbedderSpec | None

    def __init__(self, ep: EntryPoint) -> None:
        object.__setattr__(self, "_ep", ep)
        object.__setattr__(self, "_loaded", None)
        super().__init__(self._build, True, f"plugin {ep.value}")

    def _spec(self) -> EmbedderSpec:
        loaded = self._loaded
        if loaded is None:
            target = self._ep.load()
            loaded = target if isinstance(target, EmbedderSpec) else EmbedderSpec(target, True, str(target))
            object.__setattr__(self, "_loaded", loaded)
        return loaded

    def _build(self, model_dir: Path, progress: bool) -> Embedder:
        return self._spec().factory(model_dir, progress)
