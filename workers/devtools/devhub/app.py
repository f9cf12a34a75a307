"""The dev Hub's HTTP API: the Hub routes ``huggingface_hub`` 2.x calls, served from a :class:`Store`.

Besides the Hub's own routes it has ``/_devhub/faults`` to make the next N requests of a kind fail
(for retry tests), ``/_devhub/requests`` counting the requests it answered (by method and path; DELETE
starts again) and ``/_devhub/lfs/...`` where LFS uploads land.

The routes live in one router per concern (:mod:`.repos`, :mod:`.refs`, :mod:`.commits`, :mod:`.files`,
:mod:`.admin`); their state is one :class:`~.common.Hub` per app, in ``app.state.hub``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from workers.devtools.devhub import admin, commits, files, refs, repos
from workers.devtools.devhub.common import Faults, Hub, Webhooks, error, route_kind
from workers.devtools.devhub.store import Store, StoreError

__all__ = ["Faults", "Webhooks", "create_app"]

# Starlette tries routes in the order they were added, and some patterns overlap: "/api/whoami-v2" also
# matches "/api/{kind}"; "/{namespace}/{name}/resolve/{revision}/{path:path}" also matches the refs,
# commits, revision and tree URLs under "/api/..." (and the dataset and space resolve URLs). So repos
# and refs come before files, and within each router the specific route comes first.
ROUTERS = (repos.router, refs.router, commits.router, files.router, admin.router)


def create_app(data: Path, *, page_size: int = 1000) -> FastAPI:
    """The dev Hub as an ASGI app over the data folder ``data``."""
    hub = Hub(store=Store(data), faults=Faults(), webhooks=Webhooks(data / "webhooks.json"), page_size=page_size)
    app = FastAPI(title="coreml-publisher dev Hub", docs_url="/_devhub/docs", openapi_url="/_devhub/openapi.json")
    app.state.hub = hub
    app.state.store, app.state.faults, app.state.webhooks = hub.store, hub.faults, hub.webhooks

    @app.exception_handler(StoreError)
    async def store_error(request: Request, exc: StoreError) -> JSONResponse:
        return error(exc.status, exc.code, exc.message)

    @app.middleware("http")
    async def inject_faults(request: Request, call_next):
        if not request.url.path.startswith("/_devhub/"):
            request.app.state.hub.requests.add(request.method, request.url.path)
        if not request.url.path.startswith("/_devhub/faults"):
            fault = request.app.state.hub.faults.take(route_kind(request.method, request.url.path))
            if fault is not None:
                status, delay = fault
                if delay:
                    await asyncio.sleep(delay)  # a Hub that stalls (a client may die waiting)
                return error(status, "InjectedFault", f"injected fault {status}")
        return await call_next(request)

    for router in ROUTERS:
        app.include_router(router)
    return app
