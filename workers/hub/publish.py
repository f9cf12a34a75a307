"""Publish step: push each repo tree to the Hub as one atomic commit, then tag the source sha.

* the repo is created with the visibility asked for; a repo this call created is deleted again when its
  first commit fails, so a failed first publish leaves no empty repo behind; a private conversion is
  never pushed into an existing public repo;
* **one** ``create_commit`` per repo, with explicit add/delete operations and ``parent_commit`` set to the
  head it was computed against; a concurrent push (412) is retried from the new head;
* files the Hub already has unchanged are not uploaded again; an identical re-publish makes no commit;
* each distinct content is uploaded once: files with the same bytes (an extra image size's weights, hard-linked
  to the native size's) are one LFS object, sent before the commit; the commit's other copies find it there;
* errors the Hub answers with a status are retried only when the status is transient (408, 429, 5xx),
  honouring ``Retry-After`` (bounded); transport errors (timeouts, refused connections) are retried too;
  any other client error (400, 401, 403, 404, ...) stops at once with a one-line error naming the repo
  and the token to check;
* a tag ``source-<sha>`` marks the commit that holds the conversion of that source commit;
* a tree with an incomplete variant (no text encoder, UNet or VAE decoder, or, compiled, their resources
  and the tokenizer files) is refused before any Hub call.

The token comes from huggingface_hub's standard places (``HF_TOKEN``, the login cache) and is never
printed or logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from workers.errors import CoreMLPublishError, HubUnavailableError, PublishError
from workers.hub.client import is_transient, publish_error, status_of, with_retries
from workers.package.complete import check_tree
from workers.package.repos import RepoTree

IGNORED = (".partial", ".tmp")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Published:
    """What publishing one repo did."""

    repo_id: str
    commit: str
    changed: bool  # False: the Hub already had exactly these files, no commit was made
    url: str
    tag: str | None


def _files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.name.startswith(".") and not p.name.endswith(IGNORED)}


def _create(api, repo_id: str, private: bool) -> tuple[str, bool]:
    """Create the repo; returns its url and whether this call created it (False: it existed)."""
    from huggingface_hub.errors import HfHubHTTPError

    url = f"{api.endpoint.rstrip('/')}/{repo_id}"
    try:
        return str(api.create_repo(repo_id, private=private, exist_ok=False)), True
    except HfHubHTTPError as e:
        if status_of(e) == 409:
            return url, False
        if status_of(e) in (401, 402, 403) and _exists(api, repo_id):
            return url, False  # a token without the right to create repos may still push to an existing one
        raise


def _exists(api, repo_id: str) -> bool:
    from huggingface_hub.errors import HfHubHTTPError

    try:
        api.repo_info(repo_id)
        return True
    except HfHubHTTPError:
        return False


def _remove_unused(api, repo_id: str, retry: dict) -> None:
    """Delete a repo this publish created when its first commit failed; best effort, never raises."""
    try:
        files = with_retries(lambda: api.list_repo_files(repo_id), **retry)
        if any(f != ".gitattributes" for f in files):
            log.warning("not deleting %s after the failed publish: it holds files from another commit", repo_id)
            return
        with_retries(lambda: api.delete_repo(repo_id), **retry)
        log.warning("deleted %s again: it was created by this publish, whose first commit failed", repo_id)
    except Exception as e:  # cleanup must not hide the publish error
        log.warning("could not delete the empty repo %s after the failed publish (%s); delete it on the Hub",
                    repo_id, e.__class__.__name__)


def publish_tree(tree: RepoTree, *, namespace: str, source_sha: str | None, private: bool = False,
                 endpoint: str | None = None, token: str | None = None, attempts: int = 5,
                 base_delay: float = 1.0, on_step: Callable[[str], None] | None = None,
                 on_retry: Callable[[BaseException], None] | None = None) -> Published:
    """Create or update ``namespace/<tree.name>`` so that it holds exactly ``tree.folder``'s files.

    A tree with an incomplete variant is refused (OutputError, :func:`workers.package.complete.check_tree`) before
    the Hub is asked anything.
    """
    from huggingface_hub import HfApi

    check_tree(tree, namespace=namespace)
    api = HfApi(endpoint=endpoint, token=token)
    repo_id = f"{namespace}/{tree.name}"
    retry = dict(attempts=attempts, base_delay=base_delay, on_retry=on_retry)
    state = {"created": False, "committed": False}
    try:
        return _push(api, tree, repo_id, source_sha=source_sha, private=private, retry=retry, state=state,
                     step=on_step or (lambda message: None))
    except Exception as e:
        if state["created"] and not state["committed"]:
            _remove_unused(api, repo_id, dict(attempts=min(attempts, 3), base_delay=base_delay))
        if isinstance(e, CoreMLPublishError):
            raise
        error = publish_error(e, repo_id, token)
        if error is None:
            raise
        raise error from e


def _upload_each_content_once(api, repo_id: str, operations: list) -> None:
    """Pre-upload one addition per distinct content. huggingface_hub asks the LFS batch endpoint for every
    addition in one request, so two paths with the same bytes would be sent twice; once one copy is uploaded, the
    commit's batch request finds the object present and skips the others."""
    firsts: dict[bytes, object] = {}
    for op in operations:
        if hasattr(op, "upload_info") and not op._is_uploaded:  # an add; _is_uploaded: done by an earlier attempt
            firsts.setdefault(op.upload_info.sha256, op)
    if len(firsts) < sum(hasattr(op, "upload_info") for op in operations):
        api.preupload_lfs_files(repo_id, additions=list(firsts.values()))


