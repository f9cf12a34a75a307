"""Files: the tree listing (paginated), paths-info, and resolve (download, HEAD, byte ranges)."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlencode

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from workers.devtools.devhub.common import Hub, HubDep, entry_json, folder_oid, kind_type
from workers.devtools.devhub.store import StoreError

router = APIRouter()


@router.get("/api/{kind}/{namespace}/{name}/tree/{revision}")
@router.get("/api/{kind}/{namespace}/{name}/tree/{revision}/{path:path}")
def tree(kind: str, namespace: str, name: str, revision: str, request: Request, hub: HubDep, path: str = "",
         recursive: bool = False, cursor: int = 0, limit: int | None = None):
    repo = hub.readable_repo(request, kind_type(kind), f"{namespace}/{name}")
    commit = hub.store.resolve_revision(repo, revision)
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
                                            "oid": folder_oid(folder, commit["id"])})
            if not recursive:
                break
        if recursive or len(rest) == 1:
            entries[file] = entry_json(file, entry)
    items = [entries[k] for k in sorted(entries)]
    size = limit or hub.page_size
    page = items[cursor:cursor + size]
    headers = {}
    if cursor + size < len(items):
        query = dict(request.query_params) | {"cursor": str(cursor + size)}
        headers["Link"] = f'<{str(request.url).split("?")[0]}?{urlencode(query)}>; rel="next"'
    return JSONResponse(page, headers=headers)


@router.post("/api/{kind}/{namespace}/{name}/paths-info/{revision:path}")
async def paths_info(kind: str, namespace: str, name: str, revision: str, request: Request, hub: HubDep):
    repo = hub.readable_repo(request, kind_type(kind), f"{namespace}/{name}")
    commit = hub.store.resolve_revision(repo, revision)
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
            out.append({"type": "directory", "path": p, "size": 0, "oid": folder_oid(p, commit["id"])})
    return out


def resolve_file(hub: Hub, repo_type: str, namespace: str, name: str, revision: str, path: str, request: Request,
                 head: bool) -> Response:
    repo = hub.readable_repo(request, repo_type, f"{namespace}/{name}")
    commit = hub.store.resolve_revision(repo, revision)
    entry = commit["tree"].get(path)
    if entry is None:
        raise StoreError(404, "EntryNotFound", f"{path} does not exist on {revision}")
    headers = {"X-Repo-Commit": commit["id"], "Accept-Ranges": "bytes",
               "ETag": f'"{entry["sha256"] if entry["lfs"] else entry["oid"]}"'}
    if entry["lfs"]:
        headers |= {"X-Linked-Etag": f'"{entry["sha256"]}"', "X-Linked-Size": str(entry["size"])}
    blob = hub.store.object_path(entry["sha256"])
    start, end = 0, entry["size"]
    ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", request.headers.get("range", ""))
    if ranged and not head:
        start = min(int(ranged.group(1)), entry["size"])
        if ranged.group(2):  # an inclusive end, as HTTP says (a safetensors header read asks for one)
            end = max(start, min(int(ranged.group(2)) + 1, entry["size"]))
    headers["Content-Length"] = str(end - start)
    if head:
        return Response(status_code=200, headers=headers, media_type="application/octet-stream")

    def chunks():
        with blob.open("rb") as f:
            f.seek(start)
            left = end - start
            while left > 0 and (piece := f.read(min(1 << 20, left))):
                left -= len(piece)
                yield piece

    partial = start > 0 or end < entry["size"]
    if partial:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{entry['size']}"
    return StreamingResponse(chunks(), status_code=206 if partial else 200, headers=headers,
                             media_type="application/octet-stream")


def _resolve_routes(repo_type: str):
    def get(namespace: str, name: str, revision: str, path: str, request: Request, hub: HubDep):
        return resolve_file(hub, repo_type, namespace, name, revision, path, request, head=False)

    def head(namespace: str, name: str, revision: str, path: str, request: Request, hub: HubDep):
        return resolve_file(hub, repo_type, namespace, name, revision, path, request, head=True)

    return get, head


# datasets and spaces before models: "/{namespace}/{name}/resolve/..." would also match their URLs
for _prefix, _repo_type in (("/datasets", "dataset"), ("/spaces", "space"), ("", "model")):
    _get, _head = _resolve_routes(_repo_type)
    _url = f"{_prefix}/{{namespace}}/{{name}}/resolve/{{revision}}/{{path:path}}"
    router.add_api_route(_url, _get, methods=["GET"])
    router.add_api_route(_url, _head, methods=["HEAD"])
