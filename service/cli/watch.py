"""``watch add|list|remove|pause|resume|sweep`` and ``scheduler``: keeping Core ML versions current."""

from __future__ import annotations

import typer
from rich.table import Table

from service.cli import options as shared
from service.cli.output import comma_list, print_json, print_listing, short_sha, stdout

watch_app = typer.Typer(help="Repos whose Core ML versions are kept current (nightly sweep and Hub webhooks).",
                        no_args_is_help=True)


@watch_app.command("add")
def add(
    repo: str = typer.Argument(..., help="Hub repo id to watch."),
    namespace: str = typer.Option(None, help="Where to publish (default: COREML_PUBLISH_DEFAULT_NAMESPACE)."),
    attention: str = shared.ATTENTION,
    bits: int = shared.BITS,
    deployment_target: str = shared.DEPLOYMENT_TARGET,
    chunk_unet: bool = shared.CHUNK_UNET,
    chunks_only: bool = shared.CHUNKS_ONLY,
    vae: str = shared.VAE,
    refiner: str = shared.REFINER,
    private: bool | None = typer.Option(None, "--private/--public",
                                        help="Publish private or public repos (default: as the source repo is)."),
    packages_only: bool = typer.Option(False, help="Publish .mlpackage files only."),
) -> None:
    """Watch a repo: every new commit on main (webhook or nightly sweep) is converted and published."""
    from service.db import session_scope
    from service.submit import requested_options
    from service.watch import add_watch

    options = requested_options(namespace=namespace, attentions=comma_list(attention), bits=bits, private=private,
                                packages_only=packages_only, deployment_target=deployment_target,
                                chunk_unet=chunk_unet, chunks_only=chunks_only, vae=vae, refiner=refiner)
    with session_scope() as session:
        add_watch(session, repo_id=repo, options=options)
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
