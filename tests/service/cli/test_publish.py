"""The README's walk-through as a user runs it: dev Hub, tiny model, convert, publish, download."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import pytest

from huggingface_hub import snapshot_download

from tests.conftest import DOUBLES
from tests.service.cli.test_cli import run


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


def _spec_versions(repo: Path) -> dict[str, int]:
    """Component -> ML program specification version of a downloaded repo's packages."""
    import coremltools as ct

    return {p.name.removeprefix("Stable_Diffusion_version_studio_tiny-sd1_").removesuffix(".mlpackage"):
            ct.models.MLModel(str(p), skip_model_load=True).get_spec().specificationVersion
            for p in repo.glob("*/packages/*.mlpackage")}


def test_split_einsum_chunks_and_safety_checker_published_through_the_hub(devhub, tmp_path: Path) -> None:
    """SD 1.x with a safety checker, the split_einsum variant and UNet chunks: every name the apps load, the
    float16 repo written for macOS 13 / iOS 16 and the palettized one for iOS 17, both with the checker."""
    url = devhub[0]
    hub = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
           "PATH": f"{DOUBLES}{os.pathsep}{os.environ['PATH']}"}
    made = run("tiny-pipeline", str(tmp_path / "tiny"), "--style", "sd1", "--push", "studio/tiny-sd1", env=hub)
    assert made.returncode == 0, made.stderr
    converted = run("convert", "studio/tiny-sd1", "-o", str(tmp_path / "out"), "--attention", "split_einsum",
                    "--chunk-unet", env=hub)
    assert converted.returncode == 0, converted.stderr
    published = run("publish", str(tmp_path / "out"), "--namespace", "studio", env=hub)
    assert published.returncode == 0, published.stderr
    repos = {}
    for name in ("coreml-tiny-sd1", "coreml-tiny-sd1-palettized"):
        repos[name] = Path(snapshot_download(f"studio/{name}", endpoint=url, token="alice-token",
                                             local_dir=tmp_path / name))
    compiled = {name: sorted(p.name for p in (folder / "split_einsum" / "compiled").iterdir())
                for name, folder in repos.items()}
    assert compiled["coreml-tiny-sd1"] == [
        "SafetyChecker.mlmodelc", "TextEncoder.mlmodelc", "Unet.mlmodelc", "UnetChunk1.mlmodelc",
        "UnetChunk2.mlmodelc", "VAEDecoder.mlmodelc", "VAEEncoder.mlmodelc", "merges.txt", "vocab.json"]
    assert compiled["coreml-tiny-sd1-palettized"] == [
        "SafetyChecker.mlmodelc", "TextEncoder.mlmodelc", "Unet.mlmodelc", "VAEDecoder.mlmodelc",
        "VAEEncoder.mlmodelc", "merges.txt", "vocab.json"]
    assert _spec_versions(repos["coreml-tiny-sd1"]) == {c: 7 for c in (
        "text_encoder", "unet", "unet_chunk1", "unet_chunk2", "vae_decoder", "vae_encoder", "safety_checker")}
    assert _spec_versions(repos["coreml-tiny-sd1-palettized"]) == {
        "text_encoder": 8, "unet": 8, "vae_decoder": 7, "vae_encoder": 7, "safety_checker": 7}
    card = (repos["coreml-tiny-sd1-palettized"] / "README.md").read_text()
    assert "Needs macOS 14 / iOS 17 or later" in card and "safety checker stay float16" in card
    assert "Needs macOS 13 / iOS 16 or later" in (repos["coreml-tiny-sd1"] / "README.md").read_text()
    fetched = run("download", "studio/coreml-tiny-sd1", "--variant", "split_einsum", "--zip", "-o",
                  str(tmp_path / "zip"), env=hub)
    assert fetched.returncode == 0, fetched.stderr
    assert (tmp_path / "zip" / "coreml-tiny-sd1_split_einsum_compiled.zip").is_file()


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
    assert published.returncode == 1  # an incomplete output, not a bad option
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


def test_sdxl_base_published_through_the_hub_with_the_swift_xl_names(devhub, tmp_path: Path) -> None:
    """A tiny SDXL pipeline with defaults: both text encoders, the UNet's added inputs, the float32 VAE, every
    package for iOS 17 / macOS 14, in both repos and both default layouts."""
    import coremltools as ct

    url = devhub[0]
    hub = {"HF_ENDPOINT": url, "HF_HUB_DISABLE_XET": "1", "HF_TOKEN": "alice-token",
           "PATH": f"{DOUBLES}{os.pathsep}{os.environ['PATH']}"}
    made = run("tiny-pipeline", str(tmp_path / "tiny"), "--style", "sdxl", "--push", "studio/tiny-sdxl", env=hub)
    assert made.returncode == 0, made.stderr
    converted = run("convert", "studio/tiny-sdxl", "-o", str(tmp_path / "out"), env=hub)
    assert converted.returncode == 0, converted.stderr
    published = run("publish", str(tmp_path / "out"), "--namespace", "studio", env=hub)
    assert published.returncode == 0, published.stderr
    names = ["TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "Unet.mlmodelc", "VAEDecoder.mlmodelc",
             "VAEEncoder.mlmodelc", "merges.txt", "vocab.json"]
    for name in ("coreml-tiny-sdxl", "coreml-tiny-sdxl-palettized"):
        repo = Path(snapshot_download(f"studio/{name}", endpoint=url, token="alice-token", local_dir=tmp_path / name))
        for variant in ("original", "split_einsum_v2"):
            assert sorted(p.name for p in (repo / variant / "compiled").iterdir()) == names
        features = {}
        for package in repo.glob("original/packages/*.mlpackage"):
            spec = ct.models.MLModel(str(package), skip_model_load=True).get_spec()
            assert spec.specificationVersion == 8, package.name
            component = package.name.removeprefix("Stable_Diffusion_version_studio_tiny-sdxl_").removesuffix(".mlpackage")
            features[component] = {f.name: (tuple(f.type.multiArrayType.shape), f.type.multiArrayType.dataType)
                                   for f in (*spec.description.input, *spec.description.output)}
        f16, f32 = ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT16, ct.proto.FeatureTypes_pb2.ArrayFeatureType.FLOAT32
        assert features["text_encoder"] == {"input_ids": ((1, 77), f32), "hidden_embeds": ((1, 77, 32), f32),
                                            "pooled_outputs": ((1, 32), f32)}
        assert features["text_encoder_2"] == {"input_ids": ((1, 77), f32), "hidden_embeds": ((1, 77, 48), f32),
                                              "pooled_outputs": ((1, 48), f32)}
        assert features["unet"] == {"sample": ((2, 4, 8, 8), f16), "timestep": ((2,), f16),
                                    "encoder_hidden_states": ((2, 80, 1, 77), f16), "text_embeds": ((2, 48), f16),
                                    "time_ids": ((2, 6), f16), "noise_pred": ((2, 4, 8, 8), f32)}
        assert features["vae_decoder"] == {"z": ((1, 4, 8, 8), f32), "image": ((1, 3, 16, 16), f32)}
        card = (repo / "README.md").read_text()
        assert "Needs macOS 14 / iOS 17 or later" in card and "StableDiffusionXLPipeline" in card
        assert "the VAE stays float32: it overflows in float16" in card
