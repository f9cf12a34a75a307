"""What the dev Hub's routers share: the per-app state (:class:`Hub`, reached through the :data:`HubDep`
dependency), injected faults, webhooks, and the JSON shapes of files and errors.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request
from fastapi.responses import JSONResponse

from workers.devtools.devhub.store import REPO_TYPES, Store, StoreError, Token, lfs_pointer, split_repo_id

KINDS = {f"{t}s": t for t in REPO_TYPES}
FAULT_ROUTES = ("commit", "preupload", "lfs", "resolve", "info", "create", "tree", "any")


@dataclass
class Faults:
    """Pending injected failures: route kind -> [status, remaining count], and seconds to stall before each."""

    pending: dict[str, list[int]] = field(default_factory=dict)
    delays: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, kind: str) -> tuple[int, float] | None:
        """The status to answer (and the stall before it) for the next request of ``kind``, if one is pending."""
        with self.lock:
            for key in (kind, "any"):
                entry = self.pending.get(key)
                if entry and entry[1] > 0:
                    entry[1] -= 1
                    return entry[0], self.delays.get(key, 0.0)
        return None


def route_kind(method: str, path: str) -> str:
    """The fault kind a request falls under (what ``/_devhub/faults`` names as its ``route``)."""
    if "/commit/" in path:
        return "commit"
    if "/preupload/" in path:
        return "preupload"
    if "/info/lfs/" in path or path.startswith("/_devhub/lfs/"):
        return "lfs"
    if "/resolve/" in path:
        return "resolve"
    if "/tree/" in path:
        return "tree"
    if path.startswith("/api/repos/create"):
        return "create"
    return "info"


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"X-Error-Code": code, "X-Error-Message": message})


class Webhooks:
    """Webhooks the dev Hub fires after commits, as the Hub does: a POST with X-Webhook-Secret.

    Deliveries run in a background thread (a slow receiver never slows a commit) and are recorded.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.deliveries: list[dict] = []

    def list(self) -> list[dict]:
        return json.loads(self.path.read_text()) if self.path.is_file() else []

    def add(self, url: str, secret: str | None, repos: list[str] | None) -> dict:
        with self.lock:
            hooks = self.list()
            hook = {"id": secrets.token_hex(6), "url": url, "secret": secret, "repos": repos}
            hooks.append(hook)
            self.path.write_text(json.dumps(hooks, indent=1))
        return hook

    def fire(self, repo_type: str, repo_id: str, *, private: bool, ref: str, old: str | None, new: str) -> None:
        for hook in self.list():
            if hook["repos"] and repo_id not in hook["repos"]:
                continue
            payload = {"event": {"action": "update", "scope": "repo.content"},
                       "repo": {"type": repo_type, "name": repo_id, "id": repo_id, "private": private,
                                "headSha": new},
                       "updatedRefs": [{"ref": ref, "oldSha": old, "newSha": new}],
                       "webhook": {"id": hook["id"], "version": 3}}
            threading.Thread(target=self._deliver, args=(hook, payload), daemon=True).start()

    def _deliver(self, hook: dict, payload: dict) -> None:
        import urllib.error
        import urllib.request

        headers = {"Content-Type": "application/json"}
        if hook.get("secret"):
            headers["X-Webhook-Secret"] = hook["secret"]
        request = urllib.request.Request(hook["url"], json.dumps(payload).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                status = response.status
        except urllib.error.HTTPError as e:
            status = e.code
        except OSError as e:
            status = f"failed: {e.__class__.__name__}"
        with self.lock:
            self.deliveries.append({"hook": hook["id"], "repo": payload["repo"]["name"],
                                    "sha": payload["updatedRefs"][0]["newSha"], "status": status})


@dataclass
class RequestLog:
    """How many requests the dev Hub answered, by method and path (its own ``/_devhub/`` routes left out): what
    a test reads to count a client's calls."""

    counts: dict[tuple[str, str], int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, method: str, path: str) -> None:
        with self.lock:
            self.counts[(method, path)] = self.counts.get((method, path), 0) + 1

    def listing(self) -> list[dict]:
        with self.lock:
            return [{"method": m, "path": p, "count": n} for (m, p), n in sorted(self.counts.items())]

    def clear(self) -> None:
        with self.lock:
            self.counts.clear()


@dataclass
class Hub:
    """One dev Hub app's state (``app.state.hub``) and the access checks every router makes."""

    store: Store
    faults: Faults
    webhooks: Webhooks
    page_size: int
    uploads: dict[str, int] = field(default_factory=dict)  # oid -> size, granted by the LFS batch endpoint
    requests: RequestLog = field(default_factory=RequestLog)

    def token_of(self, request: Request, *, required: bool = False) -> Token | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            if required:
                raise StoreError(401, "Unauthorized", "Invalid credentials in Authorization header")
            return None
        token = self.store.tokens().get(header[7:].strip())
        if token is None:
            raise StoreError(401, "Unauthorized", "Invalid credentials in Authorization header")
        return token

    def readable_repo(self, request: Request, repo_type: str, repo_id: str) -> dict:
        split_repo_id(repo_id)
        repo = self.store.repo(repo_type, repo_id)
        token = self.token_of(request)
        if repo is None or (repo["private"] and (token is None or not token.may_read(repo_id.split("/")[0]))):
            raise StoreError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def writable_repo(self, request: Request, repo_type: str, repo_id: str) -> dict:
        repo = self.readable_repo(request, repo_type, repo_id)
        token = self.token_of(request, required=True)
        if not token.may_write(repo_id.split("/")[0]):
            raise StoreError(403, "Forbidden", f"You don't have the rights to write to {repo_id}")
        return repo


async def get_hub(request: Request) -> Hub:
    """The dependency that hands a route its app's :class:`Hub` (async: no thread-pool hop)."""
    return request.app.state.hub


HubDep = Annotated[Hub, Depends(get_hub)]


def kind_type(kind: str) -> str:
    """The repo type of a URL's kind (``models`` -> ``model``); 404 for an unknown kind."""
    if kind not in KINDS:
        raise StoreError(404, "EntryNotFound", f"unknown repo kind {kind}")
    return KINDS[kind]


def entry_json(path: str, entry: dict) -> dict:
    """A file of a commit's tree as the Hub lists it (tree, paths-info)."""
    out = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
    if entry["lfs"]:
        out["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                      "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
    return out


def folder_oid(folder: str, commit_id: str) -> str:
    return hashlib.sha1(f"{commit_id}:{folder}".encode()).hexdigest()
