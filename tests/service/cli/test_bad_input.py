"""Bad input at the command line: click's usage message and exit 2 for usage errors, one `Error:` line with the
documented exit code for everything else (2 options, 1 sources and infrastructure), never a traceback, nothing
written and no job recorded.  Each case is a real `coreml-publish` run (about a second each: kept few)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

ENV_DROP = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "COREML_PUBLISH_DEBUG", "COREML_PUBLISH_DEFAULT_NAMESPACE",
            "COREML_PUBLISH_DATABASE_URL")


def run(*args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ENV_DROP}
    return subprocess.run(["coreml-publish", *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**base, "COLUMNS": "200", "HF_ENDPOINT": "http://127.0.0.1:1",
                               "HF_HUB_OFFLINE": "0", **(env or {})})


@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from service.db import upgrade

    path = tmp_path_factory.mktemp("cli-db") / "jobs.db"
    upgrade(f"sqlite:///{path}")
    return path


def _job_rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def one_line(result: subprocess.CompletedProcess, code: int, *fragments: str) -> str:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    assert result.returncode == code, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("args, fragment", [
    (["convert", "x"], "Missing option '--out'"),
    (["convert", "x", "-o", "out", "--nope"], "No such option: --nope"),
    (["nosuch"], "No such command 'nosuch'"),
    (["watch", "nosuch"], "No such command 'nosuch'"),
    (["status", "abc"], "valid integer"),
    (["status", "99999999999999999999"], "less than or equal to 2147483647"),
    (["logs", "0"], "greater than or equal to 1"),
    (["jobs", "--limit", "-1"], "greater than or equal to 1"),
    (["jobs", "--limit", "501"], "less than or equal to 500"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_usage_errors_show_usage_and_exit_2(tmp_path: Path, database: Path, args: list[str], fragment: str) -> None:
    result = run(*args, cwd=tmp_path, env={"COREML_PUBLISH_DATABASE_URL": f"sqlite:///{database}"})
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("Usage: coreml-publish"), result.stderr
    assert [line for line in lines if line.startswith("Error:")] == [lines[-1]] and fragment in lines[-1]
    assert not (tmp_path / "out").exists() and _job_rows(database) == 0


@pytest.mark.parametrize("bits, fragment", [("six", "neither a palettization width nor a mixed-bit target"),
                                            ("3", "--bits 3 is not supported"),
                                            ("mixed:9", "between 2 and 8 bits")])
def test_bad_bits_are_one_line_before_any_work(tmp_path: Path, bits: str, fragment: str) -> None:
    result = run("convert", "x", "-o", "out", "--bits", bits, cwd=tmp_path)
    one_line(result, 2, fragment)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args", [
    ["submit", "studio/tiny-sd", "--namespace=-bad"],
    ["submit", "studio/tiny-sd", "--namespace", "../../x"],
    ["watch", "add", "studio/tiny-sd", "--namespace", "a" * 200],
], ids=["leading dash", "path", "200 characters"])
def test_bad_namespaces_are_refused_before_any_work(tmp_path: Path, database: Path, args: list[str]) -> None:
    result = run(*args, cwd=tmp_path, env={"COREML_PUBLISH_DATABASE_URL": f"sqlite:///{database}"})
    one_line(result, 2, "is not a valid Hub namespace", "ASCII letters")
    assert "cannot reach the Hub" not in result.stderr and _job_rows(database) == 0
    with sqlite3.connect(database) as connection:
        assert connection.execute("SELECT COUNT(*) FROM watched_repos").fetchone()[0] == 0


def _unwritable(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only one, or (as root, who may write anywhere
    permissions allow) a place no one can write, such as sysfs."""
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir()
        locked.chmod(0o500)
        return locked / "out"
    try:
        with tempfile.TemporaryFile(dir="/sys"):
            pass
    except OSError:
        return Path("/sys/coreml-publish-test/out")
    pytest.skip("no unwritable place to try as root")


@pytest.mark.parametrize("where, fragment", [
    ("file", "is a file, not a folder"),
    ("under a file", "a-file is a file"),
    ("unwritable", "cannot write to"),
])
def test_output_folder_problems_are_found_before_resolving(tmp_path: Path, where: str, fragment: str) -> None:
    (tmp_path / "a-file").write_text("x")
    out = {"file": tmp_path / "a-file", "under a file": tmp_path / "a-file" / "out"}.get(where) \
        or _unwritable(tmp_path)
    result = run("convert", "org/never-resolved", "-o", str(out), cwd=tmp_path)
    one_line(result, 2, fragment)
    assert "Hub" not in result.stderr and (tmp_path / "a-file").read_text() == "x"


def test_tiny_pipeline_push_without_a_token_says_to_set_hf_token(tmp_path: Path) -> None:
    result = run("tiny-pipeline", str(tmp_path / "tiny"), "--push", "me/tiny", cwd=tmp_path,
                 env={"HF_HOME": str(tmp_path / "hf-home")})  # no cached login either
    one_line(result, 2, "HF_TOKEN")
    assert not (tmp_path / "tiny").exists()  # refused before building anything


@pytest.mark.parametrize("url, args, fragment", [
    ("sqlite:////nonexistent-coreml-publish-dir/jobs.db", ["jobs"], "cannot be used (unable to open database file)"),
    ("sqlite:///{tmp}/empty.db", ["status", "1"], "has no tables yet"),
    ("postgresql+psycopg://user@127.0.0.1:1/jobs", ["cancel", "1"], "cannot be used"),
    ("not a url", ["jobs"], "COREML_PUBLISH_DATABASE_URL is not a usable SQLAlchemy URL"),
], ids=["unreachable sqlite", "no tables", "postgres down", "malformed url"])
def test_a_database_that_cannot_be_used_is_one_line_exit_1(tmp_path: Path, url: str, args: list[str],
                                                           fragment: str) -> None:
    result = run(*args, cwd=tmp_path, env={"COREML_PUBLISH_DATABASE_URL": url.format(tmp=tmp_path)})
    one_line(result, 1, fragment)
