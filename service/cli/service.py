"""``worker``, ``api`` and ``db upgrade``: running the service."""

from __future__ import annotations

import copy
import logging
import re
from urllib.parse import unquote

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


# a query parameter whose name says it carries a credential: its value is masked in every log line
_PARAM = re.compile(r"([?&;])([^=&#\s\"']{1,100})=([^&#\s\"']*)")
_SECRET_NAME = re.compile(r"token|secret|passw|key|sig|auth|credential|session|code", re.IGNORECASE)
_HUB_TOKEN = re.compile(r"\b(hf|api_org)_[A-Za-z0-9]{16,}")
_BEARER = re.compile(r"\b(bearer\s+)[\w.~+/=-]+", re.IGNORECASE)
MASK = "***"
SHUTDOWN_GRACE = 10  # seconds the API waits for requests in progress after SIGTERM


def mask_secrets(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with credentials masked: values of token-like query parameters (``?token=``,
    ``&access_token=``, ...), Hugging Face tokens (``hf_...``), bearer tokens, and the given secrets."""
    for secret in secrets:
        text = text.replace(secret, MASK)
    text = _PARAM.sub(lambda m: f"{m[1]}{m[2]}={MASK}" if m[3] and _SECRET_NAME.search(unquote(m[2])) else m[0],
                      text)
    return _BEARER.sub(rf"\1{MASK}", _HUB_TOKEN.sub(rf"\1_{MASK}", text))


class SecretFilter(logging.Filter):
    """Masks credentials in a record's message and arguments (uvicorn's access log passes the request
    line, query string included, as an argument)."""

    def __init__(self, secrets: list[str] | tuple[str, ...] = ()) -> None:
        super().__init__()
        self.secrets = tuple(s for s in secrets if s and len(s) >= 4)

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = mask_secrets(record.msg, self.secrets)
        if isinstance(record.args, tuple):
            record.args = tuple(mask_secrets(a, self.secrets) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: mask_secrets(v, self.secrets) if isinstance(v, str) else v
                           for k, v in record.args.items()}
        return True


def api_log_config(secrets: list[str] | tuple[str, ...] = ()) -> dict:
    """uvicorn's logging configuration with :class:`SecretFilter` on every handler, and the root logger
    (the API's own warnings) writing through the same filtered handler."""
    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["filters"] = {"secrets": {"()": f"{__name__}.SecretFilter", "secrets": list(secrets)}}
    for handler in config["handlers"].values():
        handler["filters"] = ["secrets"]
    config["root"] = {"handlers": ["default"], "level": "WARNING"}
    return config


def api(host: str = typer.Option(None, help="Address (default: COREML_PUBLISH_API_HOST)."),
        port: int = typer.Option(None, help="Port (default: COREML_PUBLISH_API_PORT).")) -> None:
    """Serve the HTTP API (OpenAPI docs at /docs)."""
    import uvicorn

    from service.api import create_api
    from service.settings import get_settings

    settings = get_settings()
    settings.check_api(host)
    secrets = [s.get_secret_value() for s in (settings.api_token, settings.webhook_secret) if s is not None]
    # a SIGTERM ends the process within SHUTDOWN_GRACE seconds, whatever requests are still in progress
    uvicorn.run(create_api(settings), host=host or settings.api_host, port=port or settings.api_port,
                log_config=api_log_config(secrets), timeout_graceful_shutdown=SHUTDOWN_GRACE)
