"""all-MiniLM-L6-v2 with int8 weights: ONNX Runtime dynamic quantisation of the exported fp32 graph.

Built once on first use, next to the fp32 ONNX file it is made from (which is
exported first if it is missing): ``onnxruntime.quantization.quantize_dynamic``
with **per-channel** int8 weights. Per-channel scales are what keep it close to
fp32: per-tensor int8 (onnxruntime's default) reached a mean cosine of only
0.942 to fp32 on 300 real training prompts of the shared tables (min 0.890),
per-channel 0.993 (min 0.986; 0.993-0.994, min 0.984, on the
shared tables' 1,331 test prompts run one by one). Activations are quantised per call (dynamic),
so no calibration data is needed and the build is offline.

**One text per ONNX call.** Dynamic quantisation picks each activation's int8
scale from the min and max of the whole input tensor, so in a padded batch a
text's vector depends on its neighbours (cosine 0.981 to the same text alone,
measured on a batch of six). Vectors must not depend on the company a prompt
keeps: the on-disk cache serves them across runs, the gateway batches whatever
arrives together, and evaluation must measure what serving computes. So this
embedder runs every text alone; batching it costs no CPU anyway (1.8 ms per
short prompt alone against 1.6-1.8 ms in batches of 32 on two busy cores:
with int8 weights the fp32 parts, softmax and layer norms, dominate).

The quantised file is checked against fp32 on a few sentences before it is
moved into place (cosine above :data:`INT8_AGREEMENT`), like the fp32 export is
checked against torch. The vectors differ from fp32 MiniLM's (cosine ~0.99),
so this embedder has a name, and so an embedding cache, of its own: a router
trained on fp32 vectors should be served with fp32 vectors unless
``bench/embedder_quality.py`` shows the swap keeps its quality.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from turnout.embed.minilm import _CHECK_SENTENCES, _ONNX_STEM, _OPSET, MiniLMEmbedder, _package_version
from turnout.errors import MissingDependency, TurnoutError

log = logging.getLogger(__name__)

#: the quantised graph must agree with fp32 to this cosine on every check sentence
#: (measured: >= 0.984 on 1,331 real prompts, 0.993 on its check sentences; per-tensor int8 went as low as 0.890)
INT8_AGREEMENT = 0.97


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()


@contextlib.contextmanager
def _quiet_preprocess_advice() -> Iterator[None]:
    """Mute onnxruntime's advice to pre-process first (logged on the root logger at every call).

    Its pre-processing (symbolic shape inference) fails on this graph
    ("Incomplete symbolic shape inference"), and the quantised graph is verified anyway.
    """
    root, drop = logging.getLogger(), _DropAdvice()
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)


class MiniLMInt8Embedder(MiniLMEmbedder):
    """all-MiniLM-L6-v2 with per-channel int8 weights through ONNX Runtime: 384-d unit vectors.

    Same tokenizer, head-and-tail clipping and pooling as :class:`MiniLMEmbedder`;
    ONNX only (there is no torch int8 path). Loading is lazy and thread-safe;
    the first load on a machine quantises (a few seconds) and caches the file.

    Example::

        emb = MiniLMInt8Embedder(onnx_dir=Path("~/.cache/turnout/embeddings/models").expanduser())
        emb.embed_one("What is 2+2?").shape   # (384,)
        emb.onnx_path.name                     # 'minilm-l6-v2-0.1.0-opset17-int8pc.onnx'
    """

    #: "int8pc": per-channel int8 weights; "b1": one text per call (see the module docstring).
    #: The vectors differ from fp32, so the cache key does too
    name = "minilm-l6-v2-ht-int8pc-b1"
    dim = 384

    def __init__(self, *, onnx_dir: Path, threads: int = 1, batch_size: int = 64, progress: bool = True) -> None:
        super().__init__(onnx_dir=onnx_dir, runtime="onnx", threads=threads, batch_size=batch_size, progress=progress)

    @property
    def onnx_path(self) -> Path:
        """The quantised graph; the fp32 one it is made from is :attr:`fp32_path`."""
        return self._onnx_dir / f"{_ONNX_STEM}-{_package_version()}-opset{_OPSET}-int8pc.onnx"

    @property
    def fp32_path(self) -> Path:
        return self._fp32().onnx_path

    def _fp32(self) -> MiniLMEmbedder:
        return MiniLMEmbedder(onnx_dir=self._onnx_dir, runtime="onnx", threads=self._threads, progress=False)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        # one call per text: a batch would share activation scales (module docstring)
        return np.concatenate([self._run_session(self._session, [t]) for t in texts])

    def _ensure_loaded(self) -> None:
        if self.runtime is not None:
            return
        with self._lock:
            if self.runtime is not None:
                return
            try:
                import onnxruntime  # noqa: F401
            except ImportError as exc:
                raise MissingDependency("onnxruntime", "embed", "The 'minilm-int8' embedder") from exc
            if not self.onnx_path.exists():
                self._quantize()
            self._load_onnx()

    def _quantize(self) -> None:
        """Quantise the fp32 graph (exporting it first if needed), verify, then move into place atomically."""
        try:
            from onnxruntime.quantization import QuantType, quantize_dynamic
        except ImportError as exc:  # onnxruntime.quantization needs the onnx package
            raise MissingDependency("onnx", "embed", "Quantising the 'minilm-int8' embedder") from exc
        import onnxruntime as ort

        fp32 = self._fp32()
        ref = fp32.embed(list(_CHECK_SENTENCES))  # exports the fp32 graph on a fresh machine
        log.info("quantising %s to int8 at %s (one time, a few seconds)", fp32.onnx_path.name, self.onnx_path)
        tmp = self.onnx_path.with_suffix(f".{os.getpid()}.tmp")
        try:
            with _quiet_preprocess_advice():
                quantize_dynamic(str(fp32.onnx_path), str(tmp), per_channel=True, weight_type=QuantType.QInt8)
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = np.concatenate([self._run_session(sess, [t]) for t in _CHECK_SENTENCES])
            agreement = float(np.min(np.sum(ref * got, axis=1)))
            if agreement <= INT8_AGREEMENT:
                raise TurnoutError(
                    f"the int8 quantisation of {fp32.onnx_path.name} agrees with fp32 only to cosine "
                    f"{agreement:.4f} (need > {INT8_AGREEMENT}); use the 'minilm' embedder, or report it with "
                    "your onnxruntime version"
                )
            log.info("int8 graph verified: min cosine to fp32 %.5f", agreement)
            os.replace(tmp, self.onnx_path)  # concurrent first users each write their own tmp file; one wins
        finally:
            tmp.unlink(missing_ok=True)


__all__ = ["INT8_AGREEMENT", "MiniLMInt8Embedder"]
