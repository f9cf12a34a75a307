"""``coreml-publish demo``: the whole service offline, in a temporary folder: a dev Hub, a tiny pipeline pushed to
it, a job run through every stage in this process (packages only off a Mac), and the HTTP API serving the status
page over the job's database until interrupted.  Everything it made goes when it ends."""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from workers.devtools.devhub.server import DEFAULT_TOKEN, DEFAULT_USER
from service.errors import OptionsError
from service.settings import Settings, get_settings

SOURCE_REPO = f"{DEFAULT_USER}/tiny-sd"


@dataclass
class Demo:
    """A running demo: its folder, dev Hub and the settings its job and API use."""

    folder: Path
    hub_url: str
    settings: Settings
    source_repo: str = SOURCE_REPO


def listen(port: int, host: str = "127.0.0.1") -> socket.socket:
    """A socket bound to ``host:port`` for the API, taken before any work so a busy port is said at once.

    Raises OptionsError when the port cannot be bound.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise OptionsError(f"cannot listen on {host}:{port} ({e.strerror or e.__class__.__name__})",
                           hint="Pass another --port (0 picks a free one), or --no-serve.") from None
    sock.listen(128)  # connections wait in the backlog until the API serves them
    return sock


@contextmanager
def demo_session(*, database_url: str | None = None, keep: bool = False) -> Iterator[Demo]:
    """A temporary folder holding a running dev Hub (user ``dev``), a migrated job database (a SQLite file there
    unless ``database_url`` names another) and the artifact store; removed on exit unless ``keep``.

    While it is open, downloads go to a Hub cache in the folder (the user's own cache is left alone) and the
    dev Hub's token is the publishing token; SIGTERM ends it like Ctrl+C, so the folder is removed either way.
    """
    import huggingface_hub.constants as hub_constants

    from service.db import engine_for, upgrade
    from workers.devtools.devhub.server import running_devhub
    from workers.devtools.devhub.store import Store

    settings = get_settings()
    folder = Path(tempfile.mkdtemp(prefix="coreml-publish-demo-"))
    restore = _interrupt_on_sigterm()
    saved = {"HF_HUB_CACHE": hub_constants.HF_HUB_CACHE, "HF_HUB_DISABLE_XET": hub_constants.HF_HUB_DISABLE_XET}
    url = database_url or f"sqlite:///{folder / 'jobs.db'}"
    try:
        hub_constants.HF_HUB_CACHE = str(folder / "hf-cache")
        hub_constants.HF_HUB_DISABLE_XET = True  # the dev Hub speaks plain HTTP and LFS
        Store(folder / "devhub").add_token(DEFAULT_USER, token=DEFAULT_TOKEN)
        with running_devhub(folder / "devhub") as hub_url:
            upgrade(url)
            yield Demo(folder, hub_url, settings.model_copy(update={
                "database_url": url, "hub_endpoint": hub_url, "default_namespace": DEFAULT_USER,
                "artifact_store": str(folder / "artifacts"), "scratch": str(folder / "scratch")}))
    finally:
        for name, value in saved.items():
            setattr(hub_constants, name, value)
        engine_for(url).dispose()  # the SQLite file is closed before its folder goes
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
        restore()


def push_tiny_source(demo: Demo, *, style: str = "sd1") -> str:
    """Build a tiny random pipeline and push it to the demo's dev Hub as ``dev/tiny-sd``; returns the commit."""
    from huggingface_hub import HfApi

    from workers.devtools.tiny import build_tiny_pipeline

    folder = build_tiny_pipeline(demo.folder / "tiny-sd", style=style, seed=0)
    api = HfApi(endpoint=demo.hub_url, token=DEFAULT_TOKEN)
    api.create_repo(demo.source_repo, exist_ok=True)
    return api.upload_folder(repo_id=demo.source_repo, folder_path=str(folder),
                             commit_message=f"Tiny random {style} pipeline").oid


def submit_demo_job(demo: Demo, values: dict | None = None) -> int:
    """Record the demo's job with the options in ``values`` (as a user typed them), publishing public repos
    under the dev user, packages only unless ``xcrun coremlcompiler`` is here; returns its id."""
    from service.submit import create_job, requested_options
    from workers.package.compile import find_compiler

    options = requested_options({**(values or {}), "namespace": DEFAULT_USER, "private": False,
                                 "packages_only": find_compiler() is None}, settings=demo.settings)
    return create_job(source_repo=demo.source_repo, options=options, local=True, settings=demo.settings).job.id


def run_demo_job(demo: Demo, job_id: int) -> None:
    """Run every stage of the job in this process, with the dev Hub's token as the publishing token."""
    import os

    from service.runner import run_local

    saved = os.environ.get("HF_TOKEN")
    os.environ["HF_TOKEN"] = DEFAULT_TOKEN  # publishing reads huggingface_hub's standard places
    try:
        run_local(job_id, settings=demo.settings)
    finally:
        if saved is None:
            os.environ.pop("HF_TOKEN", None)
        else:
            os.environ["HF_TOKEN"] = saved


def download_line(demo: Demo, repo_id: str, variant: str) -> str:
    """The shell line that downloads one variant's packages of a published repo from the demo's dev Hub."""
    code = (f"from huggingface_hub import snapshot_download as s; "
            f"print(s({repo_id!r}, allow_patterns={variant + '/packages/*'!r}))")
    return f"HF_ENDPOINT={demo.hub_url} HF_HUB_DISABLE_XET=1 python -c \"{code}\""


def serve_api(demo: Demo, sock: socket.socket) -> None:
    """Serve the HTTP API (and its status page) over the demo's job database on ``sock`` until Ctrl+C."""
    import uvicorn

    from service.api import create_api

    host = sock.getsockname()[0]
    demo.settings.check_api(host)
    server = uvicorn.Server(uvicorn.Config(create_api(demo.settings), log_level="warning", access_log=False))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops gracefully, then passes the signal on: that is how it ends
        pass
    finally:
        sock.close()


def _interrupt_on_sigterm():
    """Make SIGTERM raise KeyboardInterrupt (so cleanup runs) until the returned function restores it."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum, frame) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    return lambda: signal.signal(signal.SIGTERM, previous)
