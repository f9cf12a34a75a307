"""The README's walk-through as a user runs it: dev Hub, tiny model, convert, publish, download."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from huggingface_hub import snapshot_download

from tests.conftest import DOUBLES
from tests.service.test_cli import run


def test_from_a_hub_repo_to_a_published_variant(devhub, tmp_path: Path) -> None:
    url = devhub[0]
    hub = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
           "PATH": f"{DOUBLES}{os.pathsep}{os.environ['PATH']}"}
    made = run("tiny-pipeline", str(tmp_path / "tiny"), "--style", "sd2", "--seed", "3", "--push", "studio/tiny-sd",
               env=hub)
    assert made.returncode == 0, made.stderr
    converted = run("convert", "studio/tiny-sd", "-o", str(tmp_path / "out"), env=hub)
    assert converted.returncode == 0, converted.stderr
    published = run("publish", str(tmp_path / "out"), "--namespace", "studio", env=hub)
    assert published.returncode == 0, published.stderr
    assert "✓ studio/coreml-tiny-sd-palettized: commit" in published.stdout
    again = run("publish", str(tmp_path / "out"), "--namespace", "studio", env=hub)
    assert again.stdout.count("no changes") == 2
    folder = Path(snapshot_download("studio/coreml-tiny-sd-palettized", endpoint=url, token="alice-token",
                                    allow_patterns="split_einsum_v2/compiled/*", local_dir=tmp_path / "app"))
    assert sorted(p.name for p in (folder / "split_einsum_v2" / "compiled").iterdir()) == [
        "TextEncoder.mlmodelc", "Unet.mlmodelc", "VAEDecoder.mlmodelc", "VAEEncoder.mlmodelc",
        "merges.txt", "vocab.json"]
    fetched = run("download", "studio/coreml-tiny-sd", "--variant", "original", "--zip", "-o",
                  str(tmp_path / "zip"), env=hub)
    assert fetched.returncode == 0 and (tmp_path / "zip" / "coreml-tiny-sd_original_compiled.zip").is_file()


@pytest.mark.skipif(platform.system() == "Darwin", reason="a Mac may have the real xcrun")
def test_publish_without_xcrun_says_to_use_a_mac_or_packages_only(sd2_conversion, tmp_path: Path) -> None:
    result = run("publish", str(sd2_conversion[0]), "--namespace", "studio")  # no double on PATH
    assert result.returncode == 1
    assert "xcrun coremlcompiler is not available" in result.stderr and "--packages-only" in result.stderr


def test_publish_refuses_a_conversion_of_some_components_only(sd1_pipeline: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    converted = run("convert", str(sd1_pipeline), "-o", str(out), "--components", "safety_checker",
                    "--attention", "original")
    assert converted.returncode == 0, converted.stderr
    # no Hub and the compiler double: the refusal comes before either is used
    published = run("publish", str(out), "--namespace", "studio",
                    env={"HF_ENDPOINT": "http://127.0.0.1:1", "PATH": f"{DOUBLES}{os.pathsep}{os.environ['PATH']}"})
    assert published.returncode == 2
    assert published.stderr.startswith("Error: studio/coreml-tiny-sd1 (variant original) ")
    assert "missing: text_encoder; unet (or both unet_chunk1 and unet_chunk2); vae_decoder. Convert again without " \
           "--components" in " ".join(published.stderr.split())
    assert published.stderr.count("\n") == 1 and not published.stdout
    assert not list(out.glob("*/README.md")) and not list(out.glob("*/*.zip"))


def test_download_takes_every_variant_name() -> None:
    shown = run("download", "--help")
    assert shown.returncode == 0 and "original, split_einsum, split_einsum_v2" in " ".join(shown.stdout.split())
    refused = run("download", "studio/coreml-x", "--variant", "split_einsum_v3", "-o", "/nonexistent",
                  env={"HF_ENDPOINT": "http://127.0.0.1:1"})
    assert refused.returncode == 2
    assert "unknown variant 'split_einsum_v3'. Use one of original, split_einsum, split_einsum_v2." in refused.stderr
