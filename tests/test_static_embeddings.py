"""Static (model2vec) embeddings: distilled offline from the bundled MiniLM, cached; static
semantic dedup on real text with planted near-duplicates; a curation that uses them."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("ROOST_TEST_MODELS", REPO / ".cache" / "test-models")) / "roost-cache"
sys.path.insert(0, str(REPO / "bench"))


@pytest.fixture(scope="session")
def static_dir() -> Path:
    """Distil (or find cached) in a fresh process that cannot reach any hub: HF_HUB_OFFLINE and a
    hub endpoint on a closed port."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
           "ROOST_CACHE_DIR": str(CACHE), "TQDM_DISABLE": "1"}
    code = "from roost.engines.embeddings import distill_static; print(distill_static())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    assert out.returncode == 0, out.stderr[-3000:]
    return Path(out.stdout.strip().splitlines()[-1])


@pytest.fixture()
def roost_cache(monkeypatch, static_dir):
    monkeypatch.setenv("ROOST_CACHE_DIR", str(CACHE))
    return CACHE


def test_distilled_offline_from_the_bundled_minilm_and_cached(static_dir, roost_cache, monkeypatch):
    from roost.engines.embeddings import STATIC_PCA_DIMS, _source_digest, default_embedding_model, distill_static

    assert static_dir.parent == CACHE / "static-models"
    config = json.loads((static_dir / "config.json").read_text())
    assert config["model_type"] == "model2vec" and config["hidden_dim"] == STATIC_PCA_DIMS
    meta = json.loads((static_dir / "roost_distill.json").read_text())
    assert meta["source"] == default_embedding_model()
    assert meta["source_sha256"] == _source_digest(default_embedding_model())
    assert meta["pca_dims"] == STATIC_PCA_DIMS and meta["quantize_to"] == "float32"
    assert not list(static_dir.parent.glob(".distill-*"))  # no half-written model left behind

    # cached: a second call finds it and never distils
    import model2vec.distill

    def boom(*a, **k):
        raise AssertionError("distilled again")

    monkeypatch.setattr(model2vec.distill, "distill", boom)
    assert distill_static() == static_dir
    # the key covers the settings: other PCA dims are another model (and would be distilled)
    with pytest.raises(AssertionError, match="distilled again"):
        distill_static(pca_dims=64)
    assert not list(static_dir.parent.glob(".distill-*"))


def test_static_embedder_contract(roost_cache):
    from roost.engines.embeddings import STATIC_PCA_DIMS, StaticEmbedder, load_embedder

    e = load_embedder("static", batch_size=32)
    assert isinstance(e, StaticEmbedder) and e.dim == STATIC_PCA_DIMS
    texts = ["How do I reverse a list in Python?", "How can I reverse a list in Python?",
             "What is the capital of France?", "", "\u2603\u2603"]
    x = e.encode(texts)
    assert x.dtype == np.float32 and x.shape == (5, STATIC_PCA_DIMS)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    assert x[0] @ x[1] > 0.9 and x[0] @ x[2] < 0.5  # a paraphrase is close, another topic is not
    assert abs(x[3] @ x[0]) < 0.5 and abs(x[3] @ x[4]) < 0.5  # no token: a vector of its own
    np.testing.assert_array_equal(e.encode(texts), x)  # deterministic
    assert e.encode([]).shape == (0, STATIC_PCA_DIMS)
    d = e.describe()
    assert d["kind"] == "model2vec" and d["distilled_from"].endswith("model") and d["dim"] == STATIC_PCA_DIMS
    # a model2vec directory is recognised as such; "static" is the distilled one
    assert isinstance(load_embedder(e.model_name), StaticEmbedder)


