"""The dev Hub's own routes under ``/_devhub/``: webhooks to fire on commits, injected faults, and the count of
requests answered."""

from __future__ import annotations

from fastapi import APIRouter, Request

from workers.devtools.devhub.common import FAULT_ROUTES, HubDep
from workers.devtools.devhub.store import StoreError

router = APIRouter()


@router.post("/_devhub/webhooks")
async def add_webhook(request: Request, hub: HubDep):
    hub.token_of(request, required=True)
    body = await request.json()
    if not str(body.get("url", "")).startswith(("http://", "https://")):
        raise StoreError(400, "BadRequest", "url must be http(s)")
    return hub.webhooks.add(body["url"], body.get("secret"), body.get("repos"))


@router.get("/_devhub/webhooks")
def list_webhooks(request: Request, hub: HubDep):
    hub.token_of(request, required=True)
    return hub.webhooks.list()


@router.post("/_devhub/faults")
async def add_fault(request: Request, hub: HubDep):
    body = await request.json()
    route = body.get("route", "any")
    if route not in FAULT_ROUTES:
        raise StoreError(400, "BadRequest", f"route must be one of {', '.join(FAULT_ROUTES)}")
    faults = hub.faults
    with faults.lock:
        faults.pending[route] = [int(body.get("status", 503)), int(body.get("count", 1))]
        faults.delays[route] = min(float(body.get("delay", 0)), 600.0)
    return {"route": route, "pending": faults.pending[route]}


@router.get("/_devhub/faults")
def list_faults(hub: HubDep):
    return {k: v for k, v in hub.faults.pending.items() if v[1] > 0}


@router.delete("/_devhub/faults")
def clear_faults(hub: HubDep):
    with hub.faults.lock:
        hub.faults.pending.clear()
    return {}


@router.get("/_devhub/requests")
def list_requests(hub: HubDep):
    """The requests answered so far, by method and path (the dev Hub's own routes left out)."""
    return hub.requests.listing()


@router.delete("/_devhub/requests")
def clear_requests(hub: HubDep):
    hub.requests.clear()
    return {}
