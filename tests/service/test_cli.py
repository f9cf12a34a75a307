"""The coreml-publish command as a user runs it: exit codes, one-line errors, a real conversion."""

from __future__ import annotations

import json
import os
import subprocess
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
    (["--attention", "flash"], "Error: --attention: 'flash' is not a valid Attention"),
    (["--deployment-target", "iOS14"], "unknown deployment target 'iOS14'"),
    (["--group-size", "16"], "Error: one palette per channel group needs iOS18 / macOS15, not iOS17. "
                             "Pass --deployment-target iOS18"),
])
def test_bad_options_get_one_line_before_any_work(sd2_pipeline: Path, tmp_path: Path, args: list[str],
                                                  message: str) -> None:
    result = run("convert", str(sd2_pipeline), "-o", str(tmp_path / "out"), *args)
    assert result.returncode == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_tiny_pipeline_then_convert(tmp_path: Path) -> None:
    source = tmp_path / "my-model"
    made = run("tiny-pipeline", str(source), "--style", "sd2", "--seed", "7")
    assert made.returncode == 0, made.stderr
    assert run("tiny-pipeline", str(source)).returncode == 2  # never overwrites
    out = tmp_path / "out"
    result = run("convert", str(source), "-o", str(out), "--components", "text_encoder,vae_decoder")
    assert result.returncode == 0, result.stderr
    assert "✓ convert   text_encoder (float16)" in result.stderr  # shared by both layouts
    assert "All checks passed: 3 packages made, 8 placed in the trees" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["passed"] and {p["component"] for p in report["packages"]} == {"text_encoder", "vae_decoder"}


def test_a_bar_from_settings_fails_the_run_with_figure_and_bar(sd2_pipeline: Path, tmp_path: Path) -> None:
    result = run("convert", str(sd2_pipeline), "-o", str(tmp_path), "--components", "vae_encoder", "--bits", "0",
                 env={"COREML_PUBLISH_FLOAT16_PSNR": "500"})
    assert result.returncode == 3
    assert "vae_encoder (original, float16) psnr_torch:" in result.stderr
    assert "dB < 500.0 dB" in result.stderr
    assert not any(tmp_path.glob("*/*/packages/*.mlpackage"))
