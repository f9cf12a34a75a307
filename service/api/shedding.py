"""Load shedding: the API works on at most ``api_concurrency`` requests at once and answers the rest 503 with
``Retry-After`` once they have waited ``api_queue_wait`` seconds, so a burst is answered, never left to time out.

Starlette runs every synchronous handler and dependency on one pool of 40 threads shared by all requests.
With no bound in front of it, a burst of hundreds of reads queues behind those threads (and behind the
database pool's 15 connections) for as long as the burst lasts, ``/health`` included.  The bound here is
below the thread pool's size, so a request that gets a slot also gets a thread; ``/health`` is exempt and
answers from the event loop.  Written as a plain ASGI middleware because no maintained ASGI package bounds
concurrency with a timed wait and a 503 (Starlette's and uvicorn's ``limit_concurrency`` refuse at once,
and uvicorn's counts connections, not requests in a handler).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)
BUSY_RETRY_AFTER = 2  # seconds: a shed request is worth retrying almost at once
EXEMPT = ("/health",)


class LoadShedder:
    """ASGI middleware: ``limit`` requests in flight; the next wait up to ``wait`` seconds for a slot, then 503."""

    def __init__(self, app: Any, limit: int = 32, wait: float = 5.0, exempt: tuple[str, ...] = EXEMPT) -> None:
        self.app, self.limit, self.wait, self.exempt = app, limit, wait, exempt
        self._slots: asyncio.Semaphore | None = None  # made in the server's event loop, on the first request
        self.shed = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.limit)
        try:
            await asyncio.wait_for(self._slots.acquire(), self.wait)
        except asyncio.TimeoutError:
            self.shed += 1
            if self.shed == 1 or self.shed % 100 == 0:
                log.warning("API busy: %d requests answered 503 so far (limit %d in flight, raise "
                            "COREML_PUBLISH_API_CONCURRENCY or add API processes)", self.shed, self.limit)
            await self._busy(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self._slots.release()

    async def _busy(self, scope, receive, send) -> None:
        response = JSONResponse({"error": f"the API is busy ({self.limit} requests in progress)",
                                 "hint": f"Retry after {BUSY_RETRY_AFTER} s."}, status_code=503,
                                headers={"Retry-After": str(BUSY_RETRY_AFTER)})
        await response(scope, receive, send)
