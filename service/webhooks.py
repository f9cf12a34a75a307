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
    """Parse a Hub webhook payload (already authenticated) and start a job when it is a new main commit."""
    from service.db import session_scope
    from service.errors import CoreMLPublishError, NotWatchedError
    from service.jobs import JobOptions
    from service.submit import create_job
    from service.watch import get_watch

    if len(body) > MAX_BODY:
        return WebhookOutcome(413, {"error": f"payload larger than {MAX_BODY} bytes"})
    try:
        payload = json.loads(body)
        scope = payload["event"]["scope"]
        repo = payload["repo"]
        repo_id, repo_type = repo["name"], repo.get("type", "model")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        return WebhookOutcome(400, {"error": f"malformed payload: {e.__class__.__name__}"})
    if scope != "repo.content":
        return WebhookOutcome(200, {"ignored": f"scope {scope} does not change files"})
    if repo_type != "model":
        return WebhookOutcome(200, {"ignored": f"{repo_type} repos are not converted"})
    refs = payload.get("updatedRefs") or []
    main = next((r for r in refs if isinstance(r, dict) and r.get("ref") == MAIN), None)
    sha = (main or {}).get("newSha")
    if not sha or set(sha) == {"0"}:
        return WebhookOutcome(200, {"ignored": "no new commit on main"})
    with session_scope(settings.database_url) as session:
        try:
            watch = get_watch(session, repo_id)
        except NotWatchedError:
            return WebhookOutcome(200, {"ignored": f"{repo_id} is not watched"})
        if watch.state == WatchState.PAUSED.value:
            return WebhookOutcome(200, {"ignored": f"{repo_id} is paused"})
        options = JobOptions.from_dict(watch.options)
        watch.last_seen_sha = sha
    try:
        submitted = create_job(source_repo=repo_id, options=options, revision=sha, trigger=Trigger.WEBHOOK,
                               settings=settings)
    except CoreMLPublishError as e:
        return WebhookOutcome(200, {"ignored": f"cannot convert {repo_id}@{sha[:10]}: {e.one_line()}"})
    return WebhookOutcome(202, {"job": submitted.job.id, "created": submitted.created, "sha": sha})
