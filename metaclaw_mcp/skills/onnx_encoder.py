"""MiniLM on ONNX Runtime, weights in int8: the transformer's contextual vectors at a query cost a fetch can pay.

The model (the bundled all-MiniLM-L6-v2, or `embedding_model_path`) is exported once: `torch.onnx.export`
(opset 17, the TorchScript exporter, dynamic batch and sequence axes), its BERT subgraphs fused by
onnxruntime's transformer optimizer (attention, layer norms, GELU: fewer, larger kernels), and its
weights quantised to int8 (`quantize_dynamic`, per output channel). The result (about 23 MB) is
cached under the embedding cache dir, named by the model's identity, written to a temporary
folder and renamed. Exporting needs torch, transformers, onnx and onnxscript (the `[embeddings]`
extra) and takes some seconds; every later load needs only onnxruntime, tokenizers and numpy, and
imports no torch.

A text's vector is the mean of the model's last hidden states over its tokens (at most
`MAX_TOKENS`, as sentence-transformers truncates this model), L2-normalised: what the
sentence-transformers model computes, to a cosine of about 0.99 (int8 weights).
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

import numpy as np

from .dense import MODEL_ID, EncoderBase, read_json, default_cache_dir, model_dir

ONNX_VERSION = 1      # bump when the export recipe changes: a new file, and new skill vectors
MAX_TOKENS = 256      # all-MiniLM-L6-v2's max_seq_length in sentence-transformers
ONNX_THREADS = 2      # onnxruntime's intra-op threads for a batch, or one long text
# Up to this many tokens a single text runs on one thread: waking a second (non-spinning) thread
# costs more than it saves on so little work. Measured here (2 cores, int8 MiniLM, median ms of one
# run, 1 vs 2 threads): 16 tokens 1.33 vs 1.75, 48: 3.53 vs 3.87, 64: 4.92 vs 4.76, 128: 10.2 vs 8.1.
SINGLE_THREAD_MAX_TOKENS = 56
EXPORT_NEEDS = ("torch", "transformers", "onnx", "onnxscript")

log = logging.getLogger("metaclaw_mcp.retrieval")


def onnx_model_path(model_path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where a model's int8 ONNX export is cached: named by the model (its folder, weights' size and
    config), so a different model gets a file of its own."""
    folder = model_dir(model_path)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()), None)
    config = (folder / "config.json").read_bytes() if (folder / "config.json").exists() else b""
    stamp = f"{folder.name}:{weights.stat().st_size if weights else 0}:{ONNX_VERSION}:".encode() + config
    digest = hashlib.sha256(stamp).hexdigest()[:12]
    return Path(cache_dir or default_cache_dir()) / f"onnx-int8-{folder.name}-{digest}.onnx"


def failed_marker(path: Path) -> Path:
    """The file beside an export that says its export failed, and why (`<name>.failed`)."""
    return path.with_name(path.name + ".failed")


def unavailable_reason(model_path: str | Path | None = None, cache_dir: str | Path | None = None) -> str | None:
    """Why the ONNX encoder cannot serve here (None when it can): onnxruntime missing, or no cached
    export and no means to make one (or an earlier export of this model failed). Imports nothing."""
    missing = [m for m in ("onnxruntime", "tokenizers") if find_spec(m) is None]
    if missing:
        return f"{' and '.join(missing)} not installed"
    try:
        path = onnx_model_path(model_path, cache_dir)
    except Exception as exc:  # noqa: BLE001 - no model to export: said, and another encoder is used
        return f"no model to export ({type(exc).__name__}: {exc})"
    if path.exists():
        return None
    marker = failed_marker(path)
    if marker.exists():
        return f"exporting failed before ({marker.read_text(encoding='utf-8', errors='replace')[:300]}); " \
               f"delete {marker} to try again"
    missing = [m for m in EXPORT_NEEDS if find_spec(m) is None]
    if missing:
        return f"no cached export at {path}, and exporting needs {', '.join(missing)}"
    return None


