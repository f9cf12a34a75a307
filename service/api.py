"""The HTTP API: create, read, list, cancel and retry jobs; health and readiness.  Writes need a bearer token."""

from __future__ import annotations

import hmac

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.db import session_scope
from service.errors import CoreMLPublishError, JobError, JobNotFoundError, OptionsError, SourceError, SourceNotFoundError
from service.jobs import JobOptions, cancel_job, create_job, get_job, job_summary, list_jobs, requeue, retry_job
from service.models import Trigger
from service.settings import Settings, get_settings


class JobRequest(BaseModel):
    """A job to submit."""

    repo: str = Field(..., description="Hub repo id of a Stable Diffusion 1.x/2.x diffusers pipeline")
    revision: str | None = Field(None, description="Branch, tag or commit; pinned to its sha")
    namespace: str | None = Field(None, description="Where to publish (default: the service's)")
    attentions: list[str] = Field(["original", "split_einsum_v2"])
    bits: int | None = Field(6, description="Palettization bits, or null for float16 only")
    private: bool = False
    packages_only: bool = False


def create_api(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(title="coreml-publisher", description="Convert Stable Diffusion models to Core ML and publish them.")

    def require_token(request: Request) -> None:
        expected = settings.api_token.get_secret_value() if settings.api_token else None
        if expected is None:
            return  # only allowed on loopback: Settings.check_api refuses otherwise
        header = request.headers.get("authorization", "")
        given = header[7:] if header.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(given.encode(), expected.encode()):
            raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})

    @app.exception_handler(CoreMLPublishError)
    async def expected_error(request: Request, exc: CoreMLPublishError) -> JSONResponse:
        status = 404 if isinstance(exc, (SourceNotFoundError, JobNotFoundError)) else 409 if isinstance(exc, JobError) \
            else 422 if isinstance(exc, (OptionsError, SourceError)) else 500
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=status)

    @app.post("/jobs", status_code=201, dependencies=[Depends(require_token)])
    def post_job(body: JobRequest) -> JSONResponse:
        options = JobOptions(namespace=body.namespace or settings.default_namespace or "",
                             attentions=tuple(body.attentions), bits=body.bits, private=body.private,
                             packages_only=body.packages_only)
        submitted = create_job(source_repo=body.repo, options=options, revision=body.revision, trigger=Trigger.API,
                               settings=settings)
        with session_scope(settings.database_url) as session:
            data = job_summary(get_job(session, submitted.job.id))
        return JSONResponse(data | {"created": submitted.created}, status_code=201 if submitted.created else 200)

    @app.get("/jobs")
    def get_jobs(state: str | None = None, limit: int = 50) -> list[dict]:
        with session_scope(settings.database_url) as session:
            return [job_summary(j) for j in list_jobs(session, state=state, limit=min(limit, 500))]

    @app.get("/jobs/{job_id}")
    def get_one(job_id: int) -> dict:
        with session_scope(settings.database_url) as session:
            return job_summary(get_job(session, job_id))

    @app.post("/jobs/{job_id}/cancel", dependencies=[Depends(require_token)])
    def post_cancel(job_id: int) -> dict:
        with session_scope(settings.database_url) as session:
            return job_summary(cancel_job(session, job_id))

    @app.post("/jobs/{job_id}/retry", dependencies=[Depends(require_token)])
    def post_retry(job_id: int) -> dict:
        with session_scope(settings.database_url) as session:
            retry_job(session, job_id)
        requeue(job_id, settings=settings)
        with session_scope(settings.database_url) as session:
            return job_summary(get_job(session, job_id))

    @app.get("/health")
    def health() -> dict:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> JSONResponse:
        checks = {}
        try:
            from sqlalchemy import text

            with session_scope(settings.database_url) as session:
                session.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as e:  # readiness reports, it does not raise
            checks["database"] = f"unreachable: {e.__class__.__name__}"
        try:
            import redis

            redis.Redis.from_url(settings.broker_url, socket_timeout=2).ping()
            checks["broker"] = "ok"
        except Exception as e:  # readiness reports, it does not raise
            checks["broker"] = f"unreachable: {e.__class__.__name__}"
        ok = all(v == "ok" for v in checks.values())
        return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)

    return app
