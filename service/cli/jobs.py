"""``submit``, ``status``, ``jobs``, ``logs``, ``cancel``, ``retry``: the job service from the terminal."""

from __future__ import annotations

import time

import typer
from rich.markup import escape
from rich.table import Table

from service.cli.options import with_options
from service.cli.output import console, print_json, print_listing, short_sha, stdout
from workers.declare import JOB
from workers.options import JobOptions

FINISHED = ("succeeded", "failed", "cancelled")
MAX_ID = 2**31 - 1  # the job database's integer range
JOB_ID_HELP = "Job number (see `coreml-publish jobs`)."


def submit_command(options_type: type[JobOptions] = JobOptions):
    """The ``submit`` command for jobs with ``options_type``'s options (every option declared for jobs)."""

    @with_options(JOB, options_type)
    def submit(
        repo: str = typer.Argument(..., help="Hub repo id of a Stable Diffusion 1.x/2.x or SDXL diffusers pipeline."),
        revision: str = typer.Option(None, help="Branch, tag or commit (default: main); pinned to its sha."),
        *,
        wait: bool = typer.Option(False, help="Follow the job until it finishes."),
        local: bool = typer.Option(False, help="Run every stage in this process (no broker, no workers)."),
        options: dict,
    ) -> None:
        """Submit a conversion job and return at once (or follow it with --wait; or run it here with --local)."""
        from service.db import session_scope
        from service.jobs import get_job, publication_notes
        from service.runner import run_local
        from service.settings import get_settings
        from service.submit import create_job, requested_options

        settings = get_settings()
        settings.check_production()
        job_options = requested_options(options, settings=settings, options_type=options_type)
        with console.status(f"resolving {repo}…"):
            submitted = create_job(source_repo=repo, options=job_options, revision=revision, local=local)
        job = submitted.job
        if not submitted.created:
            stdout.print(f"Job {job.id} already exists for {repo}@{job.source_sha[:10]} with these options "
                         f"({job.state}).")
        else:
            stdout.print(f"Job {job.id}: {repo}@{job.source_sha[:10]} {'running here' if local else 'queued'}.")
        for note in publication_notes(submitted.publications, hub=settings.hub_link(), source_sha=job.source_sha):
            stdout.print(note[0].upper() + note[1:] + ".", soft_wrap=True, markup=False)
        if local and submitted.created:
            follow_local(job.id, run_local)
        elif wait:
            follow(job.id)
        if local or wait:
            with session_scope() as session:
                final = get_job(session, job.id)
                print_status(final)
                if final.state != "succeeded":
                    raise typer.Exit(1)

    return submit


submit = submit_command()


def follow_local(job_id: int, run, *, database_url: str | None = None) -> None:
    """Run a job with ``run(job_id)`` in a thread and print its log and progress until it returns."""
    import threading

    errors: list[BaseException] = []

    def target() -> None:
        try:
            run(job_id)
        except BaseException as e:  # recorded on the job already; shown by the status below
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    _stream(job_id, until=lambda: not thread.is_alive(), progress=True, database_url=database_url)


def follow(job_id: int) -> None:
    """Print the job's log as it grows, with its stages' progress, until the job finishes."""
    from service.db import session_scope
    from service.jobs import get_job

    def finished() -> bool:
        with session_scope() as session:
            return get_job(session, job_id).state in FINISHED

    _stream(job_id, until=finished, progress=True)


def _stream(job_id: int, *, until, progress: bool = False, database_url: str | None = None) -> None:
    """Print the job's log lines (on stdout) as they come until ``until()``; with ``progress``, its stages' progress
    too (on stderr)."""
    from sqlalchemy import select

    from service.cli.progress import ProgressDisplay, StageRow
    from service.db import session_scope
    from service.models import JobEvent, StageResult

    seen = 0
    display = ProgressDisplay() if progress else None
    try:
        while True:
            done = until()
            with session_scope(database_url) as session:
                events = list(session.scalars(select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > seen)
                                              .order_by(JobEvent.id)))
                rows = [StageRow(*row) for row in session.execute(
                    select(StageResult.id, StageResult.stage, StageResult.part, StageResult.state,
                           StageResult.started_at, StageResult.duration, StageResult.progress)
                    .where(StageResult.job_id == job_id).order_by(StageResult.id))] if display else []
            for event in events:
                seen = event.id
                mark = {"error": "[red]✗[/]", "warning": "[yellow]![/]"}.get(event.level, "·")
                stdout.print(f"{mark} {event.at:%H:%M:%S} {escape(event.message)}", highlight=False)
            if display is not None:
                display.update(rows)
            if done:
                return
            time.sleep(0.5)
    finally:
        if display is not None:
            display.close()


def _figures(figure: dict) -> str:
    """``program 57.1≥35, torch 72.0≥45`` (jobs recorded before the program check have the torch figure only)."""
    return ", ".join(f"{name.removeprefix('psnr_')} {figure[name]:.1f}≥"
                     f"{figure.get(name + '_threshold', figure.get('threshold')):g}"
                     for name in ("psnr_program", "psnr_torch") if figure.get(name) is not None)


