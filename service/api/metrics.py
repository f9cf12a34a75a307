"""``/metrics``: the service's Prometheus metrics (see :mod:`service.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Response

from service.api.deps import require_reader, settings
from service.metrics import CONTENT_TYPE, render
from service.settings import Settings

router = APIRouter(tags=["health"])


@router.get("/metrics", response_class=Response, dependencies=[Depends(require_reader)],
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format"}})
def metrics(config: Settings = Depends(settings)) -> Response:
    """Jobs by state, stage durations, validation failures, Hub retries and queue depths."""
    return Response(render(config), media_type=CONTENT_TYPE)
