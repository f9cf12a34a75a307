"""Request and response models: what ``/docs`` shows and what every route returns."""

from __future__ import annotations

import typing
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator

from workers.names import MAX_REPO_ID, MAX_REVISION
from workers.declare import JOB, Declared
from workers.options import JobOptions

_REQUEST = {"repo": (MAX_REPO_ID, "is not a Hub repo id"), "revision": (MAX_REVISION, "is not a branch, tag or commit")}
MAX_LAYOUT_NAME = 32


def _shown(value: str) -> str:
    return repr(value[:40] + "…" if len(value) > 40 else value)


class _Request(BaseModel):
    """What every request built from the options' declarations checks: no field it does not know, texts no
    longer than their bound (so the error names what is wrong and never repeats a huge value)."""

    model_config = ConfigDict(extra="forbid")  # a misspelt option is refused, not silently left at its default
    limits: ClassVar[dict[str, tuple[int, str]]] = {}

    @field_validator("*")
    @classmethod
    def _bounded(cls, value: Any, info) -> Any:
        limit, what = cls.limits.get(info.field_name, (None, ""))
        if isinstance(value, str) and limit is not None and len(value) > limit:
            raise ValueError(f"{_shown(value)} {what}: longer than {limit} characters")
        if isinstance(value, list) and any(isinstance(v, str) and len(v) > MAX_LAYOUT_NAME for v in value):
            raise ValueError(f"unknown attention layouts: names are at most {MAX_LAYOUT_NAME} characters")
        return value

    def option_values(self) -> dict:
        """The fields that become the job's options (see ``service.submit.requested_options``)."""
        return self.model_dump(exclude={"repo", "revision"})


def _api_type(hint: Any, declared: Declared, default: Any) -> Any:
    """The JSON type a request gives an option in: lists of names (checked by the options), nullable when the
    default is null."""
    if declared.cli in ("comma", "repeat"):
        return list[str]
    if default is None and type(None) not in typing.get_args(hint):
        return hint | None
    return hint


def job_request(options_type: type[JobOptions] = JobOptions) -> type[_Request]:
    """The request model of a job (and of a watch): the repo, its revision, and every option declared for jobs,
    with its type, default and help text."""
    hints = options_type.types()
    fields: dict[str, Any] = {
        "repo": (str, Field(..., description="Hub repo id of a Stable Diffusion 1.x/2.x or SDXL diffusers pipeline",
                            json_schema_extra={"maxLength": MAX_REPO_ID})),
        "revision": (str | None, Field(None, description="Branch, tag or commit; pinned to its sha",
                                       json_schema_extra={"maxLength": MAX_REVISION})),
    }
    limits = dict(_REQUEST)
    for f, declared in options_type.declared(JOB):
        default = options_type.user_default(f.name)
        if isinstance(default, tuple):
            default = [getattr(v, "value", v) for v in default]
        extra: dict[str, Any] = {}
        if declared.max_length is not None and declared.cli in ("comma", "repeat"):
            extra["max_length"] = declared.max_length
        elif declared.max_length is not None:
            extra["json_schema_extra"] = {"maxLength": declared.max_length}
            limits[f.name] = (declared.max_length, declared.too_long)
        fields[f.name] = (_api_type(hints[f.name], declared, default),
                          Field(default, description=declared.help, **extra))
    model = create_model("JobRequest", __base__=_Request, __doc__="A job to submit, or a repo to watch with the "
                         "options its jobs get.", **fields)
    model.limits = limits
    return model


def options_schema(options_type: type[JobOptions] = JobOptions) -> type[BaseModel]:
    """The options a job shows (:meth:`workers.options.JobOptions.stored`), typed; any other set option too."""
    hints = options_type.types()
    own = set(options_type.__annotations__)
    fields = {f.name: (hints[f.name] | None, Field(None, description=declared.help or None))
              for f, declared in options_type.declared()
              if JOB in declared.surfaces or f.name in own or declared.keyed == "always"}
    fields["attentions"] = (list[str] | None, fields["attentions"][1])
    return create_model("JobOptions", __config__=ConfigDict(extra="allow"), **fields)


JobRequest = job_request()
JobOptionsSchema = options_schema()


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
    options: JobOptionsSchema = Field(..., description="The job's options, as declared for jobs")
    toolchain: str
    error: str | None
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    stages: list[Stage]
    published: list[Published]


class Publication(BaseModel):
    job_id: int = Field(..., description="The job that published them")
    source_sha: str = Field(..., description="The source commit it converted")
    same_commit: bool = Field(..., description="True: the commit asked for; False: an older one")
    finished_at: str | None
    repos: list[str] = Field(..., description="The repo ids it published")
    urls: list[str] = Field(..., description="Their pages on the Hub")


class Submitted(Job):
    created: bool = Field(..., description="False: an identical job already existed and is returned")
    already_published: list[Publication] = Field(
        default_factory=list, description="Succeeded jobs that published this source with the same options, newest "
                                          "first: of this commit (same_commit), or of older ones")


class Check(BaseModel):
    repo: str
    source_sha: str = Field(..., description="The commit a job would convert now")
    existing_job: int | None = Field(..., description="The job that already exists for it with these options")
    already_published: list[Publication]


class Watch(BaseModel):
    repo_id: str
    state: str
    reason: str | None
    last_seen_sha: str | None
    last_published_sha: str | None
    last_published_at: str | None
    next_check_at: str | None
    options: JobOptionsSchema


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
