"""Geometry read from the source's configs, and refusals of architectures we do not convert."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workers.errors import OptionsError, SourceError, UnsupportedModelError
from workers.convert.geometry import read_geometry
from workers.convert.specs import SPECS


def test_geometry_comes_from_the_configs(sd1_pipeline: Path, sd2_pipeline: Path) -> None:
    g1 = read_geometry(sd1_pipeline)
    assert (g1.latent_height, g1.latent_width, g1.context_dim, g1.sequence_length) == (16, 16, 32, 77)
    # two VAE blocks -> scale factor 2, computed, not assumed to be 8
    assert g1.vae_scale_factor == 2 and (g1.image_height, g1.image_width) == (32, 32)
    assert g1.batch_size == 2 and g1.safety_image_size == 224
    g2 = read_geometry(sd2_pipeline, latent_size=(24, 32), batch_size=1)
    assert (g2.latent_height, g2.latent_width, g2.batch_size, g2.context_dim) == (24, 32, 1, 64)
    assert (g2.image_height, g2.image_width) == (48, 64)


def test_bad_sizes_are_refused(sd1_pipeline: Path) -> None:
    with pytest.raises(OptionsError, match="multiples of 2"):
        read_geometry(sd1_pipeline, latent_size=(15, 16))
    with pytest.raises(OptionsError, match="--batch-size must be 1 or 2"):
        read_geometry(sd1_pipeline, batch_size=3)


def _edited(source: Path, tmp: Path, component: str, **changes) -> Path:
    copy = Path(shutil.copytree(source, tmp / "model"))
    config = json.loads((copy / component / "config.json").read_text())
    config.update(changes)
    (copy / component / "config.json").write_text(json.dumps(config))
    return copy


@pytest.mark.parametrize("changes, message", [
    ({"in_channels": 9}, "9 input channels"),
    ({"class_embed_type": "timestep"}, "class_embed_type 'timestep' are not supported"),
    ({"addition_embed_type": "image"}, "addition_embed_type 'image' are not supported"),
    ({"_class_name": "UNet2DModel"}, "UNet2DModel is not supported"),
])
def test_unsupported_unets_are_refused(sd1_pipeline: Path, tmp_path: Path, changes: dict, message: str) -> None:
    with pytest.raises(UnsupportedModelError, match=message):
        read_geometry(_edited(sd1_pipeline, tmp_path, "unet", **changes))


def test_an_sdxl_unet_without_the_second_text_encoder_is_refused(sd1_pipeline: Path, tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="an SDXL UNet .* needs text_encoder_2, and the source has none"):
        read_geometry(_edited(sd1_pipeline, tmp_path, "unet", addition_embed_type="text_time"))


def test_mismatched_text_encoder_is_refused(sd1_pipeline: Path, tmp_path: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="does not match the UNet"):
        read_geometry(_edited(sd1_pipeline, tmp_path, "text_encoder", hidden_size=48))


def test_specs_declare_apples_component_names() -> None:
    assert list(SPECS) == ["text_encoder", "text_encoder_2", "unet", "controlled_unet", "refiner", "vae_decoder",
                           "vae_encoder", "safety_checker", "controlnet"]
    assert [s.name for s in SPECS.values() if s.depends_on_attention] == ["unet", "controlled_unet", "refiner",
                                                                          "controlnet"]
    assert [s.name for s in SPECS.values() if s.palettize] == ["text_encoder", "text_encoder_2", "unet",
                                                               "controlled_unet", "refiner", "controlnet"]


def test_the_specs_implement_exactly_the_declared_components() -> None:
    from workers.components import CHUNKED, COMPONENTS, PER_LAYOUT
    from workers.names import COMPILED_NAMES

    assert tuple(SPECS) == COMPONENTS  # the light facts the service reads are the specs' own
    assert PER_LAYOUT == {s.name for s in SPECS.values() if s.depends_on_attention}
    assert set(CHUNKED) <= PER_LAYOUT and set(COMPILED_NAMES) == set(COMPONENTS) | {
        c for pair in CHUNKED.values() for c in pair}
