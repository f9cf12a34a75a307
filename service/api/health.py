"""``/health`` (the process answers) and ``/ready`` (its database and broker answer)."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from service.api import schemas
from service.api.deps import settings
from service.db import session_scope
from service.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/health", response_model=schemas.Health)
async def health() -> dict:
    """The process answers: from the event loop, never waiting for a thread or the database."""
    return {"status": "ok"}


@router.get("/ready", response_model=schemas.Ready, responses={503: {"model": schemas.Ready}})
def ready(config: Settings = Depends(settings)) -> JSONResponse:
    """200 when the database and the broker answer, 503 (saying which does not) otherwise."""
    checks = {}
    try:
        from sqlalchemy import text

        with session_scope(config.database_url) as db:
            db.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as e:  # readiness reports, it does not raise
        checks["database"] = f"unreachable: {e.__class__.__name__}"
    try:
        import redis

        redis.Redis.from_url(config.broker_url, socket_timeout=2).ping()
        checks["broker"] = "ok"
    except Exception as e:  # readiness reports, it does not raise
        checks["broker"] = f"unreachable: {e.__class__.__name__}"
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)
