"""The status page: server-rendered HTML at ``/`` (jobs), ``/ui/jobs/{id}`` (one job), ``/ui/watches`` and
``/ui/workers``, its stylesheet and script under ``/_assets/status``, and the sign-in form.

Everything works without JavaScript; with it, pages of running jobs refresh their parts from the ``…/live``
JSON routes every two seconds.  Reading needs signing in when an API token is set and
COREML_PUBLISH_PUBLIC_STATUS is not; cancel and retry always need it (see :mod:`service.api.signin`).
"""

from __future__ import annotations

import hmac
import importlib.resources
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api import plots, signin
from service.api.deps import session
from service.db import session_scope
from service.errors import CoreMLPublishError, JobNotFoundError
from service.jobs import aware, cancel_job, get_job, list_jobs
from service.models import Job, JobState, Trigger, utcnow
from service.settings import Settings
from service.metrics import queue_depths
from service.status import celery_workers, hosts_seen, stage_progress, watch_list

ASSETS = "/_assets/status"
LIVE_SECONDS = 2  # how often a page of a running job asks for its parts again
MAX_EVENTS = 1000  # log lines a job page shows (the newest)
JobId = Annotated[int, Path(ge=1, le=2**31 - 1, description="Job number")]
HEADERS = {"Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; "
                                      "script-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
           "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff", "Referrer-Policy": "same-origin",
           "Cache-Control": "no-store"}

_PACKAGE = importlib.resources.files("service.api")
templates = Jinja2Templates(directory=str(_PACKAGE / "templates"))
router = APIRouter(include_in_schema=False)


def mount(app: FastAPI) -> None:
    """Serve the page's stylesheet and script, and draw the key sign-ins are signed with."""
    app.mount(ASSETS, StaticFiles(directory=str(_PACKAGE / "static")), name="status-assets")
    signin.init(app)


def _when(value: datetime | None) -> str:
    return aware(value).strftime("%Y-%m-%d %H:%M:%S") if value else "–"


def _size(value: object) -> str:
    if not isinstance(value, (int, float)):
        return "–"
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return "–"


def _options(options: dict | None) -> str:
    """A job's options in a few words: layouts, bits, packages only, and whatever else was asked."""
    options = options or {}
    words = [", ".join(options.get("attentions") or [])]
    bits = options.get("bits")
    words.append("float16 only" if not bits else f"float16 + {bits}" if isinstance(bits, str) else
                 f"float16 + {bits}-bit")
    for name, label in (("packages_only", "packages only"), ("chunk_unet", "UNet chunks"),
                        ("chunks_only", "chunks only")):
        if options.get(name):
            words.append(label)
    for name in ("components", "deployment_target", "vae", "refiner"):
        if options.get(name):
            value = options[name]
            words.append(f"{name.replace('_', ' ')} {', '.join(value) if isinstance(value, list) else value}")
    if options.get("private") is not None:
        words.append("private" if options["private"] else "public")
    words.append(f"→ {options.get('namespace', '?')}")
    return " · ".join(w for w in words if w)


def _os(target: str | None) -> str:
    """``macOS 14 / iOS 17`` for a deployment target; ``–`` for none or one this version does not know."""
    from workers.convert.targets import SPEC_VERSIONS, os_name

    return os_name(target) if target in SPEC_VERSIONS else "–"


templates.env.filters.update(when=_when, size=_size, duration=plots.duration_text, options=_options,
                             short=lambda sha: (sha or "")[:10] or "–", os=_os)


def render(request: Request, name: str, context: dict, *, status_code: int = 200) -> HTMLResponse:
    """A page, with who is looking (signed in, may act), the form token and the security headers."""
    config: Settings = request.app.state.settings
    common = {"request": request, "assets": ASSETS, "token_required": signin.token_required(request),
              "signed_in": signin.signed_in(request), "may_act": signin.may_act(request),
              "csrf": signin.form_token(request), "public": config.public_status, "live_seconds": LIVE_SECONDS}
    return templates.TemplateResponse(request, name, common | context, status_code=status_code, headers=HEADERS)


