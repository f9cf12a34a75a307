"""The names of variants at extra image sizes: folders, zips and check data."""

from __future__ import annotations

from workers.names import Attention, check_data_name, parse_size, variant_layout, variant_name, variant_size
from workers.package.card import zip_name


def test_a_size_is_width_by_height_in_pixels() -> None:
    assert parse_size("512x768") == (512, 768) and parse_size(" 768 X 512 ") == (768, 512)
    assert [parse_size(t) for t in ("512", "x512", "0x512", "512x-8", "5e2x512", 512, "512x768x2")] == [None] * 7


def test_the_native_size_keeps_apples_paths_and_every_other_size_has_a_folder_of_its_own() -> None:
    assert variant_name(Attention.ORIGINAL) == "original"
    assert variant_name(Attention.SPLIT_EINSUM_V2, (512, 768)) == "split_einsum_v2/512x768"
    assert variant_layout("split_einsum_v2/512x768") is Attention.SPLIT_EINSUM_V2
    assert (variant_size("original"), variant_size("original/768x512")) == (None, (768, 512))
    assert zip_name("coreml-sd", "original/512x768") == "coreml-sd_original_512x768_compiled.zip"
    assert zip_name("coreml-sd", "original") == "coreml-sd_original_compiled.zip"
    assert (check_data_name("unet", "original"), check_data_name("unet", "original/512x768")) == \
        ("unet", "unet@512x768")
