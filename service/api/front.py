"""The status page as a front door: submit a conversion from the browser (``/ui/submit``, with the Hub searched as
you type through ``/ui/hub-search``), be told where a model is already published before and after submitting,
and a page per published repo (``/ui/repos/{namespace}/{name}``) read from its manifest.

The form is built from the job options' declarations (one field per option a job takes, with its help text), and
what it sends is checked exactly as ``POST /jobs`` checks a request (the same request model, the same one-line
errors).  Submitting follows the rules of the page's other forms: signed in when a token is set, the form token,
same origin, and at most ``SUBMITS_PER_WINDOW`` submissions per address per ``SUBMIT_WINDOW`` seconds.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api import signin
from service.api.deps import session
from service.api.schemas import JobRequest
from service.api.status import render
from service.errors import CoreMLPublishError
from service.jobs import publication_summary
from service.models import PublishedRepo, Trigger
from service.settings import Settings
from workers.declare import JOB
from workers.names import Attention, MAX_REPO_ID, looks_like_repo_id
from workers.options import JobOptions

router = APIRouter(include_in_schema=False)
SUBMITS_PER_WINDOW, SUBMIT_WINDOW = 10, 60.0
SEARCH_RESULTS = 10
SEARCH_SECONDS = 5.0  # a search answered later than this is dropped (the field keeps working without it)
_TRACKED = 1000  # addresses the submission log keeps


@dataclass(frozen=True)
class FormField:
    """One option of the submit form: its input kind, label and help (from the option's declaration)."""

    name: str
    label: str
    help: str
    kind: str  # "choices" (checkboxes), "switch" (a checkbox), "either" (default / yes / no), "list", "text"
    choices: tuple[str, ...] = ()


def form_fields() -> list[FormField]:
    """The submit form's fields, one per option a job takes, in their declared order."""
    hints = JobOptions.types()
    fields = []
    for f, declared in JobOptions.declared(JOB):
        label = (declared.flag or f"--{f.name.replace('_', '-')}").split("/")[0]
        if f.name == "attentions":
            fields.append(FormField(f.name, label, declared.help, "choices", tuple(a.value for a in Attention)))
        elif declared.cli in ("comma", "repeat"):
            fields.append(FormField(f.name, label, declared.help, "list"))
        elif hints[f.name] is bool:
            fields.append(FormField(f.name, label, declared.help, "switch"))
        elif declared.cli == "either":
            fields.append(FormField(f.name, label, declared.help, "either"))
        else:
            fields.append(FormField(f.name, label, declared.help, "text"))
    return fields


def request_values(values: dict[str, list[str]]) -> dict:
    """What a sent form asks for, as a ``POST /jobs`` body: only the fields given (the rest keep their defaults)."""
    body: dict = {}
    for name in ("repo", "revision"):
        text = (values.get(name) or [""])[0].strip()
        if text or name == "repo":
            body[name] = text
    for field in form_fields():
        sent = [v.strip() for v in values.get(field.name, []) if v.strip()]
        if field.kind == "choices":
            if sent:
                body[field.name] = sent
        elif field.kind == "switch":
            body[field.name] = bool(sent)
        elif field.kind == "either":
            if sent and sent[0] in ("true", "false"):
                body[field.name] = sent[0] == "true"
        elif field.kind == "list":
            items = [item.strip() for text in sent for item in text.split(",") if item.strip()]
            if items:
                body[field.name] = items
        elif sent:
            body[field.name] = sent[0]
    return body


def _form_page(request: Request, *, values: dict, message: str | None = None, check: dict | None = None,
               status_code: int = 200) -> HTMLResponse:
    return render(request, "submit.html", {"fields": form_fields(), "values": values, "message": message,
                                           "check": check, "nav": "submit", "max_repo": MAX_REPO_ID},
                  status_code=status_code)


@router.get("/ui/submit", response_class=HTMLResponse)
def submit_form(request: Request, repo: str | None = Query(None, max_length=MAX_REPO_ID)) -> Response:
    """The submit form (``?repo=`` fills the repo id)."""
    if not signin.may_act(request):
        return signin.login_redirect(request)
    return _form_page(request, values={"repo": repo or ""})


@router.post("/ui/submit")
async def submit_from_page(request: Request) -> Response:
    """Check (``action=check``: what a job would convert and where it is already published) or submit a job."""
    from service.submit import check_job, create_job, requested_options

    if not signin.may_act(request):
        return RedirectResponse("/login?next=/ui/submit", status_code=303)
    values = await signin.checked_form_values(request)
    if values is None:
        return render(request, "error.html", {"title": "Refused", "message": "this form did not come from the "
                                              "status page (or the page is too old)", "hint": "Reload the page and "
                                              "try again."}, status_code=403)
    body = request_values(values)
    shown = dict(body)
    checking = (values.get("action") or ["submit"])[0] == "check"
    try:
        job_request = JobRequest(**body)
    except ValidationError as e:  # worded as the API words a request it refuses
        from fastapi.exceptions import RequestValidationError

        from service.api import validation_message

        return _form_page(request, values=shown, message=validation_message(RequestValidationError(e.errors())),
                          status_code=422)
    config: Settings = request.app.state.settings
    if not checking:
        submissions = signin.AddressLimit("page_submissions", SUBMITS_PER_WINDOW, SUBMIT_WINDOW, _TRACKED)
        wait = submissions.wait(request)
        if wait:
            answer = _form_page(request, values=shown, message=f"too many submissions from this address; try again "
                                                               f"in {wait} s", status_code=429)
            answer.headers["Retry-After"] = str(wait)
            return answer
        submissions.note(request)

    def work():
        from service.db import session_scope

        options = requested_options(job_request.option_values(), settings=config)
        if checking:
            with session_scope(config.database_url) as db:
                sha, existing, publications = check_job(db, source_repo=job_request.repo, options=options,
                                                        revision=job_request.revision, settings=config)
                return {"sha": sha, "existing": existing,
                        "publications": [publication_summary(p, config.hub_link()) for p in publications]}
        return create_job(source_repo=job_request.repo, options=options, revision=job_request.revision,
                          trigger=Trigger.PAGE, settings=config)

    try:
        done = await run_in_threadpool(work)
    except CoreMLPublishError as e:
        from service.api import error_status

        return _form_page(request, values=shown, message=f"{e.message}. {e.hint or ''}".strip(),
                          status_code=error_status(e))
    if checking:
        return _form_page(request, values=shown, check=done | {"repo": job_request.repo})
    return RedirectResponse(f"/ui/jobs/{done.job.id}?done={'submitted' if done.created else 'exists'}",
                            status_code=303)


@router.get("/ui/hub-search")
async def hub_search(request: Request, q: str = Query("", max_length=MAX_REPO_ID)) -> JSONResponse:
    """Model repos of the Hub whose id holds ``q`` (at most SEARCH_RESULTS, most downloaded first), for the form's
    suggestions."""
    if not signin.may_act(request):
        return JSONResponse({"error": "sign in to submit", "hint": "POST the API token to /login."}, status_code=401)
    text = q.strip()
    if len(text) < 2:
        return JSONResponse({"models": []}, headers={"Cache-Control": "no-store"})
    config: Settings = request.app.state.settings

    def search() -> list[str]:
        from huggingface_hub import HfApi

        api = HfApi(endpoint=config.hub_endpoint)  # the service's Hub token (HF_TOKEN), if any
        return [m.id for m in api.list_models(search=text, limit=SEARCH_RESULTS)]

    try:  # suggestions are worth nothing late: huggingface_hub's own retries would take half a minute
        found = await asyncio.wait_for(run_in_threadpool(search), SEARCH_SECONDS)
    except Exception as e:  # noqa: BLE001 - any failure of the Hub: the form still works without suggestions
        return JSONResponse({"error": f"the Hub's search did not answer ({e.__class__.__name__})", "hint": None},
                            status_code=502)
    return JSONResponse({"models": [m for m in found if looks_like_repo_id(m)][:SEARCH_RESULTS]},
                        headers={"Cache-Control": "no-store"})


@router.get("/ui/repos/{namespace}/{name}", response_class=HTMLResponse)
async def repo_page(request: Request, namespace: str, name: str, db: Session = Depends(session)) -> Response:
    """One published repo, from its manifest: variants, sizes, OS versions, figures, zips and download lines."""
    if not signin.may_read(request):
        return signin.login_redirect(request)
    repo_id = f"{namespace}/{name}"
    if not looks_like_repo_id(repo_id) or len(repo_id) > MAX_REPO_ID:
        return render(request, "error.html", {"title": "Not found", "message": f"{repo_id[:80]!r} is not a repo id",
                                              "hint": None}, status_code=404)
    config: Settings = request.app.state.settings

    from workers.hub.download import published_manifest

    try:
        manifest = await run_in_threadpool(published_manifest, repo_id, endpoint=config.hub_endpoint)
    except CoreMLPublishError as e:
        from service.api import error_status

        return render(request, "error.html", {"title": "Not available", "message": e.message, "hint": e.hint},
                      status_code=error_status(e))
    jobs = list(db.scalars(select(PublishedRepo).where(PublishedRepo.repo_id == repo_id)
                           .order_by(PublishedRepo.id.desc()).limit(20)))
    return render(request, "repo.html", {"repo_id": repo_id, "manifest": manifest, "published": jobs,
                                         "hub": config.hub_link(), "nav": "jobs"})