def _push(api, tree: RepoTree, repo_id: str, *, source_sha: str | None, private: bool, retry: dict,
          state: dict, step: Callable[[str], None]) -> Published:
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete
    from huggingface_hub.errors import HfHubHTTPError

    url, state["created"] = with_retries(lambda: _create(api, repo_id, private), **retry)
    local = _files(tree.folder)
    for conflict in range(3):
        repo = with_retries(lambda: api.repo_info(repo_id, revision="main"), **retry)
        if private and repo.private is False:
            raise PublishError(f"{repo_id} exists and is public, but this conversion is private", repo_id=repo_id,
                               hint="Make the repo private on the Hub (or publish with --public), then publish "
                                    "again.")
        head = repo.sha
        remote = with_retries(lambda: api.list_repo_files(repo_id, revision=head), **retry)
        operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(file))
                      for path, file in local.items()]
        operations += [CommitOperationDelete(path_in_repo=path) for path in remote
                       if path not in local and path != ".gitattributes"]
        step(f"pushing {repo_id} ({len(local)} files)")
        with_retries(lambda: _upload_each_content_once(api, repo_id, operations), **retry)
        try:
            info = with_retries(lambda: api.create_commit(
                repo_id, operations, commit_message=f"Core ML conversion of {source_sha or 'a local source'}",
                commit_description="Published by coreml-publisher.", parent_commit=head), **retry)
            break
        except HfHubHTTPError as e:
            if status_of(e) in (409, 412) and conflict < 2:
                step(f"{repo_id} moved while publishing; retrying from its new head")
                continue
            raise
    state["committed"] = True
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
    return Published(repo_id, info.oid, info.oid != head, str(url), tag)


def source_private(repo_id: str, *, endpoint: str | None = None, token: str | None = None, attempts: int = 5,
                   base_delay: float = 1.0) -> bool:
    """Whether the source repo is private, for conversions that follow their source's visibility.

    A source this token cannot see (not found, 401, 403), or whose visibility the Hub does not say, counts
    as private: publishing it publicly could leak it.  Raises HubUnavailableError when the Hub cannot be
    asked now (network, 429, 5xx), so the caller retries instead of guessing.
    """
    from huggingface_hub import HfApi

    api = HfApi(endpoint=endpoint, token=token)
    try:
        info = with_retries(lambda: api.model_info(repo_id), attempts=attempts, base_delay=base_delay)
    except Exception as e:
        if is_transient(e):
            raise HubUnavailableError(f"cannot read the visibility of {repo_id}: "
                                      + (f"the Hub answered {status_of(e)}" if status_of(e) else e.__class__.__name__),
                                      source=repo_id, hint="Try again later; check HF_ENDPOINT.") from e
        if status_of(e) is not None:
            log.warning("cannot see %s (%s): publishing as private", repo_id, status_of(e))
            return True
        raise
    return info.private is not False
