"""The HTTP API: jobs, watches, Hub webhooks, health.  Writes need a bearer token.

One router per resource (``service/api/<resource>.py``), typed request and response models
(``schemas.py``), and the settings, session and token check as dependencies (``deps.py``).
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from service.api import health, jobs, watches, webhooks
from service.errors import (
    CoreMLPublishError,
    JobError,
    JobNotFoundError,
    NotWatchedError,
    OptionsError,
    SourceError,
    SourceNotFoundError,
)
from service.settings import Settings, get_settings


def error_status(error: CoreMLPublishError) -> int:
    """404 for what does not exist, 409 for a job or watch in the wrong state, 422 for bad input, else 500."""
    if isinstance(error, (SourceNotFoundError, JobNotFoundError, NotWatchedError)):
        return 404
    if isinstance(error, JobError):
        return 409
    if isinstance(error, (OptionsError, SourceError)):
        return 422
    return 500


def create_api(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="coreml-publisher", description="Convert Stable Diffusion models to Core ML and publish them.")
    app.state.settings = settings or get_settings()

    @app.exception_handler(CoreMLPublishError)
    async def expected_error(request: Request, exc: CoreMLPublishError) -> JSONResponse:
        return JSONResponse({"error": exc.message, "hint": exc.hint}, status_code=error_status(exc))

    for module in (jobs, watches, webhooks, health):
        app.include_router(module.router)
    return app
