"""The HTTP API: jobs, watches, Hub webhooks, health, and the status page.  Writes need a bearer token.

One router per resource (``service/api/<resource>.py``), typed request and response models
(``schemas.py``), and the settings, session and token check as dependencies (``deps.py``).
"""

from __future__ import annotations

import asyncio
import logging
import reprlib

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, TimeoutError as PoolTimeoutError

from service.api import docs, front, health, jobs, metrics, status, watches, webhooks
from service.api.shedding import LoadShedder
from service.errors import (
    CoreMLPublishError,
    HubUnavailableError,
    JobError,
    JobNotFoundError,
    NotWatchedError,
    OptionsError,
    ServiceUnavailableError,
    SourceError,
    SourceNotFoundError,
)
from service.settings import Settings, get_settings

log = logging.getLogger(__name__)
RETRY_AFTER = 30  # seconds a client should wait after a 503
MAX_BODY = 64 * 1024  # bytes of a request body (a job request is a few hundred); the Hub webhook has its own cap
MAX_DRAIN = 64 * 2**20  # bytes of a refused body read to its end before the 413 (beyond: the connection is cut)
DRAIN_SECONDS = 10.0  # and for at most this long
MAX_ECHO = 100  # characters of a refused input repeated in an error
_ECHO = reprlib.Repr()  # a bounded repr: nested or long inputs are cut, whatever their size
_ECHO.maxlevel, _ECHO.maxdict, _ECHO.maxlist, _ECHO.maxtuple, _ECHO.maxset = 3, 4, 4, 4, 4
_ECHO.maxstring, _ECHO.maxother, _ECHO.maxlong = MAX_ECHO, MAX_ECHO, 40


def error_status(error: CoreMLPublishError) -> int:
    """404 for what does not exist, 409 for a job or watch in the wrong state, 422 for bad input, 503 for
    infrastructure (job database, queue, Hub) that does not answer right now, else 500."""
    if isinstance(error, (ServiceUnavailableError, HubUnavailableError)):
        return 503
    if isinstance(error, (SourceNotFoundError, JobNotFoundError, NotWatchedError)):
        return 404
    if isinstance(error, JobError):
        return 409
    if isinstance(error, (OptionsError, SourceError)):
        return 422
    return 500


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def echo(value: object, limit: int = MAX_ECHO) -> str:
    """A refused input as a short one-line text: never the whole of a huge value."""
    text = value if isinstance(value, str) else _ECHO.repr(value)
    text = _one_line(text)
    return text if len(text) <= limit else text[:limit] + "…"


def validation_message(error: RequestValidationError) -> str:
    """FastAPI's list of request errors as one line: ``body.bits: Input should be a valid integer (got 'six'); ...``."""
    parts = []
    for problem in error.errors()[:5]:
        where = ".".join(str(p) for p in problem.get("loc", ()) if p != "body" or len(problem["loc"]) == 1)
        message = str(problem.get("msg", "invalid"))
        if "input" in problem and problem.get("type") not in ("missing", "json_invalid") \
                and problem.get("type") != "value_error":  # our own value errors show the value already
            message += f" (got {echo(problem['input'], 40)})"
        parts.append(f"{where}: {message}" if where else message)
    return _one_line("invalid request: " + ("; ".join(parts) or "malformed"))[:500]


def brief_errors(error: RequestValidationError) -> list[dict]:
    """The request errors for clients that read them, each input shortened to MAX_ECHO characters."""
    brief = []
    for problem in error.errors()[:20]:
        item = {"loc": [str(p) for p in problem.get("loc", ())], "msg": _one_line(problem.get("msg", ""))[:300],
                "type": str(problem.get("type", ""))}
        if "input" in problem and problem.get("type") != "missing":
            item["input"] = echo(problem["input"])
        brief.append(item)
    return brief


