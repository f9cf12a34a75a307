"""Receiving Hub webhooks: a push to a watched repo's main branch starts a job for the new commit.

The Hub sends ``X-Webhook-Secret`` (compared in constant time) and a JSON payload with
``event.scope == "repo.content"`` and ``updatedRefs`` (``[{"ref": "refs/heads/main", "newSha": ...}]``);
huggingface_hub's own payload model drops ``headSha``, so the new sha is read from ``updatedRefs``.
Jobs are keyed on (repo, sha, options, toolchain), so Hub retries and replays never duplicate work.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass

from service.models import Trigger, WatchState

MAX_BODY = 64 * 1024
MAIN = "refs/heads/main"


@dataclass(frozen=True)
class WebhookOutcome:
    status: int
    body: dict


def check_secret(expected: str | None, given: str | None) -> WebhookOutcome | None:
    """None when the secret matches; otherwise the response to send (401 missing, 403 wrong, 503 unset)."""
    if not expected:
        return WebhookOutcome(503, {"error": "webhooks are not configured: set COREML_PUBLISH_WEBHOOK_SECRET"})
    if not given:
        return WebhookOutcome(401, {"error": "missing X-Webhook-Secret"})
    if not hmac.compare_digest(given.encode(), expected.encode()):
        return WebhookOutcome(403, {"error": "wrong X-Webhook-Secret"})
    return None


def handle_hub_webhook(body: bytes, *, settings) -> WebhookOutcome:
    """Parse a Hub webhook payload (already authenticated) and start a job when it is a new main commit.

    A payload of the wrong shape is refused with 400 and one line saying what is wrong; a push the service
    does not act on is answered 200 with the reason.  When the queue, database or Hub cannot be reached, the
    error propagates (the API answers 503 with Retry-After, so the Hub retries; jobs are deduplicated).
    """
    from service.db import session_scope
    from service.errors import CoreMLPublishError, HubUnavailableError, NotWatchedError, ServiceUnavailableError
    from workers.options import JobOptions
    from service.submit import create_job
    from service.watch import get_watch

    if len(body) > MAX_BODY:
        return WebhookOutcome(413, {"error": f"payload larger than {MAX_BODY} bytes"})
    try:
        scope, repo_id, repo_type, payload = _parse(body)
    except MalformedPayload as e:
        return WebhookOutcome(400, {"error": f"malformed payload: {e}"})
    if scope != "repo.content":
        return WebhookOutcome(200, {"ignored": f"scope {scope[:80]} does not change files"})
    if repo_type != "model":
        return WebhookOutcome(200, {"ignored": f"{repo_type[:80]} repos are not converted"})
    try:
        sha = _main_sha(payload)
    except MalformedPayload as e:
        return WebhookOutcome(400, {"error": f"malformed payload: {e}"})
    if sha is None:
        return WebhookOutcome(200, {"ignored": "no new commit on main"})
    with session_scope(settings.database_url) as session:
        try:
            watch = get_watch(session, repo_id)
        except NotWatchedError:
            return WebhookOutcome(200, {"ignored": f"{repo_id} is not watched"})
        if watch.state == WatchState.PAUSED.value:
            return WebhookOutcome(200, {"ignored": f"{repo_id} is paused"})
        try:
            options = JobOptions.from_dict(watch.options)
        except (CoreMLPublishError, TypeError, ValueError) as e:  # stored before a rule was tightened
            reason = e.one_line() if isinstance(e, CoreMLPublishError) else e.__class__.__name__
            return WebhookOutcome(200, {"ignored": f"{repo_id}'s watch options are no longer valid ({reason}); "
                                                   "remove and add the watch again"})
        watch.last_seen_sha = sha
    try:
        submitted = create_job(source_repo=repo_id, options=options, revision=sha, trigger=Trigger.WEBHOOK,
                               settings=settings)
    except (ServiceUnavailableError, HubUnavailableError):
        raise  # transient: 503 with Retry-After, and the Hub's retry finds the recorded job
    except CoreMLPublishError as e:
        return WebhookOutcome(200, {"ignored": f"cannot convert {repo_id}@{sha[:10]}: {e.one_line()}"})
    return WebhookOutcome(202, {"job": submitted.job.id, "created": submitted.created, "sha": sha})


class MalformedPayload(ValueError):
    """The payload is not the shape the Hub sends; the message says which field is wrong."""


def _field(container: dict, name: str, kind: type, where: str, *, required: bool = True):
    value = container.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, kind):
        expected = {dict: "an object", list: "an array", str: "a string"}[kind]
        got = _json_type(value) if name in container else "missing"
        raise MalformedPayload(f"{where}{name} must be {expected}, not {got}")
    return value


def _json_type(value) -> str:
    for kind, name in ((type(None), "null"), (bool, "a boolean"), (int, "a number"), (float, "a number"),
                       (str, "a string"), (list, "an array"), (dict, "an object")):
        if isinstance(value, kind):
            return name
    return type(value).__name__


def _parse(body: bytes) -> tuple[str, str, str, dict]:
    """(scope, repo id, repo type, payload) from a payload's JSON, or MalformedPayload naming what is wrong."""
    from workers.names import looks_like_repo_id

    try:
        payload = json.loads(body)
    except RecursionError:
        raise MalformedPayload("JSON nested too deeply") from None
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise MalformedPayload(f"not JSON ({e.__class__.__name__})") from None
    if not isinstance(payload, dict):
        raise MalformedPayload(f"the payload must be a JSON object, not {_json_type(payload)}")
    event = _field(payload, "event", dict, "")
    scope = _field(event, "scope", str, "event.")
    repo = _field(payload, "repo", dict, "")
    repo_id = _field(repo, "name", str, "repo.")
    repo_type = _field(repo, "type", str, "repo.", required=False) or "model"
    if not looks_like_repo_id(repo_id):
        raise MalformedPayload(f"repo.name {repo_id[:100]!r} is not a Hub repo id")
    return scope, repo_id, repo_type, payload


def _main_sha(payload: dict) -> str | None:
    """The new commit of refs/heads/main in ``updatedRefs``; None when main did not move or was deleted."""
    refs = _field(payload, "updatedRefs", list, "", required=False) or []
    sha = None
    for i, ref in enumerate(refs):
        if not isinstance(ref, dict):
            raise MalformedPayload(f"updatedRefs[{i}] must be an object, not {_json_type(ref)}")
        if _field(ref, "ref", str, f"updatedRefs[{i}].") == MAIN:
            sha = _field(ref, "newSha", str, f"updatedRefs[{i}].", required=False)
            if sha is not None and not (len(sha) == 40 and all(c in "0123456789abcdef" for c in sha.lower())):
                raise MalformedPayload(f"updatedRefs[{i}].newSha must be a 40-character hex commit sha, "
                                       f"not {sha[:50]!r}")
    if not sha or set(sha) == {"0"}:
        return None
    return sha.lower()
