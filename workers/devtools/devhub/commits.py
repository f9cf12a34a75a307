"""Uploads and commits: preupload, the LFS batch API, LFS uploads and verification, and the commit endpoint."""

from __future__ import annotations

import base64
import json
import secrets

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from workers.devtools.devhub.common import Hub, HubDep, kind_type
from workers.devtools.devhub.store import StoreError, is_lfs

router = APIRouter()


@router.post("/api/{kind}/{namespace}/{name}/preupload/{revision:path}")
async def preupload(kind: str, namespace: str, name: str, revision: str, request: Request, hub: HubDep):
    repo = hub.writable_repo(request, kind_type(kind), f"{namespace}/{name}")
    commit = hub.store.resolve_revision(repo, revision)
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


async def lfs_batch(hub: Hub, namespace: str, name: str, repo_type: str, request: Request):
    hub.writable_repo(request, repo_type, f"{namespace}/{name}")
    body = await request.json()
    base = str(request.base_url).rstrip("/")
    objects = []
    for obj in body.get("objects", []):
        oid, size = obj["oid"], int(obj["size"])
        if hub.store.has_object(oid):
            objects.append({"oid": oid, "size": size})
            continue
        hub.uploads[oid] = size
        objects.append({"oid": oid, "size": size, "authenticated": True, "actions": {
            "upload": {"href": f"{base}/_devhub/lfs/{oid}?ticket={secrets.token_hex(8)}", "header": {}},
            "verify": {"href": f"{base}/_devhub/lfs/{oid}/verify", "header": {}}}})
    return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                        media_type="application/vnd.git-lfs+json")


# models first: a model's batch URL has one segment fewer than a dataset's or a space's
@router.post("/{namespace}/{name}.git/info/lfs/objects/batch")
async def lfs_batch_models(namespace: str, name: str, request: Request, hub: HubDep):
    return await lfs_batch(hub, namespace, name, "model", request)


@router.post("/{kind}/{namespace}/{name}.git/info/lfs/objects/batch")
async def lfs_batch_other(kind: str, namespace: str, name: str, request: Request, hub: HubDep):
    return await lfs_batch(hub, namespace, name, kind_type(kind), request)


@router.put("/_devhub/lfs/{oid}")
async def lfs_upload(oid: str, request: Request, hub: HubDep):
    if oid not in hub.uploads and not hub.store.has_object(oid):
        raise StoreError(403, "Forbidden", "no upload was granted for this object")
    chunks = []
    async for chunk in request.stream():
        chunks.append(chunk)
    _, size = hub.store.put_object_stream(iter(chunks), expected=oid)
    expected = hub.uploads.pop(oid, size)  # a second upload of the same content is harmless
    if size != expected:
        raise StoreError(400, "BadRequest", "size does not match the batch request")
    return Response(status_code=200)


@router.post("/_devhub/lfs/{oid}/verify")
async def lfs_verify(oid: str, request: Request, hub: HubDep):
    body = await request.json()
    if not hub.store.has_object(oid) or hub.store.object_path(oid).stat().st_size != int(body.get("size", -1)):
        raise StoreError(404, "EntryNotFound", f"object {oid} not found")
    return {}


@router.post("/api/{kind}/{namespace}/{name}/commit/{revision:path}")
async def commit(kind: str, namespace: str, name: str, revision: str, request: Request, hub: HubDep):
    store = hub.store
    repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
    hub.writable_repo(request, repo_type, repo_id)
    token = hub.token_of(request, required=True)
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
    hub.webhooks.fire(repo_type, repo_id, private=repo["private"], ref=f"refs/heads/{revision}", old=old_head,
                      new=new["id"])
    base = str(request.base_url).rstrip("/")
    return {"commitUrl": f"{base}/{repo_id}/commit/{new['id']}", "commitOid": new["id"],
            "commitMessage": header.get("summary", ""), "pullRequestUrl": None}
