"""`roost publish`: put an output of roost build, curate or iterate on the Hugging Face Hub as
a dataset repo, in one commit: the Parquet shards in the Hub's layout (one config per row
set), the manifest(s), the recipe, the report's figures and a dataset card.

    stage(...)     the folder, exactly as it is uploaded (`--dry-run DIR` writes it and stops)
    publish(...)   stage into a temporary folder beside OUT, then upload it (roost.publish.hub)

The token comes from HF_TOKEN or the Hub's login cache (`huggingface_hub.get_token()`), is
handed to `HfApi` only, and never appears in output, logs, the staged files or errors.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from roost.errors import ConfigError, UserError
from roost.publish.card import DEFAULT_LICENSE
from roost.publish.hub import HubRefused, UploadFailed
from roost.publish.source import NotARoostOutput, Source, read_source
from roost.publish.stage import Staged, stage

__all__ = ["publish", "stage", "read_source", "check_repo_id", "hub_token", "Source", "Staged", "NotARoostOutput",
           "HubRefused", "UploadFailed", "MissingToken", "TokenInFiles", "DEFAULT_LICENSE"]

_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_REVISION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,199}")
_LICENSE = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")


class MissingToken(UserError):
    """No Hugging Face token (HF_TOKEN or `hf auth login`)."""


class TokenInFiles(UserError):
    """A staged file holds the token: publishing it would leak it."""


def check_repo_id(repo: str) -> str:
    """ORG/NAME, as the Hub spells repo ids; else one line, exit 2."""
    if not isinstance(repo, str) or not _REPO_ID.fullmatch(repo) or "--" in repo or ".." in repo \
            or repo.endswith((".", "-")) or repo.split("/")[1].endswith(".git"):
        raise ConfigError(f"--repo {repo!r}: expected ORG/NAME (letters, digits, '-', '_', '.'), e.g. my-org/my-data")
    return repo


def check_revision(revision: str | None) -> str | None:
    if revision is None:
        return None
    if not _REVISION.fullmatch(revision) or ".." in revision or revision.endswith(("/", ".lock")):
        raise ConfigError(f"--revision {revision!r}: not a branch name")
    return revision


def check_license(license: str | None) -> str | None:
    if license is not None and not _LICENSE.fullmatch(license):
        raise ConfigError(f"--license {license!r}: a Hub license id, lowercase, e.g. apache-2.0, cc-by-4.0, other")
    return license


def hub_token() -> str:
    """The token huggingface_hub would use (HF_TOKEN, else the login cache); never printed."""
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        raise MissingToken("no Hugging Face token: set HF_TOKEN or run `hf auth login` "
                           "(or stage without uploading: --dry-run DIR)")
    return token


def publish(out: str | Path | Source, repo: str, *, private: bool = False, revision: str | None = None,
            dry_run: str | Path | None = None, license: str | None = None, endpoint: str | None = None,
            say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    """Stage OUT for `repo`; with `dry_run`, leave the staged folder there and stop; else upload
    it as one commit and remove the staging. Returns what happened (no token in it)."""
    repo = check_repo_id(repo)
    revision = check_revision(revision)
    license = check_license(license)
    source = out if isinstance(out, Source) else read_source(out)
    if dry_run is not None:
        staged = stage(source, dry_run, repo_id=repo, license=license)
        _warn_if_token_in(staged, say)
        return {"repo": repo, "revision": revision or "main", "dry_run": str(staged.root), "files": len(staged.files),
                "bytes": staged.bytes, "linked": staged.linked, "configs": _configs(source), "uploaded": False}
    token = hub_token()
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise ConfigError("HF_HUB_OFFLINE is set: publishing needs the Hub; unset it (or stage only: --dry-run DIR)")
    endpoint = endpoint or _env_endpoint()
    scratch = _scratch(source.out)
    try:
        staged = stage(source, scratch / "repo", repo_id=repo, license=license)
        _refuse_if_token_in(staged, token)
        say(f"staged {len(staged.files)} files ({staged.bytes / 1e6:.1f} MB) for {repo}")
        from roost.publish.hub import upload

        name = (source.recipe or {}).get("name") or source.out.name
        message = f"roost publish: {name} ({source.default.rows} rows, recipe {source.manifest.get('recipe_hash')})"
        result = upload(staged.root, staged.files, repo, token=token, private=private, revision=revision,
                        endpoint=endpoint, commit_message=message, say=say)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result.update(configs=_configs(source), uploaded=result["committed"])
    return result


def _configs(source: Source) -> dict[str, int]:
    return {p.name: p.rows for p in source.parts}


def _env_endpoint() -> str | None:
    import os

    value = os.environ.get("HF_ENDPOINT")  # read now: huggingface_hub read it when first imported
    return value.rstrip("/") if value else None


def _scratch(out: Path) -> Path:
    """A temporary folder beside OUT (same file system: shards are hard-linked, not copied),
    or in the system's temp dir if OUT's parent is read-only."""
    for parent in (out.resolve().parent, None):
        try:
            return Path(tempfile.mkdtemp(prefix=f".roost-publish-{out.name}-", dir=parent))
        except OSError:
            continue
    raise UserError("no writable temporary directory to stage the upload in")


def _text_files(staged: Staged) -> list[Path]:
    return [staged.root / f for f in staged.files if not f.endswith((".parquet", ".png"))]


def _refuse_if_token_in(staged: Staged, token: str) -> None:
    for path in _text_files(staged):
        if token.encode() in path.read_bytes():
            raise TokenInFiles(f"{path.relative_to(staged.root)} holds your Hugging Face token "
                               "(a training command or recipe field?): not publishing it")


def _warn_if_token_in(staged: Staged, say: Callable[[str], None]) -> None:
    from huggingface_hub import get_token

    token = get_token()
    if not token:
        return
    for path in _text_files(staged):
        if token.encode() in path.read_bytes():
            say(f"warning: {path.relative_to(staged.root)} holds your Hugging Face token; a real publish refuses it")
