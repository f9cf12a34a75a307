"""Request and response models: what ``/docs`` shows and what every route returns."""

from __future__ import annotations

from pydantic import BaseModel, Field


class JobRequest(BaseModel):
    """A job to submit, or a repo to watch with the options its jobs get."""

    repo: str = Field(..., description="Hub repo id of a Stable Diffusion 1.x/2.x diffusers pipeline")
    revision: str | None = Field(None, description="Branch, tag or commit; pinned to its sha")
    namespace: str | None = Field(None, description="Where to publish (default: the service's)")
    attentions: list[str] = Field(["original", "split_einsum_v2"], description="Attention layouts to convert")
    bits: int | None = Field(6, description="Palettization bits, or null (or 0) for float16 only")
    private: bool = False
    packages_only: bool = Field(False, description="Publish .mlpackage files only (no macOS worker needed)")


class Stage(BaseModel):
    stage: str
    part: str
    state: str
    attempts: int
    worker_host: str | None
    duration: float | None = Field(None, description="Seconds")
    figures: dict | None = Field(None, description="What the stage measured (sizes, PSNR per package, ...)")
    error: str | None
    artifact_uri: str | None


class Published(BaseModel):
    repo_id: str
    commit: str
    changed: bool = Field(..., description="False: the Hub already had these files, no commit was made")
    tag: str | None


class Job(BaseModel):
    id: int
    source_repo: str
    revision: str | None
    source_sha: str
    state: str = Field(..., description="queued, running, succeeded, failed or cancelled")
    trigger: str
    options: dict
    toolchain: str
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    stages: list[Stage]
    published: list[Published]


class Submitted(Job):
    created: bool = Field(..., description="False: an identical job already existed and is returned")


class Watch(BaseModel):
    repo_id: str
    state: str
    reason: str | None
    last_seen_sha: str | None
    last_published_sha: str | None
    last_published_at: str | None
    next_check_at: str | None
    options: dict


class WatchState(BaseModel):
    repo_id: str
    state: str


class Removed(BaseModel):
    removed: str


class SweepResult(BaseModel):
    repo_id: str
    outcome: str = Field(..., description="submitted, unchanged, gone, private, gated, unreachable or refused")
    sha: str | None = None
    job_id: int | None = None
    detail: str = ""


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    ready: bool
    database: str
    broker: str


class Error(BaseModel):
    error: str
    hint: str | None = None
