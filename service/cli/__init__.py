"""``coreml-publish``: the command line.  Commands are thin callers of library functions."""

from __future__ import annotations

import os
import sys

import typer

from service.cli import convert as _convert
from service.cli import devhub as _devhub
from service.cli import jobs as _jobs
from service.cli import models as _models
from service.cli import publish as _publish
from service.cli import service as _service
from service.cli import watch as _watch
from service.cli.output import quiet_libraries
from service.errors import CoreMLPublishError, OptionsError, ValidationError

app = typer.Typer(
    name="coreml-publish",
    help="Convert Stable Diffusion pipelines into Apple-compatible Core ML packages and publish them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("convert", no_args_is_help=True)(_convert.convert)
app.command("validate", no_args_is_help=True)(_convert.validate)
app.command("publish", no_args_is_help=True)(_publish.publish)
app.command("download", no_args_is_help=True)(_publish.download)
app.command("tiny-pipeline", no_args_is_help=True)(_models.tiny_pipeline)
app.command("devhub")(_devhub.devhub)
for _name in ("submit", "status", "jobs", "logs", "cancel", "retry"):
    app.command(_name, no_args_is_help=_name not in ("jobs",))(getattr(_jobs, _name))
app.command("worker")(_service.worker)
app.command("api")(_service.api)
app.add_typer(_service.db_app, name="db")
app.add_typer(_watch.watch_app, name="watch")
app.command("scheduler")(_watch.scheduler)

# exit codes: 1 for a bad source or options, 3 for a conversion that ran but failed validation
EXIT_CODES: dict[type[Exception], int] = {ValidationError: 3, OptionsError: 2, CoreMLPublishError: 1}


def main() -> None:
    """Entry point: run the app; expected errors become one line on stderr (tracebacks with DEBUG=1)."""
    debug = _debug()
    quiet_libraries(debug)
    try:
        code = app(standalone_mode=False)  # without standalone mode, typer.Exit comes back as a return value
        if isinstance(code, int) and code:
            sys.exit(code)
    except CoreMLPublishError as e:
        if debug:
            raise
        code = next(c for t, c in EXIT_CODES.items() if isinstance(e, t))
        print(f"Error: {e.one_line()}", file=sys.stderr)
        sys.exit(code)
    except (typer.Abort, KeyboardInterrupt):
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as e:  # click usage errors and the like
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        database = _database_problem(e)
        if database and not debug:
            print(f"Error: {database}", file=sys.stderr)
            sys.exit(1)
        raise


def _debug() -> bool:
    """COREML_PUBLISH_DEBUG from the settings (environment or .env); from the environment alone when the
    settings cannot be read, so that their error can be shown in full."""
    from service.settings import get_settings

    try:
        return get_settings().debug
    except Exception:
        return os.environ.get("COREML_PUBLISH_DEBUG", "").lower() in ("1", "true", "yes", "on")


def _database_problem(error: Exception) -> str | None:
    """One line for a job database that cannot be reached or has no tables yet, else None."""
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    if not isinstance(error, DBAPIError):
        return None
    from service.settings import get_settings

    url = make_url(get_settings().database_url).render_as_string(hide_password=True)
    reason = str(error.orig).strip().splitlines()[0] if error.orig is not None else error.__class__.__name__
    return (f"the job database {url} cannot be used ({reason}). Run `coreml-publish db upgrade`, "
            "and check COREML_PUBLISH_DATABASE_URL.")
