"""The HTTP API: create, read, list, cancel and retry jobs; health and readiness.  Writes need a bearer token."""

from __future__ import annotations

import hmac

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from service.db import session_scope
from service.errors import (
    CoreMLPublishError,
    JobError,
    JobNotFoundError,
    NotWatchedError,
    OptionsError,
    SourceError,
    SourceNotFoundError,
)
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
        status = 404 if isinstance(exc, (SourceNotFoundError, JobNotFoundError, NotWatchedError)) else 409 if isinstance(exc, JobError) \
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

    @app.post("/webhooks/hub")
    async def hub_webhook(request: Request) -> JSONResponse:
        from service.webhooks import MAX_BODY, check_secret, handle_hub_webhook

        secret = settings.webhook_secret.get_secret_value() if settings.webhook_secret else None
        refused = check_secret(secret, request.headers.get("x-webhook-secret"))
        if refused is not None:
            return JSONResponse(refused.body, status_code=refused.status)
        if int(request.headers.get("content-length") or 0) > MAX_BODY:
            return JSONResponse({"error": f"payload larger than {MAX_BODY} bytes"}, status_code=413)
        body = b""
        async for chunk in request.stream():
            body += chunk
            if len(body) > MAX_BODY:
                return JSONResponse({"error": f"payload larger than {MAX_BODY} bytes"}, status_code=413)
        outcome = handle_hub_webhook(body, settings=settings)
        return JSONResponse(outcome.body, status_code=outcome.status)

    @app.get("/watches")
    def get_watches() -> list[dict]:
        from service.watch import watch_rows

        with session_scope(settings.database_url) as session:
            return watch_rows(session)

    @app.post("/watches", status_code=201, dependencies=[Depends(require_token)])
    def post_watch(body: JobRequest) -> dict:
        from service.watch import add_watch

        options = JobOptions(namespace=body.namespace or settings.default_namespace or "",
                             attentions=tuple(body.attentions), bits=body.bits, private=body.private,
                             packages_only=body.packages_only)
        with session_scope(settings.database_url) as session:
            watch = add_watch(session, repo_id=body.repo, options=options)
            return {"repo_id": watch.repo_id, "state": watch.state}

    @app.delete("/watches/{repo_id:path}", dependencies=[Depends(require_token)])
    def delete_watch(repo_id: str) -> dict:
        from service.watch import remove_watch

        with session_scope(settings.database_url) as session:
            remove_watch(session, repo_id)
        return {"removed": repo_id}

    @app.post("/watches/{repo_id:path}/pause", dependencies=[Depends(require_token)])
    def pause_watch(repo_id: str) -> dict:
        from service.watch import set_paused

        with session_scope(settings.database_url) as session:
            return {"repo_id": repo_id, "state": set_paused(session, repo_id, True).state}

    @app.post("/watches/{repo_id:path}/resume", dependencies=[Depends(require_token)])
    def resume_watch(repo_id: str) -> dict:
        from service.watch import set_paused

        with session_scope(settings.database_url) as session:
            return {"repo_id": repo_id, "state": set_paused(session, repo_id, False).state}

    @app.post("/sweep", dependencies=[Depends(require_token)])
    def post_sweep() -> list[dict]:
        from dataclasses import asdict

        from service.watch import sweep

        return [asdict(r) for r in sweep(settings=settings)]

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
