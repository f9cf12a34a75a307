"""Talking to the Hub: what its answers mean, as the library's typed errors, and retrying what may pass later.

Every call the library makes to the Hub (resolving a source, fetching its files, publishing, downloading a
variant, the sweep's head lookups) goes through :func:`hub_errors` (reads) or :func:`publish_error`
(writes), so one table says what each answer means:

| the Hub says                          | reading a repo                      | publishing                        |
|---------------------------------------|-------------------------------------|-----------------------------------|
| gated (GatedRepoError)                | GatedSourceError                    | PublishError                      |
| no such repo / revision / file        | SourceNotFoundError                 | PublishError                      |
| 401, 403                              | SourceAccessError                   | PublishError naming the token     |
| 408, 429, 5xx; no answer (network)    | HubUnavailableError (retry later)   | retried, then PublishError        |
| any other status                      | SourceError                         | PublishError, not retried         |

Transient errors are retried by :func:`with_retries` with exponential backoff and full jitter, or the
``Retry-After`` the Hub asked for (bounded).  Tokens are never part of a message.
"""

from __future__ import annotations

import email.utils
import random
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Callable, Iterator, TypeVar

from workers.errors import (
    GatedSourceError,
    HubUnavailableError,
    PublishError,
    SourceAccessError,
    SourceError,
    SourceNotFoundError,
)

T = TypeVar("T")
# HTTP statuses from the Hub worth retrying later: timeouts, rate limits, server errors
TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0  # seconds: the longest Retry-After honoured before trying again


def network_errors() -> tuple[type[BaseException], ...]:
    """Exceptions meaning the Hub could not be reached (huggingface_hub 2.x speaks through httpx2)."""
    import httpx2

    return (OSError, httpx2.TransportError)


def response_of(error: BaseException | None):
    """The HTTP response behind an error, looking through the client's wrapping (uploads raise RuntimeError)."""
    while error is not None:
        response = getattr(error, "response", None)
        if getattr(response, "status_code", None) is not None:
            return response
        error = error.__cause__
    return None


def status_of(error: BaseException | None) -> int | None:
    """The HTTP status behind an error, or None when the Hub did not answer."""
    response = response_of(error)
    return None if response is None else response.status_code


def unreachable(error: BaseException) -> bool:
    """Whether the Hub could not be reached (the client wraps upload errors, so look at the cause too)."""
    return isinstance(error, network_errors()) or isinstance(error.__cause__, network_errors())


def is_transient(error: BaseException) -> bool:
    """Whether trying again later may succeed: a transient status, or no answer at all (network)."""
    status = status_of(error)
    if status is not None:  # the Hub answered: its status decides (the client's HTTP error is also an OSError)
        return status in TRANSIENT_STATUS
    return unreachable(error)


