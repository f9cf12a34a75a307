"""Request and response models: what ``/docs`` shows and what every route returns."""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

# the Hub's limits: 96 characters a namespace or name, so a repo id is at most 96 + 1 + 96; git refs 255
MAX_NAMESPACE = 96
MAX_REPO = 2 * MAX_NAMESPACE + 1
MAX_REVISION = 255
_LIMITS = {"repo": (MAX_REPO, "is not a Hub repo id"), "namespace": (MAX_NAMESPACE, "is not a valid Hub namespace"),
           "revision": (MAX_REVISION, "is not a branch, tag or commit"), "vae": (MAX_REPO, "is not a Hub repo id"),
           "refiner": (MAX_REPO, "is not a Hub repo id")}


def _shown(value: str) -> str:
    return repr(value[:40] + "…" if len(value) > 40 else value)


class JobRequest(BaseModel):
    """A job to submit, or a repo to watch with the options its jobs get."""

    repo: str = Field(..., description="Hub repo id of a Stable Diffusion 1.x/2.x or SDXL diffusers pipeline",
                      json_schema_extra={"maxLength": MAX_REPO})
    revision: str | None = Field(None, description="Branch, tag or commit; pinned to its sha",
                                 json_schema_extra={"maxLength": MAX_REVISION})
    namespace: str | None = Field(None, description="Where to publish (default: the service's)",
                                  json_schema_extra={"maxLength": MAX_NAMESPACE})
    attentions: list[str] = Field(["original", "split_einsum_v2"], max_length=8,
                                  description="Attention layouts to convert")
    bits: int | None = Field(6, description="Palettization bits, or null (or 0) for float16 only")
    private: bool | None = Field(None, description="Publish private (true) or public (false) repos; null, the "
                                                   "default: the same visibility as the source repo")
    packages_only: bool = Field(False, description="Publish .mlpackage files only (no macOS worker needed)")
    deployment_target: str | None = Field(None, max_length=16, description="Minimum OS of every package (iOS15-iOS18, "
                                          "macOS12-macOS15); null: float16 macOS13/iOS16, palettized iOS17/macOS14")
    chunk_unet: bool = Field(False, description="Also ship each float16 UNet as UnetChunk1/UnetChunk2 (iOS)")
    chunks_only: bool = Field(False, description="Ship the UNet chunks instead of the whole float16 UNet")
    vae: str | None = Field(None, description="A Hub VAE repo converted instead of the source's (e.g. a "
                                              "float16-safe SDXL VAE)", json_schema_extra={"maxLength": MAX_REPO})
    refiner: str | None = Field(None, description="SDXL: a refiner repo whose UNet ships as UnetRefiner",
                                json_schema_extra={"maxLength": MAX_REPO})

    def option_values(self) -> dict:
        """The fields that become the job's options (see ``service.submit.requested_options``)."""
        return self.model_dump(exclude={"repo", "revision"})

    @field_validator("repo", "namespace", "revision", "vae", "refiner")
    @classmethod
    def _bounded(cls, value: str | None, info) -> str | None:
        """Lengths are checked here, so the error names what is wrong and never repeats a huge value."""
        limit, what = _LIMITS[info.field_name]
        if value is not None and len(value) > limit:
            raise ValueError(f"{_shown(value)} {what}: longer than {limit} characters")
        return value

    @field_validator("attentions")
    @classmethod
    def _short_names(cls, value: list[str]) -> list[str]:
        if any(len(a) > 32 for a in value):
            raise ValueError("unknown attention layouts: names are at most 32 characters")
        return value


class ProgressCounter(BaseModel):
    label: str = Field(..., description="coremltools' progress bar, e.g. 'Running MIL default pipeline'")
    done: int
    total: int | None


class StageProgress(BaseModel):
    """Where a conversion stage is; kept when it ends (all steps done when it succeeded)."""

    component: str
    layout: str | None = Field(None, description="Attention layout; null for layout-independent components")
    precision: str | None = None
    step: str = Field(..., description="load, reference, convert, validate, palettize, chunk, ...")
    done: int = Field(..., description="Steps of the stage done")
    total: int = Field(..., description="Steps of the stage planned")
    fraction: float = Field(..., description="done / total, 0 to 1")
    eta_seconds: float | None = Field(None, description="Estimated seconds left as of updated_at (from past runs "
                                                        "on models of the same size, else extrapolated); null: "
                                                        "nothing to go on")
    updated_at: str | None = None
    model: str = Field("", description="The source's size class the estimate compares with")
    counter: ProgressCounter | None = Field(None, description="coremltools' own counter inside the step, if it has one")


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
    progress: StageProgress | None = Field(None, description="Live progress (conversion stages)")


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
