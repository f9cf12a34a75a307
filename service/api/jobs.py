"""``/jobs``: submit, list, read, cancel and retry conversion jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from sqlalchemy.orm import Session

from service.api import schemas
from service.api.deps import require_reader, require_token, session, settings
from service.jobs import cancel_job, get_job, job_summary, list_jobs, publication_summary
from service.models import Trigger
from service.settings import Settings
from service.submit import check_job, create_job, requested_options, retry

router = APIRouter(prefix="/jobs", tags=["jobs"])
MAX_ID = 2**31 - 1  # the database's integer range
JobId = Annotated[int, Path(ge=1, le=MAX_ID, description="Job number")]


@router.post("", status_code=201, response_model=schemas.Submitted, dependencies=[Depends(require_token)],
             responses={200: {"model": schemas.Submitted, "description": "The same job already existed"}})
def submit(body: schemas.JobRequest, response: Response, config: Settings = Depends(settings),
           db: Session = Depends(session)) -> dict:
    """Submit a job for a Hub repo; an identical job (same commit, options and toolchain) is returned instead."""
    options = requested_options(body.option_values(), settings=config)
    submitted = create_job(source_repo=body.repo, options=options, revision=body.revision, trigger=Trigger.API,
                           settings=config)
    response.status_code = 201 if submitted.created else 200
    return job_summary(get_job(db, submitted.job.id)) | {
        "created": submitted.created,
        "already_published": [publication_summary(p, config.hub_link()) for p in submitted.publications]}


@router.post("/check", response_model=schemas.Check, dependencies=[Depends(require_token)])
def check(body: schemas.JobRequest, config: Settings = Depends(settings), db: Session = Depends(session)) -> dict:
    """What submitting this would do, without recording anything: the commit it would convert, the job that
    already exists for it, and the earlier publications of the source with the same options."""
    options = requested_options(body.option_values(), settings=config)
    sha, existing, publications = check_job(db, source_repo=body.repo, options=options, revision=body.revision,
                                            settings=config)
    return {"repo": body.repo, "source_sha": sha, "existing_job": existing,
            "already_published": [publication_summary(p, config.hub_link()) for p in publications]}


@router.get("", response_model=list[schemas.Job], dependencies=[Depends(require_reader)])
def listing(state: str | None = Query(None, max_length=20, description="Only jobs in this state"),
            q: str | None = Query(None, max_length=200, description="Only jobs whose repo id holds this (any case)"),
            trigger: str | None = Query(None, max_length=20, description="Only jobs of this trigger (cli, api, page, "
                                                                         "webhook, nightly)"),
            limit: int = Query(50, ge=1, le=500, description="How many, newest first"),
            offset: int = Query(0, ge=0, le=10_000_000, description="Skip this many first"),
            db: Session = Depends(session)) -> list[dict]:
    """The newest jobs first, optionally only those in one state, of one trigger, or of matching repos."""
    return [job_summary(j) for j in list_jobs(db, state=state, limit=limit, search=q, trigger=trigger, offset=offset)]


@router.get("/{job_id}", response_model=schemas.Job, dependencies=[Depends(require_reader)])
def one(job_id: JobId, db: Session = Depends(session)) -> dict:
    """One job with its stages, figures and published repos."""
    return job_summary(get_job(db, job_id))


@router.post("/{job_id}/cancel", response_model=schemas.Job, dependencies=[Depends(require_token)])
def cancel(job_id: JobId, db: Session = Depends(session)) -> dict:
    """Cancel a queued or running job; running stages stop at their next check."""
    job = cancel_job(db, job_id)
    db.commit()
    return job_summary(job)


@router.post("/{job_id}/retry", response_model=schemas.Job, dependencies=[Depends(require_token)])
def retry_(job_id: JobId, config: Settings = Depends(settings), db: Session = Depends(session)) -> dict:
    """Queue a failed or cancelled job again; finished stages are not redone."""
    retry(job_id, settings=config)
    return job_summary(get_job(db, job_id))
