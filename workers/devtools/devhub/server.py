"""Running the dev Hub: in the foreground (``coreml-publish devhub``) or in a background thread (tests)."""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

DEFAULT_USER = "dev"
DEFAULT_TOKEN = "hf_dev_token"  # a development tool's documented default, like a database's test password


def serve(data: Path, *, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Serve the dev Hub until interrupted."""
    import uvicorn

    from workers.devtools.devhub.app import create_app

    uvicorn.run(create_app(data), host=host, port=port, log_level="warning")


@contextmanager
def running_devhub(data: Path, *, host: str = "127.0.0.1", port: int = 0, page_size: int = 1000) -> Iterator[str]:
    """Run the dev Hub in a thread for the duration of the block; yields its URL."""
    import uvicorn

    from workers.devtools.devhub.app import create_app

    app = create_app(data, page_size=page_size)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dev Hub did not start")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