def _live(data: dict) -> JSONResponse:
    return JSONResponse(data, headers={"Cache-Control": "no-store"})


def _refused_json() -> JSONResponse:
    return JSONResponse({"error": "sign in to read the status page", "hint": "POST the API token to /login."},
                        status_code=401)


# --- jobs --------------------------------------------------------------------------------------------------

PAGE_SIZE = 50  # jobs per page of the jobs list


@dataclass(frozen=True)
class JobsQuery:
    """The jobs list's filters and page, from its query string (kept in its links and its live URL)."""

    state: str | None = None
    q: str | None = None
    trigger: str | None = None
    page: int = 1

    def link(self, **changes) -> str:
        values = {"state": self.state, "q": self.q, "trigger": self.trigger, "page": self.page} | changes
        wanted = {k: v for k, v in values.items() if v and not (k == "page" and v == 1)}
        return "?" + urlencode(wanted) if wanted else ""


def _jobs_view(request: Request, db: Session, query: JobsQuery) -> dict:
    config: Settings = request.app.state.settings
    counts = dict(db.execute(select(Job.state, func.count()).group_by(Job.state)).all())
    found = list_jobs(db, state=query.state, search=query.q, trigger=query.trigger, limit=PAGE_SIZE + 1,
                      offset=(query.page - 1) * PAGE_SIZE)
    jobs = found[:PAGE_SIZE]
    return {"jobs": jobs, "state": query.state, "states": [s.value for s in JobState], "counts": counts,
            "total": sum(counts.values()), "hub": config.hub_link(), "query": query,
            "triggers": [t.value for t in Trigger], "more": len(found) > PAGE_SIZE,
            "live": query.page == 1 and any(not JobState(j.state).finished for j in jobs)}


def _jobs_query(state: str | None, q: str | None, trigger: str | None, page: int) -> tuple[JobsQuery, str | None]:
    """The filters asked for, or (every job, a message) when one names nothing there is."""
    if state and state not in {s.value for s in JobState}:
        return JobsQuery(), f"there is no job state {state[:20]!r}; showing every job"
    if trigger and trigger not in {t.value for t in Trigger}:
        return JobsQuery(), f"there is no job trigger {trigger[:20]!r}; showing every job"
    return JobsQuery(state or None, (q or "").strip() or None, trigger or None, page), None


@router.get("/", response_class=HTMLResponse)
def jobs_page(request: Request, state: str | None = Query(None, max_length=20),
              q: str | None = Query(None, max_length=200), trigger: str | None = Query(None, max_length=20),
              page: int = Query(1, ge=1, le=100_000), db: Session = Depends(session)) -> Response:
    """Every job, newest first: of one state or trigger, whose repo id holds ``q``; a page at a time."""
    if not signin.may_read(request):
        return signin.login_redirect(request)
    query, notice = _jobs_query(state, q, trigger, page)
    return render(request, "jobs.html", {"v": _jobs_view(request, db, query), "notice": notice, "nav": "jobs"},
                  status_code=422 if notice else 200)


@router.get("/ui/live/jobs")
def jobs_live(request: Request, state: str | None = Query(None, max_length=20),
              q: str | None = Query(None, max_length=200), trigger: str | None = Query(None, max_length=20),
              page: int = Query(1, ge=1, le=100_000), db: Session = Depends(session)) -> JSONResponse:
    """The jobs table's parts, for the page's script."""
    if not signin.may_read(request):
        return _refused_json()
    view = _jobs_view(request, db, _jobs_query(state, q, trigger, page)[0])
    parts = templates.get_template("_jobs.html").module
    return _live({"live": view["live"], "parts": {"jobs-rows": str(parts.rows(view)),
                                                 "state-filter": str(parts.filter(view))}})


# --- one job -----------------------------------------------------------------------------------------------