class BodyLimit:
    """ASGI middleware refusing request bodies over ``limit`` bytes with 413, before anything parses them.

    The body is read here (up to the limit, whatever Content-Length says) and handed on whole; the Hub
    webhook (``/webhooks/``) reads its body itself, with its own cap.  A refused body is read to its end
    (up to ``drain`` bytes, for ``drain_seconds``) before the 413 is sent: a client still sending when the
    server closes the connection sees a reset instead of the answer.  A client that asked
    ``Expect: 100-continue`` has sent nothing yet and gets the 413 at once.
    """

    def __init__(self, app, limit: int = MAX_BODY, exempt: tuple[str, ...] = ("/webhooks/",),
                 drain: int = MAX_DRAIN, drain_seconds: float = DRAIN_SECONDS) -> None:
        self.app, self.limit, self.exempt = app, limit, exempt
        self.drain, self.drain_seconds = drain, drain_seconds

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(self.exempt):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        try:
            length = int(declared) if declared is not None else None
        except ValueError:
            await JSONResponse({"error": "malformed Content-Length", "hint": None}, status_code=400)(
                scope, receive, send)
            return
        if length is not None and length > self.limit:
            sending = headers.get(b"expect", b"").lower() != b"100-continue" and length <= self.drain
            await self._refuse(scope, receive, send, read=0 if sending else None)
            return
        chunks, size, message = [], 0, {"type": "http.request", "body": b"", "more_body": True}
        while message["type"] == "http.request" and message.get("more_body", False):
            message = await receive()
            chunk = message.get("body", b"") if message["type"] == "http.request" else b""
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send, read=size if message.get("more_body") else None)
                return
            chunks.append(chunk)
        first = message if message["type"] != "http.request" else \
            {"type": "http.request", "body": b"".join(chunks), "more_body": False}
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return first
            return await receive()

        await self.app(scope, replay, send)

    async def _drain(self, receive, read: int) -> None:
        """Read and drop the rest of a body, up to ``self.drain`` bytes in all, for at most drain_seconds."""
        async def rest() -> None:
            size = read
            while size <= self.drain:
                message = await receive()
                if message["type"] != "http.request":
                    return
                size += len(message.get("body", b""))
                if not message.get("more_body", False):
                    return

        try:
            await asyncio.wait_for(rest(), self.drain_seconds)
        except asyncio.TimeoutError:
            pass

    async def _refuse(self, scope, receive, send, *, read: int | None) -> None:
        """413; ``read``: bytes of the body read so far when the rest is to be drained first (None: answer now)."""
        if read is not None:
            await self._drain(receive, read)
        response = JSONResponse({"error": f"request body larger than {self.limit} bytes",
                                 "hint": "Send only the request's fields: a job request is a few hundred bytes."},
                                status_code=413, headers={"Connection": "close"})
        await response(scope, receive, send)


def create_api(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(title="coreml-publisher", description="Convert Stable Diffusion models to Core ML and publish them.",
                  docs_url=None, redoc_url=None)  # served by service.api.docs, with local assets
    app.state.settings = settings or get_settings()

    @app.exception_handler(CoreMLPublishError)
    async def expected_error(request: Request, exc: CoreMLPublishError) -> JSONResponse:
        status = error_status(exc)
        headers = {"Retry-After": str(getattr(exc, "retry_after", None) or RETRY_AFTER)} if status == 503 else None
        return JSONResponse({"error": _one_line(exc.message), "hint": exc.hint or None}, status_code=status,
                            headers=headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # FastAPI's own refusals (401, 404 for unknown routes, 405, 400 for unparsable bodies) in the same shape
        # as every other error, keeping FastAPI's "detail" for clients that read it
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        return JSONResponse({"error": _one_line(message), "hint": None, "detail": exc.detail},
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": validation_message(exc), "hint": "See /docs for the request's shape.",
                             "detail": brief_errors(exc)}, status_code=422)

    @app.exception_handler(DBAPIError)
    @app.exception_handler(PoolTimeoutError)
    async def database_error(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, IntegrityError):  # a concurrent change won a race the code did not expect
            return JSONResponse({"error": "the request conflicts with a concurrent change",
                                 "hint": "Read the resource again and retry."}, status_code=409)
        if isinstance(exc, DataError):  # a value the database cannot store
            return JSONResponse({"error": "a value in the request is out of range for the job database",
                                 "hint": "Check numbers and lengths against /docs."}, status_code=422)
        log.warning("job database unavailable for %s %s: %s", request.method, request.url.path,
                    _one_line(str(getattr(exc, "orig", None) or exc))[:300])
        return JSONResponse({"error": f"the job database is unavailable ({exc.__class__.__name__})",
                             "hint": "Try again shortly; the operator should check the database and "
                                     "run `coreml-publish db upgrade`."},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER)})

    app.add_middleware(BodyLimit)
    app.add_middleware(LoadShedder, limit=app.state.settings.api_concurrency, wait=app.state.settings.api_queue_wait)
    for module in (jobs, watches, webhooks, health, metrics, docs, status, front):
        app.include_router(module.router)
    docs.mount_assets(app)
    status.mount(app)
    return app
