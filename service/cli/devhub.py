"""``coreml-publish devhub``: run the local Hub-compatible server (a development and test tool)."""

from __future__ import annotations

from pathlib import Path

import typer

from service.cli.output import stdout


def devhub(
    data: Path = typer.Option(Path("devhub-data"), help="Folder holding the dev Hub's repos and objects."),
    host: str = typer.Option("127.0.0.1", help="Address to bind (keep it on loopback: this is a dev tool)."),
    port: int = typer.Option(8080, help="Port to listen on."),
    user: list[str] = typer.Option([], help="USER:TOKEN[:org1,org2] with write rights; repeatable. "
                                            "Default: dev:hf_dev_token."),
    read_only: list[str] = typer.Option([], help="USER:TOKEN[:orgs] that may only read; repeatable."),
    webhook: str = typer.Option(None, help="URL to POST to on every commit, like a Hub webhook "
                                            "(e.g. http://127.0.0.1:8000/webhooks/hub)."),
    webhook_secret: str = typer.Option(None, help="Secret sent with the webhook in X-Webhook-Secret."),
) -> None:
    """Serve a local Hugging Face Hub-compatible API for development and tests (not for production)."""
    from workers.devtools.devhub.server import DEFAULT_TOKEN, DEFAULT_USER, serve
    from workers.devtools.devhub.store import Store
    from service.errors import OptionsError

    store = Store(data)
    entries = [(u, True) for u in user] + [(u, False) for u in read_only]
    if not entries and not store.tokens():
        entries = [(f"{DEFAULT_USER}:{DEFAULT_TOKEN}", True)]
    for entry, write in entries:
        parts = entry.split(":")
        if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
            raise OptionsError(f"--user/--read-only takes USER:TOKEN[:orgs], not {entry!r}",
                               hint="For example --user alice:hf_alice_token:my-org.")
        store.add_token(parts[0], token=parts[1], orgs=[o for o in (parts[2] if len(parts) == 3 else "").split(",") if o],
                        write=write)
    if webhook:
        from workers.devtools.devhub.common import Webhooks

        Webhooks(data / "webhooks.json").add(webhook, webhook_secret, None)
    url = f"http://{host}:{port}"
    stdout.print(f"Dev Hub at {url} (data in {data}). Point the Hub client at it with:\n"
                 f"  export HF_ENDPOINT={url} HF_HUB_DISABLE_XET=1 HF_TOKEN=<a token above>\n"
                 "Press Ctrl+C to stop.")
    serve(data, host=host, port=port)
