"""Identity and repos: whoami, create, delete, list, info, and the model card metadata check."""

from __future__ import annotations

import re

import yaml
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from workers.devtools.devhub.common import HubDep, kind_type
from workers.devtools.devhub.store import REPO_TYPES, Store, StoreError, lfs_pointer, split_repo_id

KNOWN_LICENSES = {
    "apache-2.0", "mit", "openrail", "openrail++", "creativeml-openrail-m", "bigscience-openrail-m", "other",
    "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0", "cc-by-nc-sa-4.0", "cc0-1.0", "bsd-3-clause", "gpl-3.0",
    "llama2", "llama3", "gemma", "unknown", "afl-3.0", "artistic-2.0", "bsl-1.0", "lgpl-3.0", "mpl-2.0",
}
RELATIONS = {"adapter", "merge", "quantized", "finetune"}
PIPELINE_TAGS = {"text-to-image", "image-to-image", "text-generation", "image-classification",
                 "feature-extraction", "unconditional-image-generation", "text-to-video", "other"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")

router = APIRouter()


@router.get("/api/whoami-v2")
def whoami(request: Request, hub: HubDep):
    token = hub.token_of(request, required=True)
    role = "write" if token.write else "read"
    return {"type": "user", "name": token.user, "fullname": token.user,
            "orgs": [{"name": o, "type": "org", "roleInOrg": role} for o in token.orgs],
            "auth": {"type": "access_token", "accessToken": {"displayName": "devhub", "role": role}}}


@router.post("/api/repos/create")
async def create_repo(request: Request, hub: HubDep):
    body = await request.json()
    token = hub.token_of(request, required=True)
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
        hub.store.create_repo(repo_type, repo_id, private=private, author=token.user)
    except StoreError as e:
        if e.status != 409:
            raise
        # the Hub answers 409 with the repo's url, which the client reads when exist_ok=True
        return JSONResponse({"error": e.message, "url": url}, status_code=409,
                            headers={"X-Error-Code": e.code, "X-Error-Message": e.message})
    return {"url": url, "name": repo_id, "id": repo_id}


@router.delete("/api/repos/delete")
async def delete_repo(request: Request, hub: HubDep):
    body = await request.json()
    token = hub.token_of(request, required=True)
    namespace = body.get("organization") or token.user
    repo_id = f"{namespace}/{body.get('name', '')}"
    repo_type = body.get("type") or "model"
    hub.writable_repo(request, repo_type, repo_id)
    hub.store.delete_repo(repo_type, repo_id)
    return {}


@router.get("/api/{kind}")
def list_repos(kind: str, request: Request, hub: HubDep, author: str | None = None, search: str | None = None,
               limit: int | None = None):
    repo_type = kind_type(kind)
    token = hub.token_of(request)
    out = []
    for repo_id, repo in hub.store.list_repos(repo_type):
        namespace = repo_id.split("/")[0]
        if repo["private"] and (token is None or not token.may_read(namespace)):
            continue
        if (author and namespace != author) or (search and search.lower() not in repo_id.lower()):
            continue
        commit = hub.store.commit(repo["branches"]["main"])
        out.append({"_id": repo_id, "id": repo_id, "modelId": repo_id, "private": repo["private"],
                    "sha": commit["id"], "lastModified": commit["date"], "createdAt": repo["created"]})
    return out[:limit] if limit else out


@router.get("/api/{kind}/{namespace}/{name}")
@router.get("/api/{kind}/{namespace}/{name}/revision/{revision:path}")
def repo_info(kind: str, namespace: str, name: str, request: Request, hub: HubDep, revision: str = "main"):
    repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
    repo = hub.readable_repo(request, repo_type, repo_id)
    return info_json(hub.store, repo_id, repo, hub.store.resolve_revision(repo, revision))


@router.post("/api/validate-yaml")
async def validate_yaml(request: Request):
    body = await request.json()
    meta, error = front_matter(body.get("content", ""))
    errors = [error] if error else metadata_errors(meta or {})
    if errors:
        return JSONResponse({"errors": [{"message": e} for e in errors], "warnings": []}, status_code=400)
    return {"errors": [], "warnings": []}


def info_json(store: Store, repo_id: str, repo: dict, commit: dict) -> dict:
    """A repo at a commit as the Hub's repo info endpoint describes it."""
    card = card_data(store, commit)
    return {
        "_id": repo_id, "id": repo_id, "modelId": repo_id, "author": repo_id.split("/")[0],
        "sha": commit["id"], "private": repo["private"], "disabled": False, "gated": False,
        "downloads": 0, "likes": 0, "lastModified": commit["date"], "createdAt": repo["created"],
        "tags": (card or {}).get("tags", []) or [],
        "cardData": card,
        "siblings": [{"rfilename": p, "size": e["size"], "blobId": e["oid"],
                      **({"lfs": {"sha256": e["sha256"], "size": e["size"],
                                  "pointerSize": len(lfs_pointer(e["sha256"], e["size"]))}} if e["lfs"] else {})}
                     for p, e in sorted(commit["tree"].items())],
    }


def card_data(store: Store, commit: dict) -> dict | None:
    """The metadata of the README at a commit, or None."""
    entry = commit["tree"].get("README.md")
    if entry is None:
        return None
    text = store.object_path(entry["sha256"]).read_text(errors="replace")
    meta, _ = front_matter(text)
    return meta if isinstance(meta, dict) else None


def front_matter(text: str) -> tuple[dict | None, str | None]:
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


def metadata_errors(meta: dict) -> list[str]:
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
