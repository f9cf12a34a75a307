"""The dev Hub's HTTP API: the Hub routes ``huggingface_hub`` 2.x calls, served from a :class:`Store`.

Besides the Hub's own routes it has ``/_devhub/faults`` to make the next N requests of a kind fail
(for retry tests) and ``/_devhub/lfs/...`` where LFS uploads land.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlencode

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from service.devhub.store import REPO_TYPES, Store, StoreError, Token, is_lfs, lfs_pointer, split_repo_id

KINDS = {f"{t}s": t for t in REPO_TYPES}
FAULT_ROUTES = ("commit", "preupload", "lfs", "resolve", "info", "create", "tree", "any")
KNOWN_LICENSES = {
    "apache-2.0", "mit", "openrail", "openrail++", "creativeml-openrail-m", "bigscience-openrail-m", "other",
    "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc0-1.0", "bsd-3-clause", "gpl-3.0",
    "llama2", "llama3", "gemma", "unknown", "afl-3.0", "artistic-2.0", "bsl-1.0", "lgpl-3.0", "mpl-2.0",
}
RELATIONS = {"adapter", "merge", "quantized", "finetune"}
PIPELINE_TAGS = {"text-to-image", "image-to-image", "text-generation", "image-classification",
                 "feature-extraction", "unconditional-image-generation", "text-to-video", "other"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


@dataclass
class Faults:
    """Pending injected failures: route kind -> [status, remaining count]."""

    pending: dict[str, list[int]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, kind: str) -> int | None:
        with self.lock:
            for key in (kind, "any"):
                entry = self.pending.get(key)
                if entry and entry[1] > 0:
                    entry[1] -= 1
                    return entry[0]
        return None


def _route_kind(method: str, path: str) -> str:
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


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"X-Error-Code": code, "X-Error-Message": message})


def create_app(data: Path, *, page_size: int = 1000) -> FastAPI:
    """The dev Hub as an ASGI app over the data folder ``data``."""
    store = Store(data)
    faults = Faults()
    uploads: dict[str, int] = {}  # oid -> size, granted by the LFS batch endpoint
    app = FastAPI(title="coreml-publisher dev Hub", docs_url="/_devhub/docs", openapi_url="/_devhub/openapi.json")
    app.state.store, app.state.faults = store, faults
    hooks = Webhooks(data / "webhooks.json")
    app.state.webhooks = hooks

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message)

    @app.middleware("http")
    async def inject_faults(request: Request, call_next):
        if not request.url.path.startswith("/_devhub/faults"):
            status = faults.take(_route_kind(request.method, request.url.path))
            if status is not None:
                return _error(status, "InjectedFault", f"injected fault {status}")
        return await call_next(request)

    # --- helpers ----------------------------------------------------------------------------------------

    def token_of(request: Request, *, required: bool = False) -> Token | None:
        header = request.headers.get("authorization", "")
        if not header.lower().startswith("bearer "):
            if required:
                raise StoreError(401, "Unauthorized", "Invalid credentials in Authorization header")
            return None
        token = store.tokens().get(header[7:].strip())
        if token is None:
            raise StoreError(401, "Unauthorized", "Invalid credentials in Authorization header")
        return token

    def readable_repo(request: Request, repo_type: str, repo_id: str) -> dict:
        split_repo_id(repo_id)
        repo = store.repo(repo_type, repo_id)
        token = token_of(request)
        if repo is None or (repo["private"] and (token is None or not token.may_read(repo_id.split("/")[0]))):
            raise StoreError(404, "RepoNotFound", f"Repository {repo_id} not found")
        return repo

    def writable_repo(request: Request, repo_type: str, repo_id: str) -> dict:
        repo = readable_repo(request, repo_type, repo_id)
        token = token_of(request, required=True)
        if not token.may_write(repo_id.split("/")[0]):
            raise StoreError(403, "Forbidden", f"You don't have the rights to write to {repo_id}")
        return repo

    def kind_type(kind: str) -> str:
        if kind not in KINDS:
            raise StoreError(404, "EntryNotFound", f"unknown repo kind {kind}")
        return KINDS[kind]

    def entry_json(path: str, entry: dict) -> dict:
        out = {"type": "file", "path": path, "size": entry["size"], "oid": entry["oid"]}
        if entry["lfs"]:
            out["lfs"] = {"oid": entry["sha256"], "size": entry["size"],
                          "pointerSize": len(lfs_pointer(entry["sha256"], entry["size"]))}
        return out

    def card_data(commit: dict) -> dict | None:
        entry = commit["tree"].get("README.md")
        if entry is None:
            return None
        text = store.object_path(entry["sha256"]).read_text(errors="replace")
        meta, _ = _front_matter(text)
        return meta if isinstance(meta, dict) else None

    def info_json(repo_type: str, repo_id: str, repo: dict, commit: dict) -> dict:
        return {
            "_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
            "sha": commit["id"], "private": repo["private"], "disabled": False, "gated": False,
            "downloads": 0, "likes": 0, "lastModified": commit["date"], "createdAt": repo["created"],
            "tags": (card_data(commit) or {}).get("tags", []) or [],
            "cardData": card_data(commit),
            "siblings": [{"rfilename": p, "size": e["size"], "blobId": e["oid"],
                          **({"lfs": {"sha256": e["sha256"], "size": e["size"],
                                      "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}} if e["lfs"] else {})}
                         for p, e in sorted(commit["tree"].items())],
        }

    # --- identity and repos ---------------------------------------------------------------------------

    @app.get("/api/whoami-v2")
    def whoami(request: Request):
        token = token_of(request, required=True)
        role = "write" if token.write else "read"
        return {"type": "user", "name": token.user, "fullname": token.user,
                "orgs": [{"name": o, "type": "org", "roleInOrg": role} for o in token.orgs],
                "auth": {"type": "access_token", "accessToken": {"displayName": "devhub", "role": role}}}

    @app.post("/api/repos/create")
    async def create_repo(request: Request):
        body = await request.json()
        token = token_of(request, required=True)
        namespace = body.get("organization") or token.user
        repo_type = body.get("type") or "model"
        repo_id = f"{namespace}/{body.get('name', '')}"
        split_repo_id(repo_id)
        if repo_type not in REPO_TYPES:
            raise StoreError(400, "BadRequest", f"invalid repo type {repo_type}")
        if not token.may_write(namespace):
            raise StoreError(403, "Forbidden", f"You don't have the rights to create a repo in {namespace}")
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{str(request.base_url).rstrip('/')}/{prefix}{repo_id}"
        try:
            private = body.get("visibility") in ("private", "protected") or bool(body.get("private"))
            store.create_repo(repo_type, repo_id, private=private, author=token.user)
        except StoreError as e:
            if e.status != 409:
                raise
            # the Hub answers 409 with the repo's url, which the client reads when exist_ok=True
            return JSONResponse({"error": e.message, "url": url}, status_code=409,
                                headers={"X-Error-Code": e.code, "X-Error-Message": e.message})
        return {"url": url, "name": repo_id, "id": repo_id}

    @app.delete("/api/repos/delete")
    async def delete_repo(request: Request):
        body = await request.json()
        token = token_of(request, required=True)
        namespace = body.get("organization") or token.user
        repo_id = f"{namespace}/{body.get('name', '')}"
        repo_type = body.get("type") or "model"
        writable_repo(request, repo_type, repo_id)
        store.delete_repo(repo_type, repo_id)
        return {}

    @app.get("/api/{kind}")
    def list_repos(kind: str, request: Request, author: str | None = None, search: str | None = None,
                   limit: int | None = None):
        repo_type = kind_type(kind)
        token = token_of(request)
        out = []
        for repo_id, repo in store.list_repos(repo_type):
            namespace = repo_id.split("/")[0]
            if repo["private"] and (token is None or not token.may_read(namespace)):
                continue
            if (author and namespace != author) or (search and search.lower() not in repo_id.lower()):
                continue
            commit = store.commit(repo["branches"]["main"])
            out.append({"_id": repo_id, "id": repo_id, "modelId": repo_id, "private": repo["private"],
                        "sha": commit["id"], "lastModified": commit["date"], "createdAt": repo["created"]})
        return out[:limit] if limit else out

    @app.get("/api/{kind}/{namespace}/{name}")
    @app.get("/api/{kind}/{namespace}/{name}/revision/{revision:path}")
    def repo_info(kind: str, namespace: str, name: str, request: Request, revision: str = "main"):
        repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
        repo = readable_repo(request, repo_type, repo_id)
        return info_json(repo_type, repo_id, repo, store.resolve_revision(repo, revision))

    @app.get("/api/{kind}/{namespace}/{name}/refs")
    def refs(kind: str, namespace: str, name: str, request: Request):
        repo = readable_repo(request, kind_type(kind), f"{namespace}/{name}")
        return {
            "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo["branches"].items()],
            "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in repo["tags"].items()],
            "converts": [],
        }

    @app.get("/api/{kind}/{namespace}/{name}/commits/{revision:path}")
    def commits(kind: str, namespace: str, name: str, revision: str, request: Request):
        repo = readable_repo(request, kind_type(kind), f"{namespace}/{name}")
        return [{"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
                 "authors": [{"user": c["author"]}]} for c in store.history(store.resolve_revision(repo, revision))]

    @app.get("/api/{kind}/{namespace}/{name}/tree/{revision}")
    @app.get("/api/{kind}/{namespace}/{name}/tree/{revision}/{path:path}")
    def tree(kind: str, namespace: str, name: str, revision: str, request: Request, path: str = "",
             recursive: bool = False, cursor: int = 0, limit: int | None = None):
        repo = readable_repo(request, kind_type(kind), f"{namespace}/{name}")
        commit = store.resolve_revision(repo, revision)
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in commit["tree"]):
            raise StoreError(404, "EntryNotFound", f"{path} does not exist on {revision}")
        entries: dict[str, dict] = {}
        for file, entry in sorted(commit["tree"].items()):
            if not file.startswith(prefix):
                continue
            rest = file[len(prefix):].split("/")
            for depth in range(1, len(rest)):
                folder = prefix + "/".join(rest[:depth])
                if recursive or depth == 1:
                    entries.setdefault(folder, {"type": "directory", "path": folder, "size": 0,
                                                "oid": _folder_oid(folder, commit["id"])})
                if not recursive:
                    break
            if recursive or len(rest) == 1:
                entries[file] = entry_json(file, entry)
        items = [entries[k] for k in sorted(entries)]
        size = limit or page_size
        page = items[cursor:cursor + size]
        headers = {}
        if cursor + size < len(items):
            query = dict(request.query_params) | {"cursor": str(cursor + size)}
            headers["Link"] = f'<{str(request.url).split("?")[0]}?{urlencode(query)}>; rel="next"'
        return JSONResponse(page, headers=headers)

    @app.post("/api/{kind}/{namespace}/{name}/paths-info/{revision:path}")
    async def paths_info(kind: str, namespace: str, name: str, revision: str, request: Request):
        repo = readable_repo(request, kind_type(kind), f"{namespace}/{name}")
        commit = store.resolve_revision(repo, revision)
        if request.headers.get("content-type", "").startswith("application/json"):
            paths = (await request.json()).get("paths", [])
        else:
            paths = parse_qs((await request.body()).decode()).get("paths", [])
        out = []
        for p in paths:
            p = p.strip("/")
            if p in commit["tree"]:
                out.append(entry_json(p, commit["tree"][p]))
            elif any(f.startswith(p + "/") for f in commit["tree"]):
                out.append({"type": "directory", "path": p, "size": 0, "oid": _folder_oid(p, commit["id"])})
        return out

    # --- uploads and commits --------------------------------------------------------------------------

    @app.post("/api/{kind}/{namespace}/{name}/preupload/{revision:path}")
    async def preupload(kind: str, namespace: str, name: str, revision: str, request: Request):
        repo = writable_repo(request, kind_type(kind), f"{namespace}/{name}")
        commit = store.resolve_revision(repo, revision)
        files = []
        for f in (await request.json()).get("files", []):
            sample = base64.b64decode(f.get("sample", ""))
            lfs = is_lfs(f["path"], int(f.get("size", 0)), sample)
            existing = commit["tree"].get(f["path"])
            oid = None
            if existing is not None and existing["lfs"] == lfs:
                oid = existing["sha256"] if lfs else existing["oid"]
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False,
                          "oid": oid})
        return {"files": files, "commitOid": commit["id"]}

    async def lfs_batch(namespace: str, name: str, repo_type: str, request: Request):
        writable_repo(request, repo_type, f"{namespace}/{name}")
        body = await request.json()
        base = str(request.base_url).rstrip("/")
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], int(obj["size"])
            if store.has_object(oid):
                objects.append({"oid": oid, "size": size})
                continue
            uploads[oid] = size
            objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
                "upload": {"href": f"{base}/_devhub/lfs/{oid}?ticket={secrets.token_hex(8)}", "header": {}},
                "verify": {"href": f"{base}/_devhub/lfs/{oid}/verify", "header": {}}}})
        return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                            media_type="application/vnd.git-lfs+json")

    @app.post("/{namespace}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch_models(namespace: str, name: str, request: Request):
        return await lfs_batch(namespace, name, "model", request)

    @app.post("/{kind}/{namespace}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch_other(kind: str, namespace: str, name: str, request: Request):
        return await lfs_batch(namespace, name, kind_type(kind), request)

    @app.put("/_devhub/lfs/{oid}")
    async def lfs_upload(oid: str, request: Request):
        if oid not in uploads and not store.has_object(oid):
            raise StoreError(403, "Forbidden", "no upload was granted for this object")
        chunks = []
        async for chunk in request.stream():
            chunks.append(chunk)
        _, size = store.put_object_stream(iter(chunks), expected=oid)
        expected = uploads.pop(oid, size)  # a second upload of the same content is harmless
        if size != expected:
            raise StoreError(400, "BadRequest", "size does not match the batch request")
        return Response(status_code=200)

    @app.post("/_devhub/lfs/{oid}/verify")
    async def lfs_verify(oid: str, request: Request):
        body = await request.json()
        if not store.has_object(oid) or store.object_path(oid).stat().st_size != int(body.get("size", -1)):
            raise StoreError(404, "EntryNotFound", f"object {oid} not found")
        return {}

    @app.post("/api/{kind}/{namespace}/{name}/commit/{revision:path}")
    async def commit(kind: str, namespace: str, name: str, revision: str, request: Request):
        repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
        writable_repo(request, repo_type, repo_id)
        token = token_of(request, required=True)
        header, files, lfs_files, deleted, deleted_folders = {}, {}, {}, [], []
        for line in (await request.body()).splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item.get("key"), item.get("value", {})
            if key == "header":
                header = value
            elif key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                lfs_files[value["path"]] = (value["oid"], int(value.get("size") or 0))
            elif key == "deletedFile":
                deleted.append(value["path"])
            elif key == "deletedFolder":
                deleted_folders.append(value["path"])
            else:
                raise StoreError(400, "BadRequest", f"unsupported commit operation {key!r}")
        for path, (oid, size) in list(lfs_files.items()):
            if store.has_object(oid) and not size:
                lfs_files[path] = (oid, store.object_path(oid).stat().st_size)
        old_head = store.repo(repo_type, repo_id)["branches"].get(revision)
        new = store.apply_commit(repo_type, repo_id, revision, title=header.get("summary", "update"),
                                 message=header.get("description", ""), author=token.user,
                                 parent=header.get("parentCommit"), files=files, lfs_files=lfs_files,
                                 deleted_files=deleted, deleted_folders=deleted_folders)
        repo = store.repo(repo_type, repo_id)
        hooks.fire(repo_type, repo_id, private=repo["private"], ref=f"refs/heads/{revision}", old=old_head,
                   new=new["id"])
        base = str(request.base_url).rstrip("/")
        return {"commitUrl": f"{base}/{repo_id}/commit/{new['id']}", "commitOid": new["id"],
                "commitMessage": header.get("summary", ""), "pullRequestUrl": None}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request):
        body = await request.json()
        meta, error = _front_matter(body.get("content", ""))
        errors = [error] if error else _metadata_errors(meta or {})
        if errors:
            return JSONResponse({"errors": [{"message": e} for e in errors], "warnings": []}, status_code=400)
        return {"errors": [], "warnings": []}

    @app.post("/api/{kind}/{namespace}/{name}/tag/{revision:path}")
    async def create_tag(kind: str, namespace: str, name: str, revision: str, request: Request):
        repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
        repo = writable_repo(request, repo_type, repo_id)
        body = await request.json()
        store.set_ref(repo_type, repo_id, "tag", body["tag"], store.resolve_revision(repo, revision)["id"])
        return {}

    @app.delete("/api/{kind}/{namespace}/{name}/tag/{tag:path}")
    def delete_tag(kind: str, namespace: str, name: str, tag: str, request: Request):
        repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
        writable_repo(request, repo_type, repo_id)
        store.set_ref(repo_type, repo_id, "tag", tag, None)
        return {}

    @app.post("/api/{kind}/{namespace}/{name}/branch/{branch:path}")
    async def create_branch(kind: str, namespace: str, name: str, branch: str, request: Request):
        repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
        repo = writable_repo(request, repo_type, repo_id)
        raw = await request.body()
        start = (json.loads(raw) if raw else {}).get("startingPoint") or "main"
        store.set_ref(repo_type, repo_id, "branch", branch, store.resolve_revision(repo, start)["id"])
        return {}

    # --- downloads ------------------------------------------------------------------------------------

    def resolve_file(repo_type: str, namespace: str, name: str, revision: str, path: str, request: Request,
                     head: bool) -> Response:
        repo = readable_repo(request, repo_type, f"{namespace}/{name}")
        commit = store.resolve_revision(repo, revision)
        entry = commit["tree"].get(path)
        if entry is None:
            raise StoreError(404, "EntryNotFound", f"{path} does not exist on {revision}")
        headers = {"X-Repo-Commit": commit["id"], "Accept-Ranges": "bytes",
                   "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"'}
        if entry["lfs"]:
            headers |= {"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])}
        blob = store.object_path(entry["sha256"])
        start = 0
        ranged = re.fullmatch(r"bytes=(\d+)-", request.headers.get("range", ""))
        if ranged and not head:
            start = min(int(ranged.group(1)), entry["size"])
        headers["Content-Length"] = str(entry["size"] - start)
        if head:
            return Response(status_code=200, headers=headers, media_type="application/octet-stream")

        def chunks():
            with blob.open("rb") as f:
                f.seek(start)
                while piece := f.read(1 << 20):
                    yield piece

        if start:
            headers["Content-Range"] = f"bytes {start}-{entry['size'] - 1}/{entry['size']}"
        return StreamingResponse(chunks(), status_code=206 if start else 200, headers=headers,
                                 media_type="application/octet-stream")

    for prefix, repo_type in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):
        def make(repo_type: str = repo_type):
            def get(namespace: str, name: str, revision: str, path: str, request: Request):
                return resolve_file(repo_type, namespace, name, revision, path, request, head=False)

            def head(namespace: str, name: str, revision: str, path: str, request: Request):
                return resolve_file(repo_type, namespace, name, revision, path, request, head=True)

            return get, head

        get, head = make()
        app.add_api_route(f"{prefix}/{{namespace}}/{{name}}/resolve/{{revision}}/{{path:path}}", get, methods=["GET"])
        app.add_api_route(f"{prefix}/{{namespace}}/{{name}}/resolve/{{revision}}/{{path:path}}", head,
                          methods=["HEAD"])

    # --- dev tools ------------------------------------------------------------------------------------

    @app.post("/_devhub/webhooks")
    async def add_webhook(request: Request):
        token_of(request, required=True)
        body = await request.json()
        if not str(body.get("url", "")).startswith(("http://", "https://")):
            raise StoreError(400, "BadRequest", "url must be http(s)")
        return hooks.add(body["url"], body.get("secret"), body.get("repos"))

    @app.get("/_devhub/webhooks")
    def list_webhooks(request: Request):
        token_of(request, required=True)
        return hooks.list()

    @app.post("/_devhub/faults")
    async def add_fault(request: Request):
        body = await request.json()
        route = body.get("route", "any")
        if route not in FAULT_ROUTES:
            raise StoreError(400, "BadRequest", f"route must be one of {', '.join(FAULT_ROUTES)}")
        with faults.lock:
            faults.pending[route] = [int(body.get("status", 503)), int(body.get("count", 1))]
        return {"route": route, "pending": faults.pending[route]}

    @app.get("/_devhub/faults")
    def list_faults():
        return {k: v for k, v in faults.pending.items() if v[1] > 0}

    @app.delete("/_devhub/faults")
    def clear_faults():
        with faults.lock:
            faults.pending.clear()
        return {}

    return app


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


def _folder_oid(folder: str, commit_id: str) -> str:
    import hashlib

    return hashlib.sha1(f"{commit_id}:{folder}".encode()).hexdigest()


def _front_matter(text: str) -> tuple[dict | None, str | None]:
    """The YAML block at the top of a README, and an error message when it does not parse."""
    if not text.startswith("---"):
        return None, None
    end = text.find("\n---", 3)
    if end < 0:
        return None, "YAML front matter is not closed with ---"
    try:
        meta = yaml.safe_load(text[3:end])
    except yaml.YAMLError as e:
        return None, f"YAML front matter does not parse: {e}"
    if meta is not None and not isinstance(meta, dict):
        return None, "YAML front matter must be a mapping"
    return meta or {}, None


def _metadata_errors(meta: dict) -> list[str]:
    """The subset of the Hub's model card metadata validation that matters for our cards."""
    errors = []
    license_ = meta.get("license")
    if license_ is not None and (not isinstance(license_, str) or license_ not in KNOWN_LICENSES):
        errors.append(f'"license" must be a known license id or "other", got {license_!r}')
    tags = meta.get("tags")
    if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, str) for t in tags)):
        errors.append('"tags" must be a list of strings')
    base = meta.get("base_model")
    if base is not None:
        bases = base if isinstance(base, list) else [base]
        if not all(isinstance(b, str) and _REPO_ID.match(b) for b in bases):
            errors.append(f'"base_model" must be a repo id or a list of repo ids, got {base!r}')
    relation = meta.get("base_model_relation")
    if relation is not None and relation not in RELATIONS:
        errors.append(f'"base_model_relation" must be one of {sorted(RELATIONS)}, got {relation!r}')
    if relation is not None and base is None:
        errors.append('"base_model_relation" needs "base_model"')
    tag = meta.get("pipeline_tag")
    if tag is not None and tag not in PIPELINE_TAGS:
        errors.append(f'"pipeline_tag" {tag!r} is not a known task')
    return errors
