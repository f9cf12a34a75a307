"""Every option is declared once (workers.options): the command lines, the API's request schema and the dedupe
key are derived from the declarations, so an option added to a subclass appears in all of them."""

from __future__ import annotations

import re
from dataclasses import dataclass

import typer
from fastapi import FastAPI
from typer.testing import CliRunner

from service.api import create_api
from service.api.schemas import job_request
from service.cli import app
from service.cli.jobs import submit_command
from service.settings import Settings
from workers.declare import CONVERT, JOB, option
from workers.options import ConvertOptions, JobOptions, SourceOptions


@dataclass(frozen=True, kw_only=True)
class ShinyOptions(JobOptions):
    shine: int = option(0, surfaces={JOB}, help="Polish every package this many times (a throw-away option).")


def _help(command: typer.Typer, *words: str) -> str:
    result = CliRunner().invoke(command, [*words, "--help"], env={"COLUMNS": "300", "TERM": "dumb"})
    assert result.exit_code == 0, result.output
    return re.sub(r"\s+", " ", result.output)


def _flag(name: str, declared) -> str:
    return (declared.flag or "--" + name.replace("_", "-")).split("/")[0]


def test_a_new_option_appears_in_submit_help_the_openapi_schema_and_the_dedupe_key() -> None:
    cli = typer.Typer()
    cli.command("submit")(submit_command(ShinyOptions))
    cli.command("other")(lambda: None)  # two commands: typer keeps the command's name
    assert "--shine" in _help(cli, "submit") and "Polish every package this many times" in _help(cli, "submit")

    request = job_request(ShinyOptions)

    def submit(body) -> None:
        """A route taking the derived request, as the API's /jobs does."""

    submit.__annotations__["body"] = request
    api = FastAPI()
    api.post("/jobs")(submit)
    shine = api.openapi()["components"]["schemas"]["JobRequest"]["properties"]["shine"]
    assert shine["default"] == 0 and "Polish every package" in shine["description"]
    assert request(repo="org/model", shine=3).option_values()["shine"] == 3

    plain = ShinyOptions(namespace="org")
    shiny = ShinyOptions.from_user(namespace="org", shine=2)
    assert "shine" not in plain.key() and '"shine":2' in shiny.key()
    assert plain.key() == JobOptions(namespace="org").key()  # jobs recorded before the option keep their key
    assert ShinyOptions.from_dict(shiny.stored()) == shiny


def test_every_declared_option_is_on_its_commands_and_in_the_api() -> None:
    submit, watch, convert = _help(app, "submit"), _help(app, "watch", "add"), _help(app, "convert")
    for f, declared in JobOptions.declared(JOB):
        assert _flag(f.name, declared) in submit and _flag(f.name, declared) in watch, f.name
    for group in (ConvertOptions, SourceOptions):
        for f, declared in group.declared(CONVERT):
            assert _flag(f.name, declared) in convert, f.name
    schema = create_api(Settings(database_url="sqlite://")).openapi()["components"]["schemas"]["JobRequest"]
    assert set(schema["properties"]) == {"repo", "revision"} | {f.name for f, _ in JobOptions.declared(JOB)}
    for f, declared in JobOptions.declared(JOB):
        assert schema["properties"][f.name]["description"] == declared.help


def test_a_repeated_flag_collects_every_value_in_order() -> None:
    """``--lora`` once per LoRA (each may also be a comma-separated list): all of them, in the order given, as the
    options normalise them; the API takes the same list."""
    from service.cli.options import typed_values

    values = typed_values(JobOptions, JOB, {"loras": ["org/a:0.5", "org/b,org/c:2"]})
    assert values == {"loras": ("org/a:0.5", "org/b", "org/c:2")}
    assert JobOptions.from_user(namespace="me", **values).loras == ("org/a:0.5", "org/b:1", "org/c:2")
    assert typed_values(JobOptions, JOB, {"loras": None}) == {}
    schema = job_request().model_json_schema()["properties"]["loras"]
    assert schema["maxItems"] == 8 and schema["items"]["type"] == "string"