def export_onnx(model_path: str | Path | None, out: Path) -> None:
    """Export the model to ONNX, fuse its BERT subgraphs, quantise its weights to int8; write `out` whole."""
    import torch
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel

    folder = model_dir(model_path)
    # eager attention: its graph is the one onnxruntime's optimizer recognises and fuses
    model = AutoModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask"]
    if getattr(model.config, "type_vocab_size", 0):
        names.append("token_type_ids")

    class KeywordCall(torch.nn.Module):
        """Called with keyword arguments (transformers 5's forward takes others positionally)."""

        def __init__(self, inner: torch.nn.Module):
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return self.inner(**dict(zip(names, inputs))).last_hidden_state

    sample = torch.ones(2, 8, dtype=torch.long)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".onnx-export-") as tmp:
        fp32 = Path(tmp) / "model.onnx"
        with torch.no_grad():
            torch.onnx.export(KeywordCall(model), tuple(sample if n != "token_type_ids" else torch.zeros_like(sample)
                                                        for n in names),
                              str(fp32), input_names=names, output_names=["last_hidden_state"],
                              dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names + ["last_hidden_state"]},
                              opset_version=17, dynamo=False)
        del model
        source = _fused(fp32, folder) or fp32
        int8 = Path(tmp) / "model.int8.onnx"
        quiet = _BelowWarning()   # the quantiser logs a line per tensor on the root logger
        logging.getLogger().addFilter(quiet)
        try:
            quantize_dynamic(str(source), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": TensorProto.FLOAT})
        finally:
            logging.getLogger().removeFilter(quiet)
        with open(int8, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(int8, out)


class _BelowWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        """Keep warnings and worse only."""
        return record.levelno >= logging.WARNING


def _fused(fp32: Path, folder: Path) -> Path | None:
    """The graph with its BERT subgraphs fused (onnxruntime's transformer optimizer), or None when
    the model is not a BERT or the optimizer fails (the plain graph is quantised then)."""
    config = read_json(folder / "config.json")
    if config.get("model_type") != "bert":
        return None
    try:
        from onnxruntime.transformers import optimizer
        fused = optimizer.optimize_model(str(fp32), model_type="bert", num_heads=int(config["num_attention_heads"]),
                                         hidden_size=int(config["hidden_size"]), opt_level=1)
        out = fp32.with_name("model.fused.onnx")
        fused.save_model_to_file(str(out))
        return out
    except Exception:  # noqa: BLE001 - an optimisation only
        log.warning("onnxruntime's transformer optimizer failed on %s; quantising the plain graph", folder.name,
                    exc_info=True)
        return None


_SESSIONS: dict[tuple[Path, int], tuple[object, object, tuple[str, ...]]] = {}
_SESSIONS_LOCK = threading.Lock()


def load_onnx(model_path: str | Path | None = None, cache_dir: str | Path | None = None,
              threads: int = ONNX_THREADS) -> tuple[object, object, tuple[str, ...]]:
    """(tokenizer, onnxruntime session, its input names) of a model, exported and cached first if
    missing; once a process. An export that fails leaves a marker: later servers use the static
    encoder (`unavailable_reason`) until it is deleted."""
    path = onnx_model_path(model_path, cache_dir)
    with _SESSIONS_LOCK:
        if (path, threads) in _SESSIONS:
            return _SESSIONS[(path, threads)]
        from tokenizers import Tokenizer
        tokenizer_file = model_dir(model_path) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} is missing: the ONNX encoder needs the model's fast "
                                    "tokenizer (a sentence-transformers folder has it)")
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.enable_truncation(MAX_TOKENS)
        tokenizer.no_padding()
        if not path.exists():
            log.info("exporting %s to ONNX with int8 weights (once; some seconds)", model_dir(model_path).name)
            try:
                export_onnx(model_path, path)
            except Exception as exc:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    failed_marker(path).write_text(f"{type(exc).__name__}: {exc}"[:1000], encoding="utf-8")
                except OSError:
                    pass
                log.warning("exporting to ONNX failed; retrieval stays lexical in this process and later servers "
                            "use the static encoder (delete %s to try again)", failed_marker(path))
                raise
            log.info("ONNX model cached at %s", path)
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # no spinning: between queries the threads sleep instead of taking the CPU from the database thread
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        inputs = tuple(i.name for i in session.get_inputs())
        _SESSIONS[(path, threads)] = (tokenizer, session, inputs)
        return _SESSIONS[(path, threads)]


