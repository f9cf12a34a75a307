"""``coreml-publish``: the command line.  Commands are thin callers of library functions."""

from __future__ import annotations

import os
import sys

import typer

from service.cli import convert as _convert
from service.cli import demo as _demo
from service.cli import devhub as _devhub
from service.cli import jobs as _jobs
from service.cli import models as _models
from service.cli import publish as _publish
from service.cli import service as _service
from service.cli import watch as _watch
from service.cli.output import quiet_libraries
from service.errors import CoreMLPublishError, OptionsError, OutputError, ServiceUnavailableError, ValidationError

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
app.command("demo")(_demo.demo)
for _name in ("submit", "status", "jobs", "logs", "cancel", "retry", "reap"):
    app.command(_name, no_args_is_help=_name not in ("jobs", "reap"))(getattr(_jobs, _name))
app.command("worker")(_service.worker)
app.command("api")(_service.api)
app.add_typer(_service.db_app, name="db")
app.add_typer(_watch.watch_app, name="watch")
app.command("scheduler")(_watch.scheduler)

# exit codes: 1 for a bad source, an output that is missing, failed or incomplete, and other expected failures
# (infrastructure down included), 2 for bad options and usage errors (click's own code), 3 for a conversion
# that ran but failed validation
EXIT_CODES: dict[type[Exception], int] = {ValidationError: 3, OutputError: 1, OptionsError: 2,
                                          ServiceUnavailableError: 1, CoreMLPublishError: 1}


def click_exceptions() -> tuple[type[Exception], ...]:
    """The base classes of click's usage errors (UsageError, BadParameter, NoSuchOption, ...) as typer raises them.

    This typer vendors click as ``typer._click``, whose ClickException derives from ``typer.TyperException``
    rather than ``click.ClickException``; older typers raise the click package's own.  Both are covered.
    """
    kinds: list[type[Exception]] = []
    if isinstance(getattr(typer, "TyperException", None), type):
        kinds.append(typer.TyperException)
    try:
        from typer._click.exceptions import ClickException as Vendored

        kinds.append(Vendored)
    except ImportError:
        pass
    try:
        import click

        kinds.append(click.ClickException)
    except ImportError:
        pass
    return tuple(kinds)


def aborts() -> tuple[type[BaseException], ...]:
    kinds: list[type[BaseException]] = [typer.Abort, KeyboardInterrupt]
    try:
        import click

        kinds.append(click.exceptions.Abort)
    except ImportError:
        pass
    return tuple(kinds)


def main() -> None:
    """Entry point: run the app; expected errors become one line on stderr (tracebacks with DEBUG=1).

    Usage errors (unknown commands and options, bad or missing values) print click's usage line and
    ``Error: ...`` and exit 2.
    """
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
    except aborts():
        print("Aborted.", file=sys.stderr)
        sys.exit(130)
    except SystemExit:
        raise
    except click_exceptions() as e:  # usage errors: click's message, exit 2 (1 for other click errors)
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            print(f"Error: {' '.join(str(e.format_message()).split())}", file=sys.stderr)
        sys.exit(getattr(e, "exit_code", 2) or 2)
    except Exception as e:
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
    """One line for a job database that cannot be reached, has no tables yet or has a malformed URL, else None."""
    if "sqlalchemy" not in sys.modules:
        return None
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, TimeoutError as PoolTimeoutError

    from service.settings import get_settings

    if isinstance(error, ArgumentError) and (isinstance(error, NoSuchModuleError) or not _parses(make_url)):
        return (f"COREML_PUBLISH_DATABASE_URL is not a usable SQLAlchemy URL ({_first_line(error)}). "
                "Use e.g. sqlite:///coreml-publish.db or postgresql+psycopg://user@host/db.")
    if isinstance(error, ImportError) and _raised_in_sqlalchemy(error):  # the URL names a driver not installed
        return (f"the database driver COREML_PUBLISH_DATABASE_URL asks for is not installed ({_first_line(error)}). "
                "Install it, or use postgresql+psycopg://… (installed with the service).")
    if not isinstance(error, (DBAPIError, PoolTimeoutError)):
        return None
    url = make_url(get_settings().database_url).render_as_string(hide_password=True)
    orig = getattr(error, "orig", None)
    reason = _first_line(orig) if orig is not None else error.__class__.__name__
    lowered = reason.lower()
    if "no such table" in lowered or ("relation" in lowered and "does not exist" in lowered):
        return f"the job database {url} has no tables yet ({reason}). Run `coreml-publish db upgrade`."
    return (f"the job database {url} cannot be used ({reason}). Check that it is running and "
            "COREML_PUBLISH_DATABASE_URL; a new database needs `coreml-publish db upgrade`.")


def _raised_in_sqlalchemy(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None:
        if f"{os.sep}sqlalchemy{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


def _parses(make_url) -> bool:
    from service.settings import get_settings

    try:
        make_url(get_settings().database_url)
        return True
    except Exception:  # an ArgumentError, or worse: either way the URL is the problem
        return False


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else error.__class__.__name__
