"""``worker``, ``api`` and ``db upgrade``: running the service."""

from __future__ import annotations

import typer

from service.cli.output import stdout

db_app = typer.Typer(help="Database schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head", help="Migration to upgrade to.")) -> None:
    """Create or migrate the database schema (COREML_PUBLISH_DATABASE_URL)."""
    from service.db import upgrade
    from service.settings import get_settings

    get_settings().check_production()
    url = get_settings().database_url
    upgrade(url, revision)
    stdout.print(f"Database at {url.split('@')[-1]} is at {revision}.")


def worker(
    queues: str = typer.Option(None, help="Comma-separated queues (default: what this host can serve)."),
    concurrency: int = typer.Option(None, help="Tasks at once (default: COREML_PUBLISH_WORKER_CONCURRENCY)."),
    loglevel: str = typer.Option("info", help="Celery log level."),
) -> None:
    """Run a Celery worker for the queues this host can serve (convert needs coremltools+torch; macos needs Xcode)."""
    import socket

    from service.settings import get_settings
    from service.celery_app import app, detect_queues

    settings = get_settings()
    settings.check_production()
    chosen = [q.strip() for q in queues.split(",")] if queues else detect_queues()
    stdout.print(f"Worker on {socket.gethostname()} serving: {', '.join(chosen)}")
    args = ["worker", "-Q", ",".join(chosen), "-c", str(concurrency or settings.worker_concurrency),
            "--prefetch-multiplier", "1", "-l", loglevel, "-n", f"coreml-{'-'.join(chosen)}@%h"]
    if "convert" in chosen:
        args += ["--max-tasks-per-child", "1"]  # conversions leave large heaps behind: recycle the process
    app.worker_main(args)


def api(host: str = typer.Option(None, help="Address (default: COREML_PUBLISH_API_HOST)."),
        port: int = typer.Option(None, help="Port (default: COREML_PUBLISH_API_PORT).")) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from service.api import create_api
    from service.settings import get_settings

    settings = get_settings()
    settings.check_api(host)
    uvicorn.run(create_api(settings), host=host or settings.api_host, port=port or settings.api_port)
