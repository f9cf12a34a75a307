"""Every error the project raises on purpose: the conversion library's (re-exported from
:mod:`workers.errors`) and the service's own (jobs and watches).

Each error carries the facts a caller needs and a one-line hint saying what to do next; the CLI prints
``message`` and ``hint`` and nothing else unless debugging.
"""

from __future__ import annotations

from workers.errors import (  # noqa: F401 (re-exported)
    CoreMLPublishError,
    SourceError,
    SourceNotFoundError,
    HubUnavailableError,
    GatedSourceError,
    SourceAccessError,
    UnsupportedModelError,
    UnsafeWeightsError,
    OptionsError,
    OutputError,
    ConversionError,
    ValidationError,
    ToolUnavailableError,
    PublishError,
)


class JobError(CoreMLPublishError, LookupError):
    """A job does not exist or cannot do what was asked (cancel a finished job, ...)."""

    def __init__(self, message: str, *, job_id: int | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.job_id = job_id


class JobNotFoundError(JobError):
    """No job has that id."""


class NotWatchedError(JobError):
    """The repo is not on the watch list."""


class JobCancelled(CoreMLPublishError):
    """Raised inside a running stage when its job was cancelled."""


class ServiceUnavailableError(CoreMLPublishError):
    """Infrastructure the service needs (the queue, the database) does not answer: try again later."""

    retry_after = 30  # seconds, for HTTP clients
