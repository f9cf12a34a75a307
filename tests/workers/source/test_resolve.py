"""Resolving sources: what is accepted, and every refusal's message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workers.errors import SourceError, SourceNotFoundError, UnsafeWeightsError, UnsupportedModelError
from workers.names import looks_like_repo_id
from workers.source.resolve import resolve_source


@pytest.fixture
def source(sd1_pipeline: Path, tmp_path: Path) -> Path:
    """A private copy of the SD1 fixture to break."""
    return Path(shutil.copytree(sd1_pipeline, tmp_path / "model"))


def _edit_index(folder: Path, **changes) -> None:
    index = json.loads((folder / "model_index.json").read_text())
    index.update(changes)
    (folder / "model_index.json").write_text(json.dumps(index))


def test_local_folder_resolves_with_components_license_and_weights(source: Path) -> None:
    resolved = resolve_source(str(source))
    assert resolved.id == "model" and resolved.path == source.resolve()
    assert resolved.pipeline_class == "StableDiffusionPipeline"
    assert set(resolved.components) == {"text_encoder", "unet", "vae", "safety_checker", "tokenizer"}
    assert resolved.weight_files["unet"] == ("unet/diffusion_pytorch_model.safetensors",)
    assert resolved.license == "creativeml-openrail-m"
    assert resolved.use_safetensors


def test_source_id_names_a_local_folder(source: Path) -> None:
    assert resolve_source(str(source), source_id="org/name").id == "org/name"
    with pytest.raises(SourceError, match="not a valid repo id"):
        resolve_source(str(source), source_id="not a repo id")


def test_pickle_only_weights_are_refused_naming_files_and_the_option(source: Path) -> None:
    weights = source / "unet" / "diffusion_pytorch_model.safetensors"
    weights.rename(source / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError) as caught:
        resolve_source(str(source))
    assert "unet/diffusion_pytorch_model.bin" in caught.value.message
    assert "--allow-pickle" in caught.value.hint
    assert caught.value.files == ["unet/diffusion_pytorch_model.bin"]
    allowed = resolve_source(str(source), allow_pickle=True)
    assert not allowed.use_safetensors


def test_fp16_variant_weights_are_used_when_that_is_all_there_is(source: Path) -> None:
    weights = source / "vae" / "diffusion_pytorch_model.safetensors"
    weights.rename(source / "vae" / "diffusion_pytorch_model.fp16.safetensors")
    resolved = resolve_source(str(source))
    assert resolved.weight_variant["vae"] == "fp16"
    assert resolved.weight_files["vae"] == ("vae/diffusion_pytorch_model.fp16.safetensors",)


def test_variant_files_beside_plain_ones_are_not_fetched(source: Path) -> None:
    shutil.copy(source / "unet" / "diffusion_pytorch_model.safetensors",
                source / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    resolved = resolve_source(str(source))
    assert resolved.weight_files["unet"] == ("unet/diffusion_pytorch_model.safetensors",)
    assert "unet/diffusion_pytorch_model.fp16.safetensors" not in resolved.download_patterns()


@pytest.mark.parametrize("cls, label", [("StableDiffusionXLInpaintPipeline", "SDXL inpainting"),
                                        ("StableDiffusion3Pipeline", "Stable Diffusion 3"),
                                        ("SomeCustomPipeline", "SomeCustomPipeline")])
def test_other_pipelines_are_not_supported_yet_naming_the_class(source: Path, cls: str, label: str) -> None:
    _edit_index(source, _class_name=cls)
    with pytest.raises(UnsupportedModelError, match=f"{cls}.*not supported yet"):
        resolve_source(str(source))
    with pytest.raises(UnsupportedModelError, match=label):
        resolve_source(str(source))


def test_a_folder_without_model_index_is_not_a_diffusers_pipeline(source: Path) -> None:
    (source / "model_index.json").unlink()
    with pytest.raises(UnsupportedModelError, match="not a diffusers pipeline"):
        resolve_source(str(source))
    (source / "model.safetensors").write_bytes(b"x")  # then it is taken for a single-file checkpoint
    with pytest.raises(SourceError, match="model.safetensors"):
        resolve_source(str(source))


def test_broken_model_index_is_reported(source: Path) -> None:
    (source / "model_index.json").write_text("{not json")
    with pytest.raises(SourceError, match="model_index.json is not valid JSON"):
        resolve_source(str(source))


def test_missing_component_is_named(source: Path) -> None:
    _edit_index(source, vae=[None, None])
    with pytest.raises(SourceError, match="lacks vae"):
        resolve_source(str(source))


def test_missing_weights_are_named(source: Path) -> None:
    (source / "text_encoder" / "model.safetensors").unlink()
    with pytest.raises(SourceError, match="no weights found for text_encoder"):
        resolve_source(str(source))


def test_safety_checker_weights_are_not_needed_when_not_converted(source: Path) -> None:
    shutil.rmtree(source / "safety_checker")
    (source / "safety_checker").mkdir()
    with pytest.raises(SourceError, match="safety_checker"):
        resolve_source(str(source))
    assert "safety_checker" not in resolve_source(str(source), need_safety_checker=False).components


def test_missing_paths_and_bad_ids_are_told_apart(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="no folder at"):
        resolve_source("./nope")
    with pytest.raises(SourceNotFoundError, match="neither a local folder nor a valid Hub repo id"):
        resolve_source("a/b/c")
    with pytest.raises(SourceError, match="--revision applies to Hub repos"):
        resolve_source(str(tmp_path), revision="main")


@pytest.mark.parametrize("text, ok", [("org/name", True), ("name", True), ("a/b/c", False), ("../x", False),
                                      ("org/na me", False), ("org/a--b", False), ("", False)])
def test_repo_id_shapes(text: str, ok: bool) -> None:
    assert looks_like_repo_id(text) is ok


def test_too_large_sources_are_refused_before_download(source: Path) -> None:
    size = (source / "unet" / "diffusion_pytorch_model.safetensors").stat().st_size
    with pytest.raises(SourceError, match="too large: .* GB of weights to convert"):
        resolve_source(str(source), max_bytes=size // 2)


# --- SDXL: --vae and --refiner --------------------------------------------------------------------------

def test_a_refiner_needs_an_sdxl_base(source: Path, tmp_path: Path) -> None:
    from workers.devtools.tiny import build_tiny_pipeline
    from workers.errors import OptionsError

    refiner = build_tiny_pipeline(tmp_path / "refiner", style="sdxl-refiner")
    with pytest.raises(OptionsError, match="--refiner needs an SDXL base source, and model is a StableDiffusionPipeline"):
        resolve_source(str(source), refiner=str(refiner))


def test_a_base_model_given_as_the_refiner_is_refused(tmp_path: Path) -> None:
    from workers.devtools.tiny import build_tiny_pipeline
    from workers.source.fetch import fetch_source
    from workers.convert.geometry import read_geometry

    base = build_tiny_pipeline(tmp_path / "base", style="sdxl")
    composed = fetch_source(resolve_source(str(base), refiner=str(base)))
    assert composed.components[-1] == "refiner" and composed.origin == base.resolve()
    with pytest.raises(UnsupportedModelError, match=r"the --refiner UNet's context 80 does not match the base's second text encoder \(48\)"):
        read_geometry(composed.path)


def test_a_vae_must_be_an_autoencoder_with_safetensors(source: Path, tmp_path: Path) -> None:
    from workers.devtools.tiny import build_tiny_vae

    with pytest.raises(SourceError, match=r"--vae .* holds no VAE: no config.json at its root or in vae/"):
        resolve_source(str(source), vae=str(source / "tokenizer"))
    with pytest.raises(UnsupportedModelError, match="is not an AutoencoderKL VAE .*UNet2DConditionModel"):
        resolve_source(str(source), vae=str(source / "unet"))
    vae = build_tiny_vae(tmp_path / "vae")
    for weights in vae.glob("*.safetensors"):
        weights.rename(weights.with_suffix(".bin"))
    with pytest.raises(UnsafeWeightsError, match="--vae takes safetensors weights only"):
        resolve_source(str(source), vae=str(vae))
    with pytest.raises(SourceNotFoundError, match="neither a local folder nor a valid Hub repo id"):
        resolve_source(str(source), vae="not a repo")


def test_a_vae_from_a_pipeline_folder_replaces_the_sources(source: Path, tmp_path: Path) -> None:
    from workers.source.fetch import fetch_source

    other = Path(shutil.copytree(source, tmp_path / "other"))
    resolved = resolve_source(str(source), vae=str(other))
    assert dict(resolved.extras)["vae"].subfolder == "vae"
    composed = fetch_source(resolved)
    assert (composed.path / "vae").resolve() == (other / "vae").resolve()
    assert (composed.path / "unet").resolve() == (source / "unet").resolve()
    assert composed.provenance()["vae"]["path"] == str(other.resolve())
