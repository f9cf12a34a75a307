"""``/webhooks/hub``: Hub pushes to watched repos start jobs (see :mod:`service.webhooks`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import settings
from service.settings import Settings
from service.webhooks import MAX_BODY, check_secret, handle_hub_webhook

router = APIRouter(tags=["webhooks"])


@router.post("/webhooks/hub")
async def hub_webhook(request: Request, config: Settings = Depends(settings)) -> JSONResponse:
    """Authenticated by ``X-Webhook-Secret``; the body is read with a size cap, the Hub and database work runs
    in a worker thread so the event loop keeps serving."""
    secret = config.webhook_secret.get_secret_value() if config.webhook_secret else None
    refused = check_secret(secret, request.headers.get("x-webhook-secret"))
    if refused is not None:
        return JSONResponse(refused.body, status_code=refused.status)
    too_large = JSONResponse({"error": f"payload larger than {MAX_BODY} bytes"}, status_code=413)
    try:
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return too_large
    except ValueError:
        return JSONResponse({"error": "malformed Content-Length"}, status_code=400)
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY:
            return too_large
    outcome = await run_in_threadpool(handle_hub_webhook, body, settings=config)
    return JSONResponse(outcome.body, status_code=outcome.status)