class OnnxEmbedder(EncoderBase):
    """The transformer's mean-pooled, L2-normalised vectors, computed by onnxruntime from the int8 export.

    The export is made on the first load (seconds, with torch) and cached under `cache_dir`
    (default `$XDG_CACHE_HOME/metaclaw-mcp`); loading it afterwards takes a fraction of a second.
    """

    fast = False   # a query takes a few milliseconds: encoded in a worker thread while FTS5 runs

    def __init__(self, model_path: str | Path | None = None, cache_dir: str | Path | None = None,
                 model_id: str = MODEL_ID, threads: int = ONNX_THREADS):
        super().__init__(model_path, model_id)
        self.cache_dir = cache_dir
        self.threads = threads
        self.model_id = f"{self.model_id}-onnx-int8" + ("" if ONNX_VERSION == 1 else f"-v{ONNX_VERSION}")
        self.dim = 384 if model_path is None else int(read_json(model_dir(model_path) / "config.json")["hidden_size"])
        self._session = None
        self._session_1 = None   # one intra-op thread: short single texts (queries)
        self._tokenizer = None
        self._inputs: tuple[str, ...] = ()

    @property
    def ready(self) -> bool:
        """Whether the ONNX session is loaded (encoding will not wait for a load or an export)."""
        return self._session is not None

    def cached_artefact(self) -> Path:
        """The exported model (loading it is quick; exporting takes seconds of CPU)."""
        return onnx_model_path(self.model_path, self.cache_dir)

    def _load(self) -> None:
        if self._session is not None:
            return
        tokenizer, session, inputs = load_onnx(self.model_path, self.cache_dir, self.threads)
        self._tokenizer, self._inputs = tokenizer, inputs
        self._session_1 = session if self.threads == 1 else load_onnx(self.model_path, self.cache_dir, 1)[1]
        self._session = session

    def _run(self, ids_BL: np.ndarray, mask_BL: np.ndarray) -> np.ndarray:
        """[B, D] unit-length mean-pooled vectors of a padded batch (one short text: on one thread,
        `SINGLE_THREAD_MAX_TOKENS`)."""
        assert self._session is not None
        session = self._session_1 if ids_BL.shape[0] == 1 and ids_BL.shape[1] <= SINGLE_THREAD_MAX_TOKENS \
            else self._session
        feed = {"input_ids": ids_BL, "attention_mask": mask_BL, "token_type_ids": np.zeros_like(ids_BL)}
        hidden_BLD = session.run(None, {n: feed[n] for n in self._inputs})[0]
        mask_BL1 = mask_BL[:, :, None].astype(np.float32)
        vectors_BD = (hidden_BLD * mask_BL1).sum(1) / np.maximum(mask_BL1.sum(1), 1.0)
        norms_B1 = np.linalg.norm(vectors_BD, axis=1, keepdims=True)
        return (vectors_BD / np.maximum(norms_B1, 1e-12)).astype(np.float32)

    def _encode_one(self, text: str) -> np.ndarray:
        assert self._tokenizer is not None
        ids_1L = np.asarray([self._tokenizer.encode(text).ids], dtype=np.int64)
        return self._run(ids_1L, np.ones_like(ids_1L))[0]

    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """[N, D] float32, each row of unit length. Texts are batched by length (little padding)."""
        self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1:
            return self._encode_one(texts[0])[None]
        assert self._tokenizer is not None
        out_ND = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size * 32):   # tokenised in chunks: few held at once
            chunk = self._tokenizer.encode_batch(list(texts[start:start + batch_size * 32]))
            order = sorted(range(len(chunk)), key=lambda i: len(chunk[i].ids))
            for b in range(0, len(order), batch_size):
                rows = order[b:b + batch_size]
                longest = max(len(chunk[i].ids) for i in rows)
                ids_BL = np.zeros((len(rows), longest), dtype=np.int64)
                mask_BL = np.zeros((len(rows), longest), dtype=np.int64)
                for j, i in enumerate(rows):
                    n = len(chunk[i].ids)
                    ids_BL[j, :n] = chunk[i].ids
                    mask_BL[j, :n] = 1
                out_ND[[start + i for i in rows]] = self._run(ids_BL, mask_BL)
        return out_ND
