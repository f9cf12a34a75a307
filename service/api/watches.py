"""``/watches`` and ``/sweep``: the repos converted again whenever their main branch moves."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path
from sqlalchemy.orm import Session

from service.api import schemas
from service.api.deps import require_reader, require_token, session, settings
from service.settings import Settings
from service.submit import requested_options
from service.watch import add_watch, remove_watch, set_paused, sweep, watch_rows

router = APIRouter(tags=["watches"])
RepoId = Annotated[str, Path(min_length=1, max_length=200, description="Watched Hub repo id")]


@router.get("/watches", response_model=list[schemas.Watch], dependencies=[Depends(require_reader)])
def listing(db: Session = Depends(session)) -> list[dict]:
    """The watch list with each repo's last seen and last published commit."""
    return watch_rows(db)


@router.post("/watches", status_code=201, response_model=schemas.WatchState, dependencies=[Depends(require_token)])
def add(body: schemas.JobRequest, config: Settings = Depends(settings), db: Session = Depends(session)) -> dict:
    """Watch a repo; its current commit is converted by the next sweep."""
    options = requested_options(body.option_values(), settings=config)
    watch = add_watch(db, repo_id=body.repo, options=options)
    return {"repo_id": watch.repo_id, "state": watch.state}


@router.delete("/watches/{repo_id:path}", response_model=schemas.Removed, dependencies=[Depends(require_token)])
def remove(repo_id: RepoId, db: Session = Depends(session)) -> dict:
    remove_watch(db, repo_id)
    db.commit()
    return {"removed": repo_id}


@router.post("/watches/{repo_id:path}/pause", response_model=schemas.WatchState,
             dependencies=[Depends(require_token)])
def pause(repo_id: RepoId, db: Session = Depends(session)) -> dict:
    state = set_paused(db, repo_id, True).state
    db.commit()
    return {"repo_id": repo_id, "state": state}


@router.post("/watches/{repo_id:path}/resume", response_model=schemas.WatchState,
             dependencies=[Depends(require_token)])
def resume(repo_id: RepoId, db: Session = Depends(session)) -> dict:
    state = set_paused(db, repo_id, False).state
    db.commit()
    return {"repo_id": repo_id, "state": state}


@router.post("/sweep", response_model=list[schemas.SweepResult], dependencies=[Depends(require_token)])
def run_sweep(config: Settings = Depends(settings)) -> list[dict]:
    """Check every active watched repo now and submit the jobs that are missing."""
    return [asdict(r) for r in sweep(settings=config)]
