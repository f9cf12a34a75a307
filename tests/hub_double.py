"""A test double of the Hugging Face Hub's read API, for the real ``huggingface_hub`` client.

The real Hub cannot be reached from tests.  This serves just what resolving and fetching a source needs
(``model_info``, tree listing, ``resolve`` downloads, the error codes the client maps to exceptions) from
folders on disk, and records every request so tests can check what was downloaded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    folder: Path
    gated: bool = False
    card: dict = field(default_factory=dict)

    def files(self) -> list[str]:
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*") if p.is_file())

    @property
    def sha(self) -> str:
        digest = hashlib.sha1()
        for name in self.files():
            digest.update(name.encode() + (self.folder / name).read_bytes())
        return digest.hexdigest()


class HubDouble:
    """``with HubDouble() as hub: hub.add(repo_id, folder)``; then pass ``hub.endpoint`` to the client."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[tuple[str, str]] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_HEAD(self) -> None:
                double._handle(self, head=True)

            def do_GET(self) -> None:
                double._handle(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "HubDouble":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, repo_id: str, folder: Path, *, gated: bool = False, card: dict | None = None) -> Repo:
        repo = Repo(Path(folder), gated, card or {})
        self.repos[repo_id] = repo
        return repo

    def downloaded(self, repo_id: str) -> set[str]:
        """Paths of the repo fetched with GET .../resolve/... so far."""
        prefix = f"/{repo_id}/resolve/"
        return {path[len(prefix):].split("/", 1)[1] for method, path in self.requests
                if method == "GET" and path.startswith(prefix)}

    # --- request handling ----------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler, *, head: bool) -> None:
        path = unquote(urlparse(request.path).path)
        self.requests.append(("HEAD" if head else "GET", path))
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "models"]:
            return self._api(request, parts[2:])
        if len(parts) >= 5 and parts[2] == "resolve":
            return self._resolve(request, "/".join(parts[:2]), parts[3], "/".join(parts[4:]), head)
        self._error(request, 404, "EntryNotFound", "not found")

    def _repo(self, request, repo_id: str, revision: str) -> Repo | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            self._error(request, 404, "RepoNotFound", f"Repository {repo_id} not found")
            return None
        if repo.gated and "authorization" not in {k.lower() for k in request.headers}:
            self._error(request, 401, "GatedRepo", f"Access to {repo_id} is restricted")
            return None
        if revision not in ("main", repo.sha):
            self._error(request, 404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return None
        return repo

    def _api(self, request, rest: list[str]) -> None:
        repo_id = "/".join(rest[:2])
        if len(rest) == 2 or (len(rest) >= 4 and rest[2] == "revision"):
            repo = self._repo(request, repo_id, rest[3] if len(rest) >= 4 else "main")
            if repo:
                self._json(request, {"id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False,
                                     "gated": repo.gated, "cardData": repo.card,
                                     "siblings": [{"rfilename": f, "size": (repo.folder / f).stat().st_size}
                                                  for f in repo.files()]})
        elif len(rest) >= 4 and rest[2] == "tree":
            repo = self._repo(request, repo_id, rest[3])
            if repo:
                entries = [{"type": "file", "path": f, "size": (repo.folder / f).stat().st_size,
                            "oid": hashlib.sha1((repo.folder / f).read_bytes()).hexdigest()}
                           for f in repo.files()]
                self._json(request, entries)
        else:
            self._error(request, 404, "EntryNotFound", "unknown route")

    def _resolve(self, request, repo_id: str, revision: str, file: str, head: bool) -> None:
        repo = self._repo(request, repo_id, revision)
        if repo is None:
            return
        target = repo.folder / file
        if not target.is_file():
            return self._error(request, 404, "EntryNotFound", f"{file} not found")
        body = target.read_bytes()
        request.send_response(200)
        request.send_header("X-Repo-Commit", repo.sha)
        request.send_header("ETag", f'"{hashlib.sha1(body).hexdigest()}"')
        request.send_header("Content-Length", str(len(body)))
        request.send_header("Content-Type", "application/octet-stream")
        request.end_headers()
        if not head:
            request.wfile.write(body)

    @staticmethod
    def _json(request, data) -> None:
        body = json.dumps(data).encode()
        request.send_response(200)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)

    @staticmethod
    def _error(request, status: int, code: str, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        request.send_response(status)
        request.send_header("X-Error-Code", code)
        request.send_header("X-Error-Message", message)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        request.end_headers()
        request.wfile.write(body)
