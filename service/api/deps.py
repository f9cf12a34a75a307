"""What the API's handlers depend on: the settings, a database session, the bearer-token checks of writes and
reads.

The settings and token checks are ``async``: they never block, so FastAPI runs them on the event loop
instead of sending each to the thread pool that the handlers and the database session need.
"""

from __future__ import annotations

from typing import Iterator

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from service.api import signin
from service.db import session_scope
from service.settings import Settings


async def settings(request: Request) -> Settings:
    """The settings the app was created with."""
    return request.app.state.settings


def session(config: Settings = Depends(settings)) -> Iterator[Session]:
    """One session per request, committed when the handler returns normally, rolled back when it raises."""
    with session_scope(config.database_url) as db:
        yield db


async def require_token(request: Request, config: Settings = Depends(settings)) -> None:
    """Writes need ``Authorization: Bearer <COREML_PUBLISH_API_TOKEN>`` (compared in constant time)."""
    expected = config.api_token.get_secret_value() if config.api_token else None
    if expected is None:
        return  # only allowed on loopback: Settings.check_api refuses otherwise
    if not signin.bearer_matches(request, expected):
        raise HTTPException(401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"})


async def require_reader(request: Request) -> None:
    """Reads (jobs, watches, metrics) follow the status page's rule: open without a token or with
    ``COREML_PUBLISH_PUBLIC_STATUS``, else the bearer token (or the page's sign-in cookie)."""
    if not signin.may_read(request):
        raise HTTPException(401, "a valid bearer token is required to read this service's jobs and watches",
                            headers={"WWW-Authenticate": "Bearer"})