def retry_after(error: BaseException) -> float | None:
    """The ``Retry-After`` of a 429/503 answer in seconds (bounded by MAX_RETRY_AFTER), or None."""
    response = response_of(error)
    if response is None or response.status_code not in (429, 503):
        return None
    value = str((getattr(response, "headers", None) or {}).get("retry-after") or "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - datetime.now(timezone.utc)).total_seconds()
    if seconds != seconds:  # NaN
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def with_retries(call: Callable[[], T], *, attempts: int = 5, base_delay: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep,
                 on_retry: Callable[[BaseException], None] | None = None) -> T:
    """Run ``call``, retrying transient Hub errors with exponential backoff and full jitter (or Retry-After);
    ``on_retry`` hears of each error that is retried."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:  # classified below; anything not transient is raised unchanged
            if not is_transient(e) or attempt == attempts:
                raise
            if on_retry is not None:
                on_retry(e)
            wait = retry_after(e)
            sleep(wait if wait is not None else random.uniform(0, base_delay * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def read_error(error: BaseException, repo_id: str, *, revision: str | None = None,
               missing_file: str | None = None) -> SourceError | None:
    """The library's error for a failed read of ``repo_id`` (None when ``error`` is not the Hub's).

    ``missing_file`` is what to say when a file is not there (default: the Hub's own words)."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    status = status_of(error)
    if isinstance(error, GatedRepoError):
        return GatedSourceError(f"{repo_id} is gated", source=repo_id, status=status)
    if isinstance(error, RevisionNotFoundError):
        return SourceNotFoundError(f"{repo_id} has no revision {revision!r}", source=repo_id, status=status,
                                   hint="Pass a branch, tag or commit sha that exists.")
    if isinstance(error, RepositoryNotFoundError):
        return SourceNotFoundError(f"repo {repo_id} not found (or private)", source=repo_id, status=status,
                                   hint="Check the id; for a private repo set HF_TOKEN to a token that can read it.")
    if isinstance(error, EntryNotFoundError):
        return SourceNotFoundError(missing_file or f"{repo_id} lacks a file it lists", source=repo_id,
                                   status=status, hint="Check the repo on the Hub.")
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return SourceAccessError(f"the Hub refused to let this token read {repo_id} ({status})", source=repo_id,
                                 status=status)
    if isinstance(error, HfHubHTTPError) and status is not None:
        kind = HubUnavailableError if status in TRANSIENT_STATUS else SourceError
        return kind(f"the Hub answered {status} for {repo_id}", source=repo_id, status=status,
                    hint="Try again later; check HF_ENDPOINT and HF_TOKEN.")
    if unreachable(error):  # connection refused, DNS, timeouts
        return HubUnavailableError(f"cannot reach the Hub for {repo_id}: {error.__class__.__name__}",
                                   source=repo_id, hint="Check your network and HF_ENDPOINT.")
    return None


@contextmanager
def hub_errors(repo_id: str, revision: str | None = None, *, missing_file: str | None = None) -> Iterator[None]:
    """Around Hub reads of ``repo_id``: what the Hub answered, as the library's errors (:func:`read_error`)."""
    try:
        yield
    except Exception as e:
        translated = read_error(e, repo_id, revision=revision, missing_file=missing_file)
        if translated is None:
            raise
        raise translated from e


def head_sha(repo_id: str, *, endpoint: str | None = None, token: str | None = None) -> str:
    """A repo's current main commit (one Hub call).  Raises as :func:`read_error` says."""
    from huggingface_hub import HfApi

    with hub_errors(repo_id, "main"):
        return HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision="main").sha


def _token_label(token: str | None) -> str:
    """Which token to check, without ever showing it."""
    return ("the token passed to publish_tree" if token else "the publishing token") + \
        " (HF_TOKEN, or the one `hf auth login` saved)"


def _server_message(error: BaseException) -> str:
    """The first line of what the Hub said, shortened; empty when it said nothing."""
    text = str(getattr(error, "server_message", None) or "").strip().splitlines()
    line = text[0].strip() if text else ""
    return f": {line[:200]}" if line else ""


def publish_error(error: BaseException, repo_id: str, token: str | None) -> PublishError | None:
    """The one-line error for a publish the Hub refused (or could not be reached for); None for other errors."""
    status, namespace, which = status_of(error), repo_id.split("/")[0], _token_label(token)
    if status == 401:
        return PublishError(f"the Hub refused the token while publishing {repo_id} (401)", repo_id=repo_id,
                            hint=f"Check {which}: it must be valid and have write access "
                                 "(`hf auth login` makes a new one).")
    if status == 403:
        return PublishError(f"the token cannot write to {namespace} (403) while publishing {repo_id}",
                            repo_id=repo_id, hint=f"Check {which}: use a token with write rights to the "
                                                  f"{namespace} namespace.")
    if status is not None and 400 <= status < 500 and status not in TRANSIENT_STATUS:
        return PublishError(f"the Hub refused to publish {repo_id} ({status}){_server_message(error)}",
                            repo_id=repo_id, hint=f"Not retried: check the repo name and {which} (it must be able "
                                                  f"to write to {namespace}).")
    if status is not None:
        return PublishError(f"publishing {repo_id} failed: the Hub answered {status}", repo_id=repo_id,
                            hint="Try again later; the repo was left as it was before this commit.")
    if unreachable(error):
        return PublishError(f"cannot reach the Hub to publish {repo_id}: {error.__class__.__name__}",
                            repo_id=repo_id, hint="Check your network and HF_ENDPOINT, then publish again.")
    return None
