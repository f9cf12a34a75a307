"""Image sizes a model can take, checked from its configs before any work."""

from __future__ import annotations

import pytest

from workers.convert.geometry import check_resolutions, native_image
from workers.errors import OptionsError, SourceError


def test_sizes_are_multiples_of_the_downsampling_within_twice_the_native_side() -> None:
    native = (512, 512)
    assert check_resolutions(["512x768", "512x512", "1024x576"], native=native, step=64) == [(512, 768), (1024, 576)]
    with pytest.raises(OptionsError, match=r"500x768: the width 500 px is not a multiple of 64 px"):
        check_resolutions(["500x768"], native=native, step=64)
    with pytest.raises(OptionsError, match=r"the height 1088 px is more than twice the model's native 512 px"):
        check_resolutions(["512x1088"], native=native, step=64)


def test_the_native_size_and_step_come_from_the_unet_and_vae_configs() -> None:
    unet = {"sample_size": 64, "block_out_channels": [320, 640, 1280, 1280]}
    vae = {"block_out_channels": [128, 256, 512, 512]}
    assert native_image(unet, vae, source="org/sd") == ((512, 512), 64)
    assert native_image({**unet, "sample_size": [96, 64]}, vae, source="org/sd") == ((512, 768), 64)
    with pytest.raises(SourceError, match="no usable sample_size"):
        native_image({"sample_size": "big", "block_out_channels": [1]}, vae, source="org/sd")
