"""What every engine shares (vLLM in-process, its pooling runner, a vLLM server, transformers):
a model's revision as recorded in provenance, and the progress bar of a long call."""
from __future__ import annotations

import hashlib
import sys
import warnings
from pathlib import Path


def progress_bar(desc: str | None):
    # Live bars only on a terminal: piped into a log, rich redraws would repeat every line.
    if not desc or not sys.stderr.isatty():
        return False
    from tqdm import TqdmExperimentalWarning
    from tqdm.rich import tqdm as rich_tqdm

    warnings.filterwarnings("ignore", category=TqdmExperimentalWarning)

    def factory(*args, **kwargs):
        kwargs.pop("dynamic_ncols", None)
        kwargs["desc"] = desc
        return rich_tqdm(*args, **kwargs)

    return factory


def resolve_revision(model: str, revision: str | None) -> str | None:
    """A commit for hub models (best effort, needs the hub), a content hash for local dirs."""
    path = Path(model)
    if path.is_dir():
        h = hashlib.sha256()
        for f in sorted(path.iterdir()):
            if f.is_file() and f.suffix in {".json", ".jinja", ".safetensors", ".model", ".txt"}:
                h.update(f.name.encode())
                if f.stat().st_size <= 64 << 20:
                    h.update(f.read_bytes())
                else:
                    h.update(str(f.stat().st_size).encode())
        return "local-sha256:" + h.hexdigest()[:16]
    if revision and len(revision) == 40:
        return revision
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(model, revision=revision).sha
    except Exception:
        return revision
