"""Every error the conversion library raises on purpose.

Each error carries the facts a caller needs (repo id, component, figures) and a one-line hint saying what
to do next; the CLI prints ``message`` and ``hint`` and nothing else unless debugging.  The classes also
inherit the builtin that best describes them, so library users can catch ``ValueError`` etc.  The
service's own errors (jobs, watches, the queue) are in :mod:`service.errors`, which re-exports these.
"""

from __future__ import annotations


class CoreMLPublishError(Exception):
    """Base class: an expected failure with a one-line explanation and a hint."""

    hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if hint is not None:
            self.hint = hint

    def one_line(self) -> str:
        """The message and hint joined for a terminal."""
        return f"{self.message.rstrip('.')}. {self.hint}" if self.hint else self.message


class SourceError(CoreMLPublishError, ValueError):
    """The source model cannot be used (missing, malformed, or not what we convert).  ``status`` is the Hub's
    HTTP answer when the Hub refused it."""

    def __init__(self, message: str, *, source: str, hint: str | None = None, status: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.source = source
        self.status = status


class SourceNotFoundError(SourceError, FileNotFoundError):
    """The local folder or Hub repo / revision does not exist or cannot be seen."""


class HubUnavailableError(SourceError):
    """The Hub could not be reached or answered 429/5xx: worth retrying later."""


class GatedSourceError(SourceError, PermissionError):
    """The Hub repo is gated or private and no token with access was given."""

    hint = "Accept the model's terms on the Hub and set HF_TOKEN to a token that can read it."


class SourceAccessError(SourceError, PermissionError):
    """The Hub refused the token (401, 403): the repo is private to others, or the token is wrong."""

    hint = "Set HF_TOKEN to a token that can read it."


class UnsupportedModelError(SourceError):
    """The source is a model we do not convert (yet): wrong pipeline class or architecture."""


class UnsafeWeightsError(SourceError):
    """The source only has pickle weights, which run code when loaded."""

    def __init__(self, message: str, *, source: str, files: list[str]) -> None:
        super().__init__(
            message,
            source=source,
            hint="Convert the weights to safetensors, or pass --allow-pickle if you trust this source.",
        )
        self.files = files


class OptionsError(CoreMLPublishError, ValueError):
    """An option value is out of range or inconsistent with the source."""


class OutputError(CoreMLPublishError, ValueError):
    """An output (a conversion's folder, its report.json, a repo tree) is missing, failed validation or is
    incomplete, so the step asked for cannot use it."""


class ConversionError(CoreMLPublishError, RuntimeError):
    """coremltools or tracing failed for one component."""

    def __init__(self, message: str, *, component: str, variant: str | None = None,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.component = component
        self.variant = variant


class ValidationError(CoreMLPublishError, RuntimeError):
    """One or more packages failed their structural or numeric checks.

    ``failures`` holds one line per failed check, naming component, variant, figure and bar.
    """

    hint = "The failing packages were deleted; see report.json for every figure."

    def __init__(self, failures: list[str], *, report: object | None = None, hint: str | None = None) -> None:
        super().__init__("validation failed: " + "; ".join(failures), hint=hint)
        self.failures = failures
        self.report = report


class ToolUnavailableError(CoreMLPublishError, RuntimeError):
    """A platform tool (xcrun coremlcompiler, Core ML runtime) is not on this machine."""


class PublishError(CoreMLPublishError, RuntimeError):
    """Pushing to the Hub failed (after retries, or for a reason retrying cannot fix)."""

    def __init__(self, message: str, *, repo_id: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.repo_id = repo_id
