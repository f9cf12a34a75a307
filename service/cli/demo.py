"""``coreml-publish demo``: the service end to end, offline, in one command (a thin caller of
``service.demo``)."""

from __future__ import annotations

import sys

import typer

from service.cli.options import with_options
from service.cli.output import console, stdout
from workers.declare import JOB
from workers.options import JobOptions


@with_options(JOB, JobOptions, only=("attentions", "bits"))
def demo(
    port: int = typer.Option(8000, min=0, max=65535, help="Port of the status page and API on 127.0.0.1 "
                                                          "(0: a free one)."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Keep serving the status page until Ctrl+C "
                                                                "(--no-serve: exit once the job is done)."),
    database_url: str = typer.Option(None, help="Job database to record the demo's job in (default: a SQLite "
                                                "file in the demo's temporary folder)."),
    keep: bool = typer.Option(False, help="Keep the temporary folder (dev Hub data, job database, artifacts)."),
    *,
    options: dict,
) -> None:
    """Try everything offline: a dev Hub in a temporary folder, a tiny pipeline pushed to it, a job through every
    stage (packages only off a Mac), the published repos and the status page, served until Ctrl+C."""
    from service.cli.jobs import print_status, follow_local
    from service.db import session_scope
    from service.demo import (
        demo_session,
        download_line,
        listen,
        push_tiny_source,
        run_demo_job,
        serve_api,
        submit_demo_job,
    )
    from service.jobs import get_job

    sock = listen(port) if serve else None  # a busy port is said before any work
    try:
        with demo_session(database_url=database_url, keep=keep) as run:
            stdout.print(f"Dev Hub at {run.hub_url} (user dev, token hf_dev_token); working in {run.folder}",
                         soft_wrap=True)
            with console.status(f"building a tiny pipeline and pushing it to {run.source_repo}…"):
                commit = push_tiny_source(run)
            stdout.print(f"Pushed a tiny random pipeline to {run.source_repo} (commit {commit[:10]})")
            job_id = submit_demo_job(run, options)
            stdout.print(f"Job {job_id}: {run.source_repo}@{commit[:10]} running here.")
            follow_local(job_id, lambda j: run_demo_job(run, j), database_url=run.settings.database_url)
            with session_scope(run.settings.database_url) as session:
                job = get_job(session, job_id)
                print_status(job)
                state, repos = job.state, [p.repo_id for p in job.published]
                layouts = list(job.options["attentions"])
            if state != "succeeded":
                raise typer.Exit(1)
            stdout.print("Published (on the dev Hub, while the demo runs):")
            for repo in repos:
                stdout.print(f"  {repo}", soft_wrap=True)
            stdout.print("Download a variant's packages:")
            stdout.print(f"  {download_line(run, repos[-1], layouts[-1])}", soft_wrap=True)
            if sock is not None:
                host, bound = sock.getsockname()[:2]
                stdout.print(f"Status page: http://{host}:{bound}/ (the API's docs: http://{host}:{bound}/docs). "
                             "Press Ctrl+C to stop.")
                sys.stdout.flush()  # a script reading the output sees the address now
                serve_api(run, sock)
            folder = run.folder
    finally:
        if sock is not None:
            sock.close()
    stopped = "Stopped. " if serve else ""
    stdout.print(f"{stopped}Kept the demo's files in {folder}." if keep else
                 f"{stopped}Removed the dev Hub and the demo's folder {folder}.", soft_wrap=True)
