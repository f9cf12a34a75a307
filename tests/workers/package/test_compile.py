"""Compile + bundle: the xcrun coremlcompiler contract (through its test double), names, tokenizer files."""

from __future__ import annotations

import json
import platform
import shutil
from pathlib import Path

import pytest

from workers.errors import ConversionError, SourceError, ToolUnavailableError
from workers.package.compile import bundle_variant, compile_package, find_compiler, require_compiler, tokenizer_files


def _packages(conversion, repo: str, variant: str) -> dict[str, Path]:
    out, report = conversion
    return {p.component: out / p.path for p in report.packages if p.repo == repo and p.variant == variant}


def test_without_xcrun_compiling_is_refused_with_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_compiler() is None
    with pytest.raises(ToolUnavailableError, match="needs macOS with Xcode") as caught:
        require_compiler()
    assert "--packages-only" in caught.value.hint


def test_bundle_compiles_every_package_to_its_swift_name(xcrun_double, sd2_conversion, sd2_pipeline,
                                                         tmp_path: Path) -> None:
    assert require_compiler() == ("xcrun", "coremlcompiler")
    packages = _packages(sd2_conversion, "coreml-tiny-sd2-palettized", "split_einsum_v2")
    made = bundle_variant(packages, tmp_path / "compiled", sd2_pipeline / "tokenizer")
    assert sorted(p.name for p in made) == ["TextEncoder.mlmodelc", "Unet.mlmodelc", "VAEDecoder.mlmodelc",
                                            "VAEEncoder.mlmodelc", "merges.txt", "vocab.json"]
    unet = tmp_path / "compiled" / "Unet.mlmodelc"
    assert {p.relative_to(unet).as_posix() for p in unet.rglob("*") if p.is_file()} == {
        "coremldata.bin", "metadata.json", "model.mil", "weights/weight.bin", "analytics/coremldata.bin"}
    assert (tmp_path / "compiled" / "vocab.json").read_bytes() == (sd2_pipeline / "tokenizer" / "vocab.json").read_bytes()
    assert not list((tmp_path / "compiled").glob(".compile-*"))


def test_a_failing_compiler_exit_status_is_an_error(xcrun_double, sd2_conversion, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XCRUN_DOUBLE_FAIL", "1")
    package = _packages(sd2_conversion, "coreml-tiny-sd2", "original")["vae_decoder"]
    with pytest.raises(ConversionError, match=r"coremlcompiler failed on .*vae_decoder.mlpackage \(exit 1\)"):
        compile_package(package, tmp_path, "vae_decoder")
    assert not (tmp_path / "VAEDecoder.mlmodelc").exists()


def test_a_damaged_package_is_refused(xcrun_double, tmp_path: Path) -> None:
    broken = tmp_path / "Broken.mlpackage"
    broken.mkdir()
    with pytest.raises(ConversionError, match="not a valid .mlpackage"):
        compile_package(broken, tmp_path / "out", "unet")


def test_tokenizer_files_are_derived_from_tokenizer_json(tmp_path: Path) -> None:
    (tmp_path / "tokenizer.json").write_text(json.dumps(
        {"model": {"type": "BPE", "vocab": {"a": 0, "b</w>": 1, "ab</w>": 2}, "merges": [["a", "b</w>"]]}}))
    files = tokenizer_files(tmp_path)
    assert json.loads(files["vocab.json"]) == {"a": 0, "b</w>": 1, "ab</w>": 2}
    assert files["merges.txt"] == b"#version: 0.2\na b</w>\n"
    (tmp_path / "tokenizer.json").write_text(json.dumps({"model": {"type": "Unigram", "vocab": []}}))
    with pytest.raises(SourceError, match="not a BPE tokenizer"):
        tokenizer_files(tmp_path)
    shutil.rmtree(tmp_path)
    tmp_path.mkdir()
    with pytest.raises(SourceError, match="neither vocab.json"):
        tokenizer_files(tmp_path)


@pytest.mark.macos
def test_real_coremlcompiler_compiles_a_package(sd2_conversion, tmp_path: Path) -> None:
    assert platform.system() == "Darwin"
    package = _packages(sd2_conversion, "coreml-tiny-sd2", "original")["vae_decoder"]
    compiled = compile_package(package, tmp_path, "vae_decoder", command=require_compiler())
    assert (compiled / "coremldata.bin").is_file() and compiled.name == "VAEDecoder.mlmodelc"
