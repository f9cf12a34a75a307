"""``watch add|list|remove|pause|resume|sweep`` and ``scheduler``: keeping Core ML versions current."""

from __future__ import annotations

import typer
from rich.table import Table

from service.cli.options import with_options
from service.cli.output import print_json, print_listing, short_sha, stdout
from workers.declare import JOB
from workers.options import JobOptions

watch_app = typer.Typer(help="Repos whose Core ML versions are kept current (nightly sweep and Hub webhooks).",
                        no_args_is_help=True)


@watch_app.command("add")
@with_options(JOB, JobOptions)
def add(
    repo: str = typer.Argument(..., help="Hub repo id to watch."),
    *,
    options: dict,
) -> None:
    """Watch a repo: every new commit on main (webhook or nightly sweep) is converted and published."""
    from service.db import session_scope
    from service.submit import requested_options
    from service.watch import add_watch

    job_options = requested_options(options)
    with session_scope() as session:
        add_watch(session, repo_id=repo, options=job_options)
    stdout.print(f"Watching {repo}; the next sweep converts its current commit.")


@watch_app.command("list")
def list_(as_json: bool = typer.Option(False, "--json", help="Print one JSON document with every value whole, "
                                                             "for scripts.")) -> None:
    """The watched repos: last seen and last published commits, next check, state."""
    from service.db import session_scope
    from service.watch import watch_rows

    table = Table("repo", "last seen", "last published", "published at", "next check", "state")
    with session_scope() as session:
        rows = watch_rows(session)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        state = row["state"] + (f" ({row['reason']})" if row["reason"] else "")
        table.add_row(row["repo_id"], short_sha(row["last_seen_sha"]), short_sha(row["last_published_sha"]),
                      (row["last_published_at"] or "")[:16], (row["next_check_at"] or "")[:16], state)
    print_listing(table)


@watch_app.command("remove")
def remove(repo: str = typer.Argument(..., help="Watched repo id.")) -> None:
    """Stop watching a repo (published repos stay as they are)."""
    from service.db import session_scope
    from service.watch import remove_watch

    with session_scope() as session:
        remove_watch(session, repo)
    stdout.print(f"No longer watching {repo}.")


@watch_app.command("pause")
def pause(repo: str = typer.Argument(..., help="Watched repo id.")) -> None:
    """Pause a watch: sweeps and webhooks ignore it until resumed."""
    from service.db import session_scope
    from service.watch import set_paused

    with session_scope() as session:
        set_paused(session, repo, True)
    stdout.print(f"Paused {repo}.")


@watch_app.command("resume")
def resume(repo: str = typer.Argument(..., help="Watched repo id.")) -> None:
    """Resume a paused watch (or one marked gone, private or gated: it is checked again)."""
    from service.db import session_scope
    from service.watch import set_paused

    with session_scope() as session:
        set_paused(session, repo, False)
    stdout.print(f"Resumed {repo}.")


@watch_app.command("sweep")
def sweep_now() -> None:
    """Run the sweep once, now: submit a job for every watched repo whose commit or toolchain changed."""
    from service.watch import sweep

    table = Table("repo", "outcome", "sha", "job", "detail")
    for result in sweep():
        table.add_row(result.repo_id, result.outcome, (result.sha or "")[:10],
                      str(result.job_id or ""), result.detail)
    stdout.print(table)


def scheduler(loglevel: str = typer.Option("info", help="Celery log level.")) -> None:
    """Run Celery beat: the nightly sweep at COREML_PUBLISH_SWEEP_TIME (UTC)."""
    from service.celery_app import app
    from service.settings import get_settings

    get_settings().check_production()
    app.Beat(loglevel=loglevel).run()