def test_static_dedup_finds_planted_near_duplicates(roost_cache):
    """Real text (stdlib docstrings) and edited copies of 10% of it (synonyms, word swaps,
    dropped or added words, typos, sentence order, case, a polite prefix: bench/static_corpus.py),
    deduplicated on static embeddings at the shipped threshold. bench/bench_static_dedup.py
    measures the agreement with MiniLM on 18k texts; here the planted pairs are the truth."""
    from static_corpus import plant_near_duplicates, stdlib_docstrings

    from roost.algorithms.semantic_dedup import semantic_dedup
    from roost.engines.embeddings import STATIC_DEDUP_THRESHOLD, StaticEmbedder

    base = list(dict.fromkeys(stdlib_docstrings()[:2000]))
    texts, planted = plant_near_duplicates(base, frac=0.1, seed=3)
    ids = [str(i) for i in range(len(texts))]
    x = StaticEmbedder().encode(texts)
    r = semantic_dedup(x, ids, threshold=STATIC_DEDUP_THRESHOLD)
    src, dst, sim = r.pairs
    found = set(zip(src.tolist(), dst.tolist()))
    found |= {(b, a) for a, b in found}
    hit = sum((a, b) in found for a, b in planted)
    assert hit / len(planted) >= 0.7, (hit, len(planted))
    # a found planted pair never keeps both rows
    assert not any(r.keep[a] and r.keep[b] for a, b in planted if (a, b) in found)
    assert (~r.keep).sum() < 0.25 * len(texts)  # not a flood of false duplicates


def test_curation_with_static_embeddings(tmp_path, roost_cache):
    from roost.curation.runner import curate
    from roost.engines.embeddings import STATIC_DEDUP_THRESHOLD
    from roost.recipe import CurateRecipe
    from roost.schemas import MESSAGES

    qs = ["How do I reverse a list in Python?", "What is the capital of France?",
          "Explain photosynthesis to a ten year old.", "What's the capital city of France?",
          "How can I reverse a list in Python?", "Write a haiku about autumn leaves."]
    rows = [{"messages": [{"role": "user", "content": q},
                          {"role": "assistant", "content": "Here is a careful and complete answer."}]} for q in qs]
    src = tmp_path / "in.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=pa.schema([pa.field("messages", MESSAGES)])), src)
    recipe = CurateRecipe.model_validate({"input": {"path": str(src)}, "embedding": {"model": "static"},
                                          "stages": [{"kind": "semantic_dedup"}]})
    manifest = curate(recipe, tmp_path / "out", progress=False)
    st = next(s for s in manifest["stages"] if s["name"] == "semantic_dedup")
    assert st["settings"]["threshold"] == STATIC_DEDUP_THRESHOLD
    assert st["settings"]["embedding"]["kind"] == "model2vec" and st["settings"]["dim"] == 256
    kept = [r["messages"][0]["content"] for f in sorted((tmp_path / "out" / "data").glob("*.parquet"))
            for r in pq.read_table(f).to_pylist()]
    # static cosines: the reverse-list pair 0.96, the capital pair 0.90, all others < 0.3
    assert qs[4] not in kept and {qs[0], qs[1], qs[2], qs[5]} <= set(kept)
    assert (qs[3] in kept) == (STATIC_DEDUP_THRESHOLD > 0.904)
    rejects = [r for f in sorted((tmp_path / "out" / "rejects").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    assert any(r.get("reason") == "semantic_duplicate" for r in rejects)


def test_cached_static_embeddings_are_keyed_by_what_the_distilled_model_is_made_of(monkeypatch):
    """A resumed curation reads cached embeddings only if the static model would be the same:
    the source model's bytes, the PCA size and the model2vec version are in the key."""
    from roost.curation import keys as stage_cache
    from roost.engines import embeddings
    from roost.recipe import CurateRecipe, validate

    static = validate(CurateRecipe, {"embedding": {"model": "static"}}, "t")
    minilm = validate(CurateRecipe, {}, "t")
    base = stage_cache.embedding_identity(static)
    assert base["static"]["source"] and base["static"]["model2vec"]
    assert base == stage_cache.embedding_identity(static) != stage_cache.embedding_identity(minilm)
    monkeypatch.setattr(embeddings, "STATIC_PCA_DIMS", embeddings.STATIC_PCA_DIMS // 2)
    assert stage_cache.embedding_identity(static) != base
