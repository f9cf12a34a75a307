"""The coreml-publish command as a user runs it: exit codes, one-line errors, a real conversion."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["coreml-publish", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "COLUMNS": "120", **(env or {})})


def test_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.returncode == 0
    assert "convert" in result.stdout and "tiny-pipeline" in result.stdout


def test_convert_help_explains_every_option() -> None:
    result = run("convert", "--help")
    assert result.returncode == 0
    for option in ("--out", "--revision", "--attention", "--bits", "--components", "--latent-size",
                   "--batch-size", "--deployment-target", "--group-size", "--allow-pickle"):
        assert option in result.stdout


@pytest.mark.parametrize("args, code, message", [
    (["./missing-folder"], 1, "Error: no folder at ./missing-folder. Check the path"),
    (["org/a/b"], 1, "neither a local folder nor a valid Hub repo id"),
])
def test_bad_sources_get_one_line(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    result = run("convert", *args, "-o", str(tmp_path / "out"))
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--bits", "3"], "Error: --bits 3 is not supported. Use one of 1, 2, 4, 6, 8."),
    (["--attention", "flash"], "Error: unknown attention layouts: flash. Use original, split_einsum, split_einsum_v2."),
    (["--deployment-target", "iOS14"], "unknown deployment target 'iOS14'"),
    (["--group-size", "16", "--deployment-target", "iOS17"],
     "Error: one palette per channel group needs iOS18 / macOS15, not iOS17. Pass --deployment-target iOS18 or "
     "leave it out"),
    (["--chunks-only", "--components", "vae_decoder"], "Error: --chunk-unet needs the unet component"),
])
def test_bad_options_get_one_line_before_any_work(sd2_pipeline: Path, tmp_path: Path, args: list[str],
                                                  message: str) -> None:
    result = run("convert", str(sd2_pipeline), "-o", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tiny_pipeline_then_convert(tmp_path: Path) -> None:
    source = tmp_path / "my-model"
    made = run("tiny-pipeline", str(source), "--style", "sd2", "--seed", "7")
    assert made.returncode == 0, made.stderr
    assert run("tiny-pipeline", str(source)).returncode == 2  # never overwrites
    out = tmp_path / "out"
    result = run("convert", str(source), "-o", str(out), "--components", "text_encoder,vae_decoder")
    assert result.returncode == 0, result.stderr
    assert "✓ convert   text_encoder (float16)" in result.stderr  # shared by both layouts
    summary = " ".join(result.stdout.split())
    if platform.system() == "Darwin":
        assert "All checks passed: 3 packages made, 8 placed in the trees" in summary
    else:  # Core ML predictions need macOS: the summary says so instead of "all checks passed"
        assert "All checks passed" not in summary
        assert "Every check that ran passed: 3 packages made, 8 placed in the trees" in summary
        assert "Skipped: psnr_coreml on 3 packages (needs macOS)." in summary
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and {p["component"] for p in report["packages"]} == {"text_encoder", "vae_decoder"}


def test_a_bar_from_settings_fails_the_run_with_figure_and_bar(sd2_pipeline: Path, tmp_path: Path) -> None:
    result = run("convert", str(sd2_pipeline), "-o", str(tmp_path), "--components", "vae_encoder", "--bits", "0",
                 env={"COREML_PUBLISH_FLOAT16_PSNR": "500"})
    assert result.returncode == 3
    assert "vae_encoder (original, float16) psnr_torch:" in result.stderr
    assert "dB < 500.0 dB" in result.stderr
    assert not any(tmp_path.glob("*/*/packages/*.mlpackage"))


def test_validate_rechecks_a_tree_and_catches_an_edited_package(sd1_conversion, tmp_path: Path) -> None:
    from tests.helpers import scale_constants

    out, _ = sd1_conversion
    tree = tmp_path / "tree"
    subprocess.run(["cp", "-a", str(out), str(tree)], check=True)
    result = run("validate", str(tree))
    assert result.returncode == 0, result.stderr
    table = " ".join(result.stdout.split())
    assert "program" in table and "✓ 5" in table  # psnr_program figures against their bars
    report = json.loads((tree / "report.json").read_text())
    assert report["passed"] and all(any(c["name"] == "psnr_program" for c in p["checks"]) for p in report["packages"])

    unet = tree / "coreml-tiny-sd1/original/packages/Stable_Diffusion_version_tests_tiny-sd1_unet.mlpackage"
    assert scale_constants(unet, ("batch_norm",), ("gamma",), -1.0)
    encoder = tree / "coreml-tiny-sd1/original/packages/Stable_Diffusion_version_tests_tiny-sd1_vae_encoder.mlpackage"
    program = encoder / "Data" / "com.apple.CoreML" / "model.mlmodel"
    program.unlink()  # a new file: the copies in the other folders are hard links of the old one
    program.write_bytes(b"not a model")
    result = run("validate", str(tree))
    assert result.returncode == 3
    assert "unet (original, float16) psnr_program" in result.stderr and "Nothing was deleted" in result.stderr
    assert "vae_encoder (original, float16) structure: the package cannot be read" in result.stderr
    assert "Traceback" not in result.stderr and unet.exists()
    report = json.loads((tree / "report.json").read_text())
    failed = [(p["component"], p["variant"], p["precision"]) for p in report["packages"] if p["status"] == "failed"]
    assert failed == [("unet", "original", "float16"), ("vae_encoder", "original", "float16")]


def test_validate_a_downloaded_repo_with_its_report(sd1_conversion, tmp_path: Path) -> None:
    out, _ = sd1_conversion
    repo = tmp_path / "downloaded"
    subprocess.run(["cp", "-a", str(out / "coreml-tiny-sd1-palettized"), str(repo)], check=True)
    subprocess.run(["cp", str(out / "report.json"), str(repo)], check=True)
    result = run("validate", str(repo))
    assert result.returncode == 0, result.stderr
    report = json.loads((repo / "report.json").read_text())
    rechecked = [p for p in report["packages"] if p["repo"] == "coreml-tiny-sd1-palettized"]
    assert rechecked and all(any(c["name"] == "psnr_program" for c in p["checks"]) for p in rechecked)


def test_validate_without_a_report_says_what_to_do(tmp_path: Path) -> None:
    result = run("validate", str(tmp_path))
    assert result.returncode == 1  # an output error, not a bad option
    assert result.stderr.strip().startswith(f"Error: {tmp_path} holds no report.json.")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("url, shown, hidden", [
    ("sqlite:///{tmp}/never-migrated.db", "no such table: jobs", None),
    ("postgresql+psycopg://bob:s3cret-pw@127.0.0.1:1/jobs", "postgresql+psycopg://bob:***@127.0.0.1:1/jobs", "s3cret-pw"),
])
def test_an_unusable_job_database_gets_one_line(tmp_path: Path, url: str, shown: str, hidden: str | None) -> None:
    result = run("jobs", env={"COREML_PUBLISH_DATABASE_URL": url.format(tmp=tmp_path)})
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: the job database ") and shown in lines[0]
    assert "coreml-publish db upgrade" in lines[0]
    assert hidden is None or hidden not in result.stderr + result.stdout


@pytest.mark.parametrize("env, args, message", [
    ({"COREML_PUBLISH_ENVIRONMENT": "staging"}, ["jobs"],
     "Error: COREML_PUBLISH_ENVIRONMENT is invalid: Input should be 'development' or 'production'."),
    ({"COREML_PUBLISH_ENVIRONMENT": "production"}, ["db", "upgrade"],
     "Error: production with a SQLite database is not supported."),
    ({"COREML_PUBLISH_ENVIRONMENT": "production"}, ["submit", "org/model"],
     "Error: production with a SQLite database is not supported."),
])
def test_settings_are_checked_when_a_process_starts(tmp_path: Path, env: dict, args: list[str], message: str) -> None:
    result = subprocess.run(["coreml-publish", *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, **env})
    assert result.returncode == 2
    assert result.stderr.strip().startswith(message) and len(result.stderr.strip().splitlines()) == 1


def test_debug_and_scratch_are_settings_a_dot_env_may_hold(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("COREML_PUBLISH_DEBUG=1\nCOREML_PUBLISH_SCRATCH=/tmp/scratch-here\n")
    code = "from service.settings import Settings; s = Settings(); print(s.debug, s.scratch_path())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "/tmp/scratch-here"]
    # with debugging on, an error shows its traceback
    result = subprocess.run(["coreml-publish", "convert", "./missing", "-o", "out"], capture_output=True, text=True,
                            timeout=120, cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_listings_keep_whole_values_when_piped_and_json_for_scripts(tmp_path: Path) -> None:
    """`jobs | grep org/name` finds the repo (no `org/tiny…` at 80 columns); `--json` gives one document."""
    from service.db import session_scope, upgrade
    from workers.options import JobOptions
    from service.jobs import record_event, submit_job
    from service.watch import add_watch

    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    upgrade(url)
    repo, sha = "a-rather-long-organisation-name/a-rather-long-stable-diffusion-model-name", "0123456789abcdef" * 2 + "01234567"
    with session_scope(url) as session:
        job = submit_job(session, source_repo=repo, source_sha=sha, options=JobOptions(namespace="studio")).job
        record_event(session, job.id, "fetch started", stage="fetch")
        add_watch(session, repo_id=repo, options=JobOptions(namespace="studio"))
    env = {"COREML_PUBLISH_DATABASE_URL": url}
    listed = run("jobs", env=env)
    assert listed.returncode == 0 and repo in listed.stdout and sha in listed.stdout and "…" not in listed.stdout
    assert len([line for line in listed.stdout.splitlines() if repo in line]) == 1  # one line per row
    documents = {name: json.loads(run(*args, env=env).stdout) for name, args in {
        "jobs": ("jobs", "--json"), "status": ("status", str(job.id), "--json"), "logs": ("logs", str(job.id), "--json"),
        "watch": ("watch", "list", "--json")}.items()}
    assert [(j["id"], j["source_repo"], j["source_sha"]) for j in documents["jobs"]] == [(job.id, repo, sha)]
    assert documents["status"]["state"] == "queued" and documents["status"]["options"]["namespace"] == "studio"
    assert [(e["stage"], e["message"]) for e in documents["logs"]][-1] == ("fetch", "fetch started")
    assert [w["repo_id"] for w in documents["watch"]] == [repo]
    watched = run("watch", "list", env=env)
    assert repo in watched.stdout and "…" not in watched.stdout
    both = run("logs", str(job.id), "--json", "--follow", env=env)
    assert both.returncode == 2 and "--json prints the log as one document and --follow keeps printing" in both.stderr