def _job_view(request: Request, job: Job) -> dict:
    config: Settings = request.app.state.settings
    now = utcnow()
    packages = plots.package_rows(job.stages)
    events = job.events[-MAX_EVENTS:]
    return {"job": job, "hub": config.hub_link(), "finished": JobState(job.state).finished,
            "stages": [{"result": s, "progress": stage_progress(s)} for s in job.stages],
            "timeline": plots.timeline(job.stages, start=job.created_at, now=now),
            "packages": packages, "figures": plots.figures(packages), "mixed_plots": plots.mixed_plots(job.stages),
            "events": events, "events_hidden": len(job.events) - len(events),
            "may_act": signin.may_act(request), "csrf": signin.form_token(request),
            "retryable": job.state in (JobState.FAILED.value, JobState.CANCELLED.value)}


def _job_page(request: Request, job: Job, *, message: str | None = None, status_code: int = 200,
              publications: list | None = None) -> HTMLResponse:
    view = _job_view(request, job)
    return render(request, "job.html", {"v": view, "job": job, "message": message, "nav": "jobs",
                                        "done": request.query_params.get("done"),
                                        "publications": publications or []}, status_code=status_code)


def _publications(db: Session, job: Job) -> list:
    """Where this job's source was published with its options before (told after a submission from the page)."""
    from service.jobs import earlier_publications
    from workers.options import JobOptions

    try:
        options = JobOptions.from_dict(job.options)
    except Exception:  # options of an older version: nothing to compare them with
        return []
    return [p for p in earlier_publications(db, source_repo=job.source_repo, source_sha=job.source_sha or "",
                                            options=options) if p.job_id != job.id]


def _not_found(request: Request, error: CoreMLPublishError) -> HTMLResponse:
    return render(request, "error.html", {"title": "Not found", "message": error.message, "hint": error.hint},
                  status_code=404)


@router.get("/ui/jobs/{job_id}", response_class=HTMLResponse)
def job_page(request: Request, job_id: JobId, db: Session = Depends(session)) -> Response:
    """One job: its timeline, stages, validation figures, published repos and log."""
    if not signin.may_read(request):
        return signin.login_redirect(request)
    try:
        job = get_job(db, job_id)
    except JobNotFoundError as e:
        return _not_found(request, e)
    submitted = request.query_params.get("done") in ("submitted", "exists")
    return _job_page(request, job, publications=_publications(db, job) if submitted else None)


@router.get("/ui/jobs/{job_id}/live")
def job_live(request: Request, job_id: JobId, db: Session = Depends(session)) -> JSONResponse:
    """The job page's parts, for the page's script; ``live`` is false once the job has finished."""
    if not signin.may_read(request):
        return _refused_json()
    try:
        job = get_job(db, job_id)
    except JobNotFoundError as e:
        return JSONResponse({"error": e.message, "hint": e.hint}, status_code=404)
    view = _job_view(request, job)
    parts = templates.get_template("_job.html").module
    return _live({"live": not view["finished"], "state": job.state,
                  "parts": {name.replace("_", "-"): str(getattr(parts, name)(view))
                            for name in ("summary", "actions", "timeline", "stages", "packages", "published", "log")}})


async def _act(request: Request, job_id: int, action) -> Response:
    """Run ``action`` for a form sent from the job page by someone who may act; back to the page after."""
    if not signin.may_act(request):
        return RedirectResponse(f"/login?next=/ui/jobs/{job_id}", status_code=303)
    if await signin.checked_form(request) is None:
        return render(request, "error.html", {"title": "Refused", "message": "this form did not come from the "
                                              "status page (or the page is too old)", "hint": "Reload the page and "
                                              "try again."}, status_code=403)
    config: Settings = request.app.state.settings
    try:
        done = await run_in_threadpool(action, job_id, config)
    except JobNotFoundError as e:
        return _not_found(request, e)
    except CoreMLPublishError as e:
        from service.api import error_status

        with session_scope(config.database_url) as db:
            return _job_page(request, get_job(db, job_id), message=f"{e.message} {e.hint or ''}".strip(),
                             status_code=error_status(e))
    return RedirectResponse(f"/ui/jobs/{job_id}?done={done}", status_code=303)


