"""docker/compose.yaml and docker/Dockerfile checked against the code: commands, settings, routes, files."""

from __future__ import annotations

import re
from pathlib import Path

import typer
import yaml

from service.api import create_api
from service.cli import app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker" / "compose.yaml").read_text())
DOCKERFILE = (ROOT / "docker" / "Dockerfile").read_text()
OTHER_VARIABLES = {"HF_TOKEN", "HF_ENDPOINT", "HF_HUB_DISABLE_TELEMETRY", "PIP_EXTRA_INDEX_URL", "PIP_NO_CACHE_DIR",
                   "PYTHONUNBUFFERED"}  # read by huggingface_hub, pip and Python themselves


def _check_command(argv: list[str]) -> None:
    """``coreml-publish SUB … --option …``: the subcommand exists and takes every option given."""
    assert argv[0] == "coreml-publish", argv
    command = typer.main.get_command(app)  # typer's own (vendored) click: groups are told by their commands
    words = list(argv[1:])
    while hasattr(command, "commands") and words and not words[0].startswith("-"):
        name = words.pop(0)
        assert name in command.commands, f"{argv}: no command {name}"
        command = command.commands[name]
    known = {opt for param in command.params for opt in getattr(param, "opts", []) + getattr(param, "secondary_opts", [])}
    given = {word.split("=")[0] for word in words if word.startswith("-")}
    assert given <= known, f"{argv}: unknown options {given - known}"


def _app_services() -> dict[str, dict]:
    return {name: service for name, service in COMPOSE["services"].items()
            if isinstance(service.get("command"), list) and service["command"][0] == "coreml-publish"}


def test_every_compose_command_exists_in_the_cli() -> None:
    services = _app_services()
    assert set(services) == {"migrate", "api", "worker", "scheduler"}
    for service in services.values():
        _check_command(service["command"])


def test_every_variable_compose_and_the_dockerfile_set_is_a_known_setting() -> None:
    settings = {f"COREML_PUBLISH_{name.upper()}" for name in Settings.model_fields}
    for name, service in _app_services().items():
        unknown = set(service["environment"]) - settings - OTHER_VARIABLES
        assert not unknown, f"{name} sets {unknown}"
    set_in_image = set(re.findall(r"^\s*(?:ENV\s+)?([A-Z][A-Z0-9_]+)=", DOCKERFILE, re.MULTILINE))
    assert set_in_image and not set_in_image - settings - OTHER_VARIABLES


def test_healthchecks_and_ports_point_at_real_routes() -> None:
    routes = set(create_api(Settings(database_url="sqlite://")).openapi()["paths"])
    api = COMPOSE["services"]["api"]
    port = api["command"][api["command"].index("--port") + 1]
    assert f"{port}:{port}" in api["ports"] and f"EXPOSE {port}" in DOCKERFILE
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/[\w/]*)", " ".join(api["healthcheck"]["test"]))
    assert urls and all(p == port and path in routes for p, path in urls)
    for name in ("postgres", "redis"):
        assert COMPOSE["services"][name]["healthcheck"]["test"]


def test_the_dockerfile_copies_what_exists_and_runs_a_real_command() -> None:
    for source in re.findall(r"^COPY\s+(.+?)\s+\S+$", DOCKERFILE, re.MULTILINE):
        for path in source.split():
            assert (ROOT / path).exists(), path
    command = re.search(r'^CMD\s+(\[.*\])$', DOCKERFILE, re.MULTILINE)
    assert command
    _check_command(yaml.safe_load(command[1]))
