"""A stand-in for the Hugging Face Hub: a small HTTP server on loopback that answers the routes
huggingface_hub 2.x's `HfApi` uses to create a dataset repo and branch, and to commit files
(`roost publish`), and records every request it receives, byte for byte.

It is not the Hub. It answers `uploadMode: "regular"` for every file, so the client sends file
contents inline (base64 in the NDJSON commit) and never takes the LFS or Xet path; its YAML
validation accepts any card; auth is one token compared as a string; there is no rate limit.
It exists because huggingface_hub 2.x speaks httpx2, which transport mocks (respx,
pytest-httpx) do not intercept: a real socket is the honest seam.

Routes:

    GET  /api/datasets/{repo}                      repo info (404 RepoNotFound if absent)
    GET  /api/datasets/{repo}/revision/{rev}       repo info at a branch (404 RevisionNotFound)
    POST /api/repos/create                         create (409 with `url` if it exists)
    POST /api/datasets/{repo}/branch/{branch}      create a branch from main (409 if it exists)
    GET  /api/datasets/{repo}/tree/{rev}[/{path}]  files: path, size, git blob oid
    POST /api/validate-yaml                        {"errors": [], "warnings": []}
    POST /api/datasets/{repo}/preupload/{rev}      "regular" + the stored file's oid, per file
    POST /api/datasets/{repo}/commit/{rev}         NDJSON: header, file (base64), deletedFile
    GET|HEAD /datasets/{repo}/resolve/{rev}/{path} a file's bytes (rev: a branch or a commit), with the
                                                   X-Repo-Commit and ETag headers hf_hub_download reads
    GET  /api/agent-harnesses                      404 (the client's user-agent lookup, at most once a
                                                   day, without the token; it ignores the 404)

`FakeHub.fail[route] = status` makes a route answer that status (route names: info, revision,
create, branch, tree, validate, preupload, commit). `log_path` gets one line per request
(method, path, auth, status): the token itself is never recorded, only whether it matched.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Request:
    method: str
    path: str
    query: dict
    auth: str  # ok, missing or wrong
    body: bytes
    status: int = 0

    @property
    def route(self) -> str:
        return _route(self.method, self.path)[0]


@dataclass
class Repo:
    private: bool
    branches: dict[str, list[dict]] = field(default_factory=dict)  # branch -> commits, each {oid, files}

    def head(self, branch: str) -> dict:
        return self.branches[branch][-1]


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_ROUTES = [
    ("GET", "info", re.compile(rf"^/api/datasets/{_REPO}$")),
    ("GET", "revision", re.compile(rf"^/api/datasets/{_REPO}/revision/(?P<rev>[^/]+)$")),
    ("POST", "create", re.compile(r"^/api/repos/create$")),
    ("POST", "branch", re.compile(rf"^/api/datasets/{_REPO}/branch/(?P<rev>[^/]+)$")),
    ("GET", "tree", re.compile(rf"^/api/datasets/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<sub>.*))?$")),
    ("POST", "validate", re.compile(r"^/api/validate-yaml$")),
    ("POST", "preupload", re.compile(rf"^/api/datasets/{_REPO}/preupload/(?P<rev>[^/]+)$")),
    ("POST", "commit", re.compile(rf"^/api/datasets/{_REPO}/commit/(?P<rev>[^/]+)$")),
    ("GET", "agents", re.compile(r"^/api/agent-harnesses$")),
    ("GET", "resolve", re.compile(rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<sub>.+)$")),
    ("HEAD", "resolve", re.compile(rf"^/datasets/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<sub>.+)$")),
]


def _route(method: str, path: str) -> tuple[str, dict]:
    for m, name, pattern in _ROUTES:
        match = pattern.match(path)
        if m == method and match:
            return name, {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
    return "unknown", {}


class FakeHub:
    def __init__(self, token: str, log_path: str | Path | None = None):
        self.token = token
        self.log_path = Path(log_path) if log_path else None
        self.repos: dict[str, Repo] = {}
        self.requests: list[Request] = []
        self.fail: dict[str, int] = {}
        self._commits = 0
        self._lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                url = urlsplit(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                got = self.headers.get("Authorization")
                auth = "missing" if not got else ("ok" if got == f"Bearer {hub.token}" else "wrong")
                req = Request(self.command, url.path, parse_qs(url.query), auth, body)
                with hub._lock:
                    hub.requests.append(req)
                    status, payload, headers = hub._answer(req)
                req.status = status
                hub._log(req)
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, *args):  # quiet: requests are recorded in hub.requests / log_path
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- what tests look at --------------------------------------------------------------

    def files(self, repo: str, branch: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo].head(branch)["files"])

    def commits(self, repo: str, branch: str = "main") -> list[dict]:
        return list(self.repos[repo].branches[branch])

    def calls(self) -> list[str]:
        """The requests as `METHOD route`, leaving out the client's agent-registry lookup."""
        return [f"{r.method} {r.route}" for r in self.requests if r.route != "agents"]

    # -- the routes ----------------------------------------------------------------------

    def _log(self, req: Request) -> None:
        if self.log_path is not None:
            with open(self.log_path, "a") as f:
                f.write(f"{req.method} {req.path} auth={req.auth} -> {req.status} body={len(req.body)}B\n")

    def _answer(self, req: Request) -> tuple[int, dict, dict]:
        route, args = _route(req.method, req.path)
        if route in ("unknown", "agents"):
            return 404, {"error": f"fake hub: no route {req.method} {req.path}"}, {}
        if req.auth != "ok":
            return 401, {"error": "Invalid credentials in Authorization header"}, {}
        if route in self.fail:
            return self.fail[route], {"error": f"fake hub: {route} fails with {self.fail[route]}"}, {}
        return getattr(self, f"_{route}")(req, **args)

    def _repo(self, repo: str, rev: str | None = None):
        if repo not in self.repos:
            return None, (404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"})
        if rev is not None and rev not in self.repos[repo].branches and self._commit_of(repo, rev) is None:
            return None, (404, {"error": f"Invalid rev id: {rev}"}, {"X-Error-Code": "RevisionNotFound"})
        return self.repos[repo], None

    def _commit_of(self, repo: str, rev: str) -> dict | None:
        """A branch's head, or the commit whose oid is `rev`."""
        branches = self.repos[repo].branches
        if rev in branches:
            return branches[rev][-1]
        return next((c for commits in branches.values() for c in commits if c["oid"] == rev), None)

    def _info(self, req, repo, rev="main"):
        r, err = self._repo(repo, rev)
        if err:
            return err
        head = self._commit_of(repo, rev)
        return 200, {"id": repo, "sha": head["oid"], "private": r.private,
                     "siblings": [{"rfilename": p} for p in sorted(head["files"])]}, {}

    def _revision(self, req, repo, rev):
        return self._info(req, repo, rev)

    def _create(self, req):
        body = json.loads(req.body)
        repo = f"{body['organization']}/{body['name']}"
        if body.get("type") != "dataset":
            return 400, {"error": "fake hub: datasets only"}, {}
        url = f"{self.url}/datasets/{repo}"
        if repo in self.repos:
            return 409, {"error": "You already created this dataset repo", "url": url}, {}
        private = body.get("visibility") == "private" or bool(body.get("private"))
        self.repos[repo] = Repo(private, {"main": [{"oid": self._oid(), "files": {".gitattributes": GITATTRIBUTES},
                                                    "summary": "initial commit"}]})
        return 200, {"url": url, "name": repo}, {}

    def _branch(self, req, repo, rev):
        r, err = self._repo(repo)
        if err:
            return err
        if rev in r.branches:
            return 409, {"error": f"Reference already exists: refs/heads/{rev}"}, {}
        r.branches[rev] = [r.head("main")]
        return 200, {}, {}

    def _tree(self, req, repo, rev, sub=""):
        r, err = self._repo(repo, rev)
        if err:
            return err
        files = self._commit_of(repo, rev)["files"]
        return 200, [{"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": p}
                     for p, data in sorted(files.items()) if p.startswith(sub or "")], {}

    def _resolve(self, req, repo, rev, sub):
        r, err = self._repo(repo, rev)
        if err:
            return err
        commit = self._commit_of(repo, rev)
        if sub not in commit["files"]:
            return 404, {"error": f"{sub} not found"}, {"X-Error-Code": "EntryNotFound"}
        data = commit["files"][sub]
        return 200, data, {"X-Repo-Commit": commit["oid"], "ETag": f'"{git_blob_sha(data)}"'}

    def put(self, repo: str, files: dict[str, bytes], branch: str = "main") -> str:
        """A commit of `files` (path -> bytes, replacing the branch's) made directly, as a
        dataset's owner would push it; its oid."""
        self.repos.setdefault(repo, Repo(False, {branch: []}))
        oid = self._oid()
        self.repos[repo].branches.setdefault(branch, []).append(
            {"oid": oid, "files": {".gitattributes": GITATTRIBUTES, **files}, "summary": "put"})
        return oid

    def _validate(self, req):
        content = json.loads(req.body).get("content", "")
        if not content.startswith("---\n"):
            return 400, {"errors": [{"message": "fake hub: no YAML header"}], "warnings": []}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _preupload(self, req, repo, rev):
        r, err = self._repo(repo, rev)
        if err:
            return err
        files = r.head(rev)["files"]
        return 200, {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False,
                                "oid": git_blob_sha(files[f["path"]]) if f["path"] in files else None}
                               for f in json.loads(req.body)["files"]]}, {}

    def _commit(self, req, repo, rev):
        r, err = self._repo(repo, rev)
        if err:
            return err
        lines = [json.loads(line) for line in req.body.decode().splitlines() if line.strip()]
        if not lines or lines[0]["key"] != "header":
            return 400, {"error": "fake hub: no header line"}, {}
        files = dict(r.head(rev)["files"])
        for item in lines[1:]:
            value = item["value"]
            if item["key"] == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "deletedFile":
                files.pop(value["path"], None)
            else:
                return 400, {"error": f"fake hub: {item['key']} not supported (everything is 'regular')"}, {}
        oid = self._oid()
        r.branches[rev].append({"oid": oid, "files": files, "summary": lines[0]["value"]["summary"],
                                "operations": [i["key"] + ":" + i["value"]["path"] for i in lines[1:]]})
        return 200, {"commitUrl": f"{self.url}/datasets/{repo}/commit/{oid}", "commitOid": oid, "success": True}, {}

    def _oid(self) -> str:
        self._commits += 1
        return hashlib.sha1(f"commit {self._commits}".encode()).hexdigest()
