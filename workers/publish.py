"""Publish step: push each repo tree to the Hub as one atomic commit, then tag the source sha.

* ``create_repo(exist_ok=True)`` with the visibility asked for;
* **one** ``create_commit`` per repo, with explicit add/delete operations and ``parent_commit`` set to the
  head it was computed against; a concurrent push (412) is retried from the new head;
* files the Hub already has unchanged are not uploaded again; an identical re-publish makes no commit;
* transient errors (429, 5xx, timeouts) are retried with exponential backoff and jitter; authentication
  errors are not, and say which token is missing or lacks rights;
* a tag ``source-<sha>`` marks the commit that holds the conversion of that source commit.

The token comes from huggingface_hub's standard places (``HF_TOKEN``, the login cache) and is never
printed or logged.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from workers.errors import TRANSIENT_STATUS, CoreMLPublishError, PublishError
from workers.package import RepoTree

T = TypeVar("T")
IGNORED = (".partial", ".tmp")


@dataclass(frozen=True)
class Published:
    """What publishing one repo did."""

    repo_id: str
    commit: str
    changed: bool  # False: the Hub already had exactly these files, no commit was made
    url: str
    tag: str | None


def _status(error: BaseException | None) -> int | None:
    """The HTTP status behind an error, looking through the client's wrapping (uploads raise RuntimeError)."""
    while error is not None:
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status is not None:
            return status
        error = error.__cause__
    return None


def with_retries(call: Callable[[], T], *, attempts: int = 5, base_delay: float = 1.0,
                 sleep: Callable[[float], None] = time.sleep) -> T:
    """Run ``call``, retrying transient Hub errors with exponential backoff and full jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as e:  # classified below; anything not transient is raised unchanged
            transient = _status(e) in TRANSIENT_STATUS or _unreachable(e)
            if not transient or attempt == attempts:
                raise
            sleep(random.uniform(0, base_delay * 2 ** (attempt - 1)))
    raise AssertionError("unreachable")


def _unreachable(error: BaseException) -> bool:
    """Whether the Hub could not be reached (the client wraps upload errors, so look at the cause too)."""
    from workers.resolve import network_errors

    return isinstance(error, network_errors()) or isinstance(error.__cause__, network_errors())


def _auth_error(e: BaseException, repo_id: str) -> PublishError | None:
    status = _status(e)
    if status == 401:
        return PublishError(f"the Hub refused the token while publishing {repo_id} (401)", repo_id=repo_id,
                            hint="Set HF_TOKEN to a valid token with write access (or run `hf auth login`).")
    if status == 403:
        return PublishError(f"the token cannot write to {repo_id.split('/')[0]} (403)", repo_id=repo_id,
                            hint=f"Use a token with write rights to the {repo_id.split('/')[0]} namespace.")
    return None


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(IGNORED)}


def publish_tree(tree: RepoTree, *, namespace: str, source_sha: str | None, private: bool = False,
                 endpoint: str | None = None, token: str | None = None, attempts: int = 5,
                 base_delay: float = 1.0, on_step: Callable[[str], None] | None = None) -> Published:
    """Create or update ``namespace/<tree.name>`` so that it holds exactly ``tree.folder``'s files."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    repo_id = f"{namespace}/{tree.name}"
    step = on_step or (lambda message: None)
    retry = dict(attempts=attempts, base_delay=base_delay)
    try:
        url = with_retries(lambda: api.create_repo(repo_id, private=private, exist_ok=True), **retry)
        local = _files(tree.folder)
        for conflict in range(3):
            head = with_retries(lambda: api.repo_info(repo_id, revision="main").sha, **retry)
            remote = with_retries(lambda: api.list_repo_files(repo_id, revision=head), **retry)
            operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(file))
                          for path, file in local.items()]
            operations += [CommitOperationDelete(path_in_repo=path) for path in remote
                           if path not in local and path != ".gitattributes"]
            step(f"pushing {repo_id} ({len(local)} files)")
            try:
                info = with_retries(lambda: api.create_commit(
                    repo_id, operations, commit_message=f"Core ML conversion of {source_sha or 'a local source'}",
                    commit_description="Published by coreml-publisher.", parent_commit=head), **retry)
                break
            except HfHubHTTPError as e:
                if _status(e) in (409, 412) and conflict < 2:
                    step(f"{repo_id} moved while publishing; retrying from its new head")
                    continue
                raise
        tag = None
        if source_sha:
            tag = f"source-{source_sha}"
            refs = with_retries(lambda: api.list_repo_refs(repo_id), **retry)
            current = {t.name: t.target_commit for t in refs.tags}
            if current.get(tag) != info.oid:
                if tag in current:
                    with_retries(lambda: api.delete_tag(repo_id, tag=tag), **retry)
                with_retries(lambda: api.create_tag(repo_id, tag=tag, revision=info.oid,
                                                    tag_message=f"Converted from source commit {source_sha}"),
                             **retry)
    except CoreMLPublishError:
        raise
    except Exception as e:  # the client raises HfHubHTTPError, RuntimeError (uploads) or transport errors
        auth = _auth_error(e, repo_id)
        if auth is not None:
            raise auth from e
        if _status(e) is not None:
            raise PublishError(f"publishing {repo_id} failed: the Hub answered {_status(e)}", repo_id=repo_id,
                               hint="Try again later; the repo was left as it was before this commit.") from e
        if _unreachable(e):
            raise PublishError(f"cannot reach the Hub to publish {repo_id}: {e.__class__.__name__}",
                               repo_id=repo_id, hint="Check your network and HF_ENDPOINT, then publish again.") from e
        raise
    return Published(repo_id, info.oid, info.oid != head, str(url), tag)
