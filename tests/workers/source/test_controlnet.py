"""ControlNet sources: recognised as such, held to their base by config, and refused with one line otherwise."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.devtools.tiny import build_tiny_controlnet
from workers.errors import OptionsError, UnsupportedModelError
from workers.source.resolve import resolve_source


@pytest.fixture(scope="module")
def controlnet(sd1_pipeline: Path, tmp_path_factory) -> Path:
    return build_tiny_controlnet(tmp_path_factory.mktemp("cn") / "sd-controlnet-canny", sd1_pipeline, seed=3)


def test_a_controlnet_is_resolved_with_its_base_and_only_the_bases_configs(controlnet, sd1_pipeline) -> None:
    found = resolve_source(str(controlnet), base=str(sd1_pipeline))
    assert found.pipeline_class == "ControlNetModel" and found.components == ("controlnet",)
    assert found.weight_files == {"controlnet": ("diffusion_pytorch_model.safetensors",)}
    base = dict(found.extras)["base"]
    assert base.weight_files == {} and "unet" in base.components


def test_a_controlnet_without_base_says_to_pass_one(controlnet) -> None:
    with pytest.raises(OptionsError, match="is a ControlNet") as raised:
        resolve_source(str(controlnet))
    assert "--base" in raised.value.hint
    assert "single-file" not in str(raised.value)  # no longer taken for a single-file checkpoint


def test_a_controlnet_for_another_architecture_is_refused_naming_the_mismatch(controlnet, sd2_pipeline) -> None:
    with pytest.raises(UnsupportedModelError, match="does not fit --base .*cross_attention_dim 32 is not the "
                                                    "base's text encoder width 64"):
        resolve_source(str(controlnet), base=str(sd2_pipeline))


def test_a_pipeline_given_a_base_is_refused(sd1_pipeline, sd2_pipeline) -> None:
    with pytest.raises(OptionsError, match="--base is for ControlNet sources"):
        resolve_source(str(sd1_pipeline), base=str(sd2_pipeline))


def test_an_sdxl_base_is_refused(controlnet, tmp_path) -> None:
    from workers.devtools.tiny import build_tiny_pipeline

    xl = build_tiny_pipeline(tmp_path / "xl", style="sdxl")
    with pytest.raises(UnsupportedModelError, match="SD 1.x / 2.x pipelines only"):
        resolve_source(str(controlnet), base=str(xl))


def _changed(controlnet: Path, folder: Path, **config_changes) -> Path:
    """A copy of the ControlNet folder with its config changed."""
    folder.mkdir()
    config = json.loads((controlnet / "config.json").read_text()) | config_changes
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "diffusion_pytorch_model.safetensors").write_bytes((controlnet / "diffusion_pytorch_model.safetensors")
                                                                 .read_bytes())
    return folder


def test_an_sdxl_controlnet_is_refused_with_the_reason(controlnet, sd1_pipeline, tmp_path) -> None:
    folder = _changed(controlnet, tmp_path / "controlnet-sdxl", addition_embed_type="text_time",
                      addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
    with pytest.raises(UnsupportedModelError, match="SDXL ControlNet, and Apple's Swift pipeline runs"):
        resolve_source(str(folder), base=str(sd1_pipeline))


def test_a_controlnet_whose_conditioning_is_another_size_is_refused(controlnet, sd1_pipeline, tmp_path) -> None:
    folder = _changed(controlnet, tmp_path / "controlnet-8x", conditioning_embedding_out_channels=[16, 32, 96, 256])
    with pytest.raises(UnsupportedModelError, match="conditioning image is 8x the latent size, the base's images "
                                                    "are 2x"):
        resolve_source(str(folder), base=str(sd1_pipeline))
