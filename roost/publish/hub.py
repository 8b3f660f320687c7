"""Upload a staged folder to the Hub as ONE commit, with huggingface_hub's `HfApi`.

Requests, in order (each one the Hub client's own):

    GET  /api/datasets/{repo}                       does the repo exist (and is it private)?
    POST /api/repos/create                          create_repo(exist_ok=True)
    POST /api/datasets/{repo}/branch/{rev}          create_branch(exist_ok=True), only for --revision
    GET  /api/datasets/{repo}/revision/{rev}        the branch head before the commit
    GET  /api/datasets/{repo}/tree/{rev}            what is there: the plan (changed / unchanged / stale)
    POST /api/validate-yaml                         create_commit: the card's YAML
    POST /api/datasets/{repo}/preupload/{rev}       create_commit: upload mode and remote oid per file
    POST /api/datasets/{repo}/commit/{rev}          create_commit: one NDJSON commit
         (or GET .../revision/{rev} when nothing changed: no commit)

`create_commit`, not `upload_folder`: with hf_xet installed, `upload_folder` streams large
folders in several commits; roost wants one atomic commit, or nothing. Files whose content the
Hub already has at that path (its preupload `oid` equals the local git-blob sha1, or the LFS
sha256) are dropped by huggingface_hub, so a re-run with nothing changed makes no commit.
Shards the repo has from an earlier publish but the staging does not (`*.parquet`, `figures/`)
are deleted in the same commit, so `data/train-*` never mixes two publishes.

The token is given to `HfApi` and nowhere else; every message that leaves this module is
scrubbed of it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from roost.errors import UserError


class HubRefused(UserError):
    """The Hub said no to the token or the repo (401/403/404): fix the token or the repo id."""


class UploadFailed(UserError):
    """The upload broke off (server error, network): said with what was and was not uploaded."""

    exit_code = 1


@dataclass
class Plan:
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


def upload(stage: Path, files: list[str], repo_id: str, *, token: str, private: bool, revision: str | None,
           endpoint: str | None, commit_message: str, say: Callable[[str], None] = lambda s: None) -> dict[str, Any]:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = HfApi(endpoint=endpoint, token=token)
    branch = revision or "main"
    done: list[str] = []
    step = "repo check"
    failure: tuple[str, BaseException] | None = None
    try:
        try:
            info = api.repo_info(repo_id, repo_type="dataset")
            existed, was_private = True, bool(info.private)
        except RepositoryNotFoundError:
            existed, was_private = False, private
        step = "repo creation"
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        done.append(f"repo {repo_id} {'existed' if existed else 'created' + (' (private)' if private else '')}")
        say(done[-1])
        if existed and private and not was_private:
            say(f"note: --private only applies when the repo is created; {repo_id} exists and is public")
        if branch != "main":
            step = f"creation of branch {branch}"
            api.create_branch(repo_id, repo_type="dataset", branch=branch, exist_ok=True)
            done.append(f"branch {branch} ready")
        step = "reading the repo's files"
        head = api.repo_info(repo_id, repo_type="dataset", revision=branch).sha
        plan = _plan(api, stage, files, repo_id, branch)
        say(f"{len(plan.changed)} file(s) new or changed, {len(plan.unchanged)} unchanged, "
            f"{len(plan.deleted)} stale to delete")
        operations = [CommitOperationDelete(path_in_repo=p) for p in plan.deleted]
        operations += [CommitOperationAdd(path_in_repo=p, path_or_fileobj=str(stage / p)) for p in files]
        step = f"commit of {len(plan.changed) + len(plan.deleted)} file change(s) to {repo_id}@{branch}"
        commit = api.create_commit(repo_id, repo_type="dataset", revision=branch, operations=operations,
                                   commit_message=commit_message)
    except _hub_errors() as e:  # HTTP errors, network errors, the card's YAML refused (anything else: a bug)
        failure = (step, e)
    if failure is not None:
        raise _failure(failure[0], failure[1], done, token, repo_id)
    committed = commit.oid != head
    url = f"{api.endpoint}/datasets/{repo_id}" + (f"/tree/{branch}" if branch != "main" else "")
    return {"repo": repo_id, "revision": branch, "url": url, "commit": commit.oid, "committed": committed,
            "previous_commit": head, "created_repo": not existed, "files": len(files),
            "changed": len(plan.changed), "unchanged": len(plan.unchanged), "deleted": len(plan.deleted)}


def _hub_errors() -> tuple[type[BaseException], ...]:
    from huggingface_hub.errors import HfHubHTTPError

    errors: list[type[BaseException]] = [HfHubHTTPError, OSError, ValueError]
    try:
        import httpx2  # huggingface_hub 2.x

        errors.append(httpx2.HTTPError)
    except ImportError:  # huggingface_hub < 1.0 speaks requests
        import requests

        errors.append(requests.RequestException)
    return tuple(errors)


def _plan(api, stage: Path, files: list[str], repo_id: str, branch: str) -> Plan:
    from huggingface_hub.hf_api import RepoFile

    remote = {f.path: f for f in api.list_repo_tree(repo_id, repo_type="dataset", revision=branch, recursive=True)
              if isinstance(f, RepoFile)}
    plan = Plan()
    for path in files:
        there = remote.get(path)
        same = there is not None and _same(stage / path, there)
        (plan.unchanged if same else plan.changed).append(path)
    staged = set(files)
    plan.deleted = sorted(p for p in remote if p not in staged and (p.endswith(".parquet") or p.startswith("figures/")))
    return plan


def _same(path: Path, remote) -> bool:
    """The Hub's notion of 'unchanged': LFS sha256, or the git blob sha1 for regular files."""
    size = path.stat().st_size
    if remote.size is not None and remote.size != size:
        return False
    if remote.lfs is not None:
        return remote.lfs.sha256 == _digest(path, hashlib.sha256())
    return remote.blob_id == _digest(path, hashlib.sha1(b"blob %d\0" % size))


def _digest(path: Path, h) -> str:
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def scrub(text: str, token: str | None) -> str:
    return text.replace(token, "<token>") if token else text


def _failure(step: str, e: BaseException, done: list[str], token: str, repo_id: str) -> UserError:
    """One line: what was done, what failed and why, and that the commit did not happen."""
    status = getattr(getattr(e, "response", None), "status_code", None)
    if status is not None:
        reason = getattr(e.response, "reason_phrase", "") or ""
        why = f"HTTP {status}{' ' + reason if reason else ''}"
        server = getattr(e, "server_message", None)
        if server:
            why += f": {str(server).splitlines()[0][:160]}"
    else:
        why = f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}".rstrip(": ")
    before = "; ".join(done) + "; " if done else ""
    if status in (401, 403) or (status == 404 and not done):
        hint = ("check HF_TOKEN or `hf auth login`, and that the token may write to "
                f"{repo_id.split('/')[0]}" if status != 404 else f"does {repo_id.split('/')[0]} exist?")
        return HubRefused(scrub(f"{before}{step} refused by the Hub ({why}): {hint}; nothing uploaded", token))
    return UploadFailed(scrub(f"{before}{step} failed ({why}): nothing uploaded", token))
