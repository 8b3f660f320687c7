"""What a curation cache entry's key is made of (roost.curation.cache): the input's bytes or Hub
commit, the embedding model's identity, each stage's kind and canonical settings, the files and
local models it names. See the key table in roost/curation/cache.py."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from roost.config import canonical, file_digest
from roost.stages.base import Embedding, SetStage, Stage

_MAX_STAT_FILES = 10_000


def key_hash(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_fingerprint(source) -> dict[str, Any]:
    """What the input is (roost.dataset.sources.Source.identity): its files' bytes, or its Hub commit."""
    identity = source.identity()
    if "revision" in identity:
        return {**identity, "sha256": hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]}
    return identity


def embedding_identity(recipe) -> dict[str, Any]:
    """The embedding settings and the model's bytes (local files) or Hub revision."""
    cfg = recipe.embedding
    ident: dict[str, Any] = {"config": canonical(cfg)}
    model = getattr(cfg, "model", None)
    try:
        from roost.engines import embeddings

        static = getattr(embeddings, "is_static", None)
        if static is not None and static(model, getattr(cfg, "kind", None)) and model in (None, "static"):
            # model2vec distilled from the bundled MiniLM: what the distilled model is made of
            from importlib.metadata import version

            ident["static"] = {"source": file_digest(embeddings.default_embedding_model()),
                               "pca_dims": getattr(embeddings, "STATIC_PCA_DIMS", None), "model2vec": version("model2vec")}
            return ident
        if model is None:
            model = embeddings.default_embedding_model()
    except Exception:  # no bundled default: the settings are all we know
        return ident
    if Path(str(model)).exists():
        ident["files"] = file_digest(model)
    else:
        ident["revision"] = _hub_revision(str(model))
    return ident


def _hub_revision(name: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover
        return None
    for repo in ([name] if "/" in name else [name, f"sentence-transformers/{name}"]):
        try:
            found = try_to_load_from_cache(repo, "config.json")
        except Exception:
            continue
        if isinstance(found, str):
            parts = Path(found).parts
            if "snapshots" in parts:
                return parts[parts.index("snapshots") + 1]
    return None


def stage_identity(stage: Stage) -> dict[str, Any]:
    cfg = stage.config
    settings = canonical(cfg)
    contents = getattr(cfg, "contents", None)
    return {"kind": stage.kind, "config": settings, "contents": contents() if callable(contents) else {},
            "paths": _path_stats(settings)}


def uses_embedder(stage: Stage) -> bool:
    if stage.uses_embedder is not None:
        return stage.uses_embedder
    if isinstance(stage, SetStage):
        return any(isinstance(f, Embedding) for f in stage.features())
    return True


def _path_stats(settings: Any) -> dict[str, Any]:
    """Sizes and modification times of local files named in a stage's settings (a model
    directory, a benchmark file): a model replaced at the same path is a new key."""
    out: dict[str, Any] = {}

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
        elif isinstance(v, str) and v and "\n" not in v and len(v) < 4096:
            try:
                p = Path(v)
                if p.is_file():
                    st = p.stat()
                    out[v] = [st.st_size, st.st_mtime_ns]
                elif p.is_dir():
                    files = []
                    for i, f in enumerate(sorted(p.rglob("*"))):
                        if i >= _MAX_STAT_FILES:
                            break
                        if f.is_file():
                            st = f.stat()
                            files.append([str(f.relative_to(p)), st.st_size, st.st_mtime_ns])
                    out[v] = files
            except OSError:
                pass

    walk(settings)
    return out
