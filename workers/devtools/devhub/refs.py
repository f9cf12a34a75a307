"""Refs and history: list refs, list commits, create and delete tags, create branches."""

from __future__ import annotations

import json

from fastapi import APIRouter, Request

from workers.devtools.devhub.common import HubDep, kind_type

router = APIRouter()


@router.get("/api/{kind}/{namespace}/{name}/refs")
def refs(kind: str, namespace: str, name: str, request: Request, hub: HubDep):
    repo = hub.readable_repo(request, kind_type(kind), f"{namespace}/{name}")
    return {
        "branches": [{"name": b, "ref": f"refs/heads/{b}", "targetCommit": c} for b, c in repo["branches"].items()],
        "tags": [{"name": t, "ref": f"refs/tags/{t}", "targetCommit": c} for t, c in repo["tags"].items()],
        "converts": [],
    }


@router.get("/api/{kind}/{namespace}/{name}/commits/{revision:path}")
def commits(kind: str, namespace: str, name: str, revision: str, request: Request, hub: HubDep):
    repo = hub.readable_repo(request, kind_type(kind), f"{namespace}/{name}")
    return [{"id": c["id"], "title": c["title"], "message": c["message"], "date": c["date"],
             "authors": [{"user": c["author"]}]} for c in hub.store.history(hub.store.resolve_revision(repo, revision))]


@router.post("/api/{kind}/{namespace}/{name}/tag/{revision:path}")
async def create_tag(kind: str, namespace: str, name: str, revision: str, request: Request, hub: HubDep):
    repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
    repo = hub.writable_repo(request, repo_type, repo_id)
    body = await request.json()
    hub.store.set_ref(repo_type, repo_id, "tag", body["tag"], hub.store.resolve_revision(repo, revision)["id"])
    return {}


@router.delete("/api/{kind}/{namespace}/{name}/tag/{tag:path}")
def delete_tag(kind: str, namespace: str, name: str, tag: str, request: Request, hub: HubDep):
    repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
    hub.writable_repo(request, repo_type, repo_id)
    hub.store.set_ref(repo_type, repo_id, "tag", tag, None)
    return {}


@router.post("/api/{kind}/{namespace}/{name}/branch/{branch:path}")
async def create_branch(kind: str, namespace: str, name: str, branch: str, request: Request, hub: HubDep):
    repo_type, repo_id = kind_type(kind), f"{namespace}/{name}"
    repo = hub.writable_repo(request, repo_type, repo_id)
    raw = await request.body()
    start = (json.loads(raw) if raw else {}).get("startingPoint") or "main"
    hub.store.set_ref(repo_type, repo_id, "branch", branch, hub.store.resolve_revision(repo, start)["id"])
    return {}