def _cancel(job_id: int, config: Settings) -> str:
    with session_scope(config.database_url) as db:
        cancel_job(db, job_id)
    return "cancelled"


def _retry(job_id: int, config: Settings) -> str:
    from service.submit import retry

    retry(job_id, settings=config)
    return "retried"


@router.post("/ui/jobs/{job_id}/cancel")
async def cancel_from_page(request: Request, job_id: JobId) -> Response:
    """Cancel the job (as ``POST /jobs/{id}/cancel``), for a signed-in operator."""
    return await _act(request, job_id, _cancel)


@router.post("/ui/jobs/{job_id}/retry")
async def retry_from_page(request: Request, job_id: JobId) -> Response:
    """Queue the job again (as ``POST /jobs/{id}/retry``), for a signed-in operator."""
    return await _act(request, job_id, _retry)


# --- watches, workers --------------------------------------------------------------------------------------

@router.get("/ui/watches", response_class=HTMLResponse)
def watches_page(request: Request, db: Session = Depends(session)) -> Response:
    """The watch list: each repo's state, last seen and last published commit, last and next check."""
    if not signin.may_read(request):
        return signin.login_redirect(request)
    config: Settings = request.app.state.settings
    return render(request, "watches.html", {"watches": watch_list(db), "hub": config.hub_link(),
                                            "nav": "watches"})


@router.get("/ui/workers", response_class=HTMLResponse)
def workers_page(request: Request, db: Session = Depends(session)) -> Response:
    """Queue depths, the Celery workers that answer and their queues, and hosts the database saw working."""
    if not signin.may_read(request):
        return signin.login_redirect(request)
    config: Settings = request.app.state.settings
    depths = queue_depths(config.broker_url)
    workers = celery_workers(config) if depths is not None else None  # after the quick broker check
    return render(request, "workers.html", {"depths": depths, "workers": workers, "hosts": hosts_seen(db),
                                            "now": utcnow(), "nav": "workers"})


# --- signing in --------------------------------------------------------------------------------------------

@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str | None = Query(None, max_length=2000)) -> Response:
    """The sign-in form (nothing to sign in to without a token)."""
    if not signin.token_required(request):
        return RedirectResponse(signin.safe_next(next), status_code=303)
    return render(request, "login.html", {"next": signin.safe_next(next), "refused": False})


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the token sent in the form's body; set the session cookie and go to the page asked for."""
    fields = await signin.form_fields(request)
    target = signin.safe_next(fields.get("next"))
    config: Settings = request.app.state.settings
    if config.api_token is None:
        return RedirectResponse(target, status_code=303)
    wait = signin.sign_in_wait(request)
    if wait:  # too many wrong tokens from this address: the token is not even compared
        answer = render(request, "login.html", {"next": target, "refused": False, "wait": wait}, status_code=429)
        answer.headers["Retry-After"] = str(wait)
        return answer
    token = config.api_token.get_secret_value()
    if not signin.same_origin(request) or not hmac.compare_digest(fields.get("token", "").encode(), token.encode()):
        signin.record_failed_sign_in(request)
        return render(request, "login.html", {"next": target, "refused": True}, status_code=401)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(signin.COOKIE, signin.session_cookie(request), max_age=signin.SESSION_SECONDS, httponly=True,
                        samesite="strict", secure=request.url.scheme == "https", path="/")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Forget the session cookie."""
    if not signin.same_origin(request):
        return render(request, "error.html", {"title": "Refused", "message": "cross-site request refused",
                                              "hint": None}, status_code=403)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(signin.COOKIE, path="/", httponly=True, samesite="strict")
    return response
