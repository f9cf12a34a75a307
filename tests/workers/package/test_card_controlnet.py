"""The ControlNet parts of model cards."""

from __future__ import annotations

from workers.package.card_controlnet import condition_type


def test_the_condition_is_read_from_the_tags_then_the_name() -> None:
    assert condition_type("lllyasviel/sd-controlnet-canny", None) == "canny"
    assert condition_type("org/my-controlnet", ["controlnet", "openpose"]) == "openpose"
    assert condition_type("lllyasviel/control_v11p_sd15_lineart", None) == "lineart"
    assert condition_type("org/my-controlnet", ["controlnet"]) is None