def print_status(job) -> None:
    from service.jobs import job_summary

    data = job_summary(job)
    stdout.print(f"Job {data['id']} ({data['state']}) {data['source_repo']}@{(data['source_sha'] or '')[:10]} "
                 f"(trigger {data['trigger']})", markup=False)
    if data["error"]:
        stdout.print(f"  error: {data['error']}", markup=False)
    table = Table("stage", "part", "state", "attempts", "host", "seconds", "figures")
    for s in data["stages"]:
        figures = s["figures"] or {}
        psnrs = [f"{k}: {_figures(v)}" for k, v in figures.items()
                 if isinstance(v, dict) and v.get("psnr_torch") is not None]
        table.add_row(s["stage"], s["part"], s["state"], str(s["attempts"]), s["worker_host"] or "",
                      f"{s['duration']:.1f}" if s["duration"] is not None else "",
                      "\n".join(psnrs) or (s["error"] or ""))
    stdout.print(table)
    for p in data["published"]:
        stdout.print(f"  published {p['repo_id']} at {p['commit'][:10]}" + ("" if p["changed"] else " (no changes)"))


JSON = typer.Option(False, "--json", help="Print one JSON document with every value whole, for scripts.")


def status(job_id: int = typer.Argument(..., min=1, max=MAX_ID, help=JOB_ID_HELP), as_json: bool = JSON) -> None:
    """Show a job: state, each stage with its figures, published repos."""
    from service.db import session_scope
    from service.jobs import get_job, job_summary

    with session_scope() as session:
        job = get_job(session, job_id)
        if as_json:
            print_json(job_summary(job))
        else:
            print_status(job)


def jobs(state: str = typer.Option(None, help="Only jobs in this state."),
         limit: int = typer.Option(50, min=1, max=500, help="How many, newest first (1-500)."),
         as_json: bool = JSON) -> None:
    """List jobs, newest first."""
    from service.db import session_scope
    from service.jobs import job_summary, list_jobs

    table = Table("id", "source", "sha", "state", "trigger", "created", "published")
    with session_scope() as session:
        found = list_jobs(session, state=state, limit=limit)
        if as_json:
            print_json([job_summary(job) for job in found])
            return
        for job in found:
            table.add_row(str(job.id), job.source_repo, short_sha(job.source_sha), job.state, job.trigger,
                          f"{job.created_at:%Y-%m-%d %H:%M}", ", ".join(p.repo_id for p in job.published))
    print_listing(table)


def logs(job_id: int = typer.Argument(..., min=1, max=MAX_ID, help=JOB_ID_HELP),
         follow_: bool = typer.Option(False, "--follow", "-f", help="Keep printing until the job finishes."),
         as_json: bool = JSON) -> None:
    """Print a job's log."""
    from service.db import session_scope
    from service.errors import OptionsError
    from service.jobs import get_job

    if as_json and follow_:
        raise OptionsError("--json prints the log as one document and --follow keeps printing: pick one",
                           hint="Use `logs N --follow` to watch a job, `logs N --json` for what it logged so far.")
    with session_scope() as session:
        get_job(session, job_id)
    if as_json:
        print_json(_events(job_id))
    elif follow_:
        follow(job_id)
    else:
        _stream(job_id, until=lambda: True)


def _events(job_id: int) -> list[dict]:
    """Every log line of a job, oldest first, as JSON-ready dicts."""
    from sqlalchemy import select

    from service.db import session_scope
    from service.models import JobEvent

    with session_scope() as session:
        return [{"at": e.at.isoformat(), "level": e.level, "stage": e.stage, "message": e.message}
                for e in session.scalars(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id))]


def cancel(job_id: int = typer.Argument(..., min=1, max=MAX_ID, help=JOB_ID_HELP)) -> None:
    """Cancel a job; running stages stop at their next step."""
    from service.db import session_scope
    from service.jobs import cancel_job

    with session_scope() as session:
        cancel_job(session, job_id)
    stdout.print(f"Job {job_id} cancelled.")


def retry(job_id: int = typer.Argument(..., min=1, max=MAX_ID, help=JOB_ID_HELP)) -> None:
    """Queue a failed or cancelled job again; finished stages are not redone."""
    from service.submit import retry as retry_job

    retry_job(job_id)
    stdout.print(f"Job {job_id} queued again.")


def reap() -> None:
    """Send stuck jobs again (never reached the queue; their worker went silent), or fail them after
    COREML_PUBLISH_MAX_REVIVALS tries.  The scheduler does this every minute."""
    from service.reaper import reap as run_reap

    done = run_reap()
    for item in done:
        stdout.print(f"Job {item.job_id}: {item.action} ({item.reason}).")
    if not done:
        stdout.print("No stuck jobs.")
