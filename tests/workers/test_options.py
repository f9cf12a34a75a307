"""The options: validated when made, normalised, stored and keyed as every earlier job was."""

from __future__ import annotations

import pytest

from workers.errors import OptionsError
from workers.names import Attention
from workers.options import ConvertOptions, JobOptions, SourceOptions


def test_a_jobs_key_is_the_one_jobs_were_always_recorded_with() -> None:
    # the dedupe key of default options, as recorded since the first release: it must never drift
    assert JobOptions(namespace="org").key() == (
        '{"attentions":["original","split_einsum_v2"],"bits":6,"components":null,"namespace":"org",'
        '"packages_only":false,"private":null}')
    assert '"vae":"org/vae","vae_sha":"' + "a" * 40 in JobOptions(namespace="org", vae="org/vae",
                                                                   vae_sha="a" * 40).key()


def test_layouts_are_named_once_in_the_canonical_order() -> None:
    options = ConvertOptions(attentions=("split_einsum_v2", Attention.ORIGINAL, "original"))
    assert options.attentions == (Attention.ORIGINAL, Attention.SPLIT_EINSUM_V2)
    with pytest.raises(OptionsError, match="unknown attention layouts: flash"):
        ConvertOptions(attentions=("flash",))
    with pytest.raises(OptionsError, match="no attention layout selected"):
        ConvertOptions(attentions=())


def test_user_values_mean_what_the_command_lines_say() -> None:
    options = JobOptions.from_user(namespace="org", bits=0, chunks_only=True, deployment_target="", vae="")
    assert options.bits is None and options.chunk_unet and options.deployment_target is None and options.vae is None
    assert ConvertOptions.from_user(latent_size=(0, 0), components=()).latent_size is None
    with pytest.raises(TypeError, match="no options colour"):
        ConvertOptions.from_user(colour="red")


def test_stored_options_come_back_equal_and_unknown_ones_are_refused() -> None:
    options = JobOptions(namespace="org", attentions=("original",), bits=4, chunk_unet=True, refiner="org/refiner")
    assert JobOptions.from_dict(options.stored()) == options
    with pytest.raises(OptionsError, match="unknown options colour"):
        JobOptions.from_dict({**options.stored(), "colour": "red"})
    recorded = ConvertOptions(bits=4).record()
    assert recorded["targets"] == {"float16": "iOS16", "palettized": "iOS17"}
    assert ConvertOptions.from_dict({k: v for k, v in recorded.items() if k != "targets"}) == ConvertOptions(bits=4)


def test_jobs_take_hub_repos_where_convert_takes_folders_too() -> None:
    assert SourceOptions(vae="./my-vae").vae == "./my-vae"
    with pytest.raises(OptionsError, match="--vae './my-vae' is not a Hub repo id"):
        JobOptions(namespace="org", vae="./my-vae")
    with pytest.raises(OptionsError, match="is not the commit sha of a --refiner repo"):
        JobOptions(namespace="org", refiner="org/refiner", refiner_sha="main")


def test_a_job_converts_with_its_own_options() -> None:
    job = JobOptions(namespace="org", bits=2, deployment_target="iOS17", chunk_unet=True)
    part = job.conversion(attentions=(Attention.SPLIT_EINSUM_V2,), components=("unet",))
    assert isinstance(part, ConvertOptions) and not isinstance(part, JobOptions)
    assert (part.bits, part.deployment_target, part.chunk_unet, part.attentions) == (
        2, "iOS17", True, (Attention.SPLIT_EINSUM_V2,))
    assert job.parts() == ["shared", "unet-original", "unet-split_einsum_v2"]


def test_sizes_are_normalised_so_equal_requests_key_equal() -> None:
    one = JobOptions(namespace="org", resolutions=("768x512", "512X768", "768x512"))
    other = JobOptions.from_user(namespace="org", resolutions=["512x768", " 768x512"])
    assert one.resolutions == other.resolutions == ("512x768", "768x512") and one.key() == other.key()
    assert '"resolutions":["512x768","768x512"]' in one.key()
    assert JobOptions.from_dict(one.stored()) == one
    with pytest.raises(OptionsError, match="'512' is not an image size"):
        ConvertOptions(resolutions=("512",))
    with pytest.raises(OptionsError, match="lists 9 sizes; a job converts at most 8"):
        ConvertOptions(resolutions=tuple(f"{64 * i}x512" for i in range(1, 10)))


def test_a_batch_one_unet_is_one_choice_with_two_spellings() -> None:
    assert ConvertOptions(unet_batch_one=True).batch_size == 1 and ConvertOptions(batch_size=1).unet_batch_one
    assert JobOptions(namespace="org", unet_batch_one=True).key() != JobOptions(namespace="org").key()
    with pytest.raises(OptionsError, match="--batch-size must be 1 or 2, not 3"):
        ConvertOptions(batch_size=3, unet_batch_one=True)
    with pytest.raises(OptionsError, match="--batch-size must be 1 or 2, not 0"):
        ConvertOptions(batch_size=0)


def test_bits_take_a_width_or_a_mixed_bit_target_spelled_one_way() -> None:
    # what a command line or a form sends is text: widths become numbers, targets keep one spelling
    assert ConvertOptions.from_user(bits="4").bits == 4 and ConvertOptions.from_user(bits="0").bits is None
    mixed = JobOptions.from_user(namespace="org", bits=" mixed:4.50 ")
    assert mixed.bits == "mixed:4.5" and mixed.uniform_bits is None and mixed.mixed.bits == 4.5
    assert '"bits":"mixed:4.5"' in mixed.key() and JobOptions.from_dict(mixed.stored()) == mixed
    assert ConvertOptions(bits="mixed:psnr=40").mixed.psnr == 40.0
    assert ConvertOptions(bits=6).mixed is None and ConvertOptions(bits=6).uniform_bits == 6
    for bad, message in (("mixed:12", "between 2 and 8"), ("six", "neither a palettization width nor a mixed-bit")):
        with pytest.raises(OptionsError, match=message):
            ConvertOptions.from_user(bits=bad)
    # a recipe's widths in one palette per group of channels: iOS 18, as uniform grouped palettes
    assert ConvertOptions(bits="mixed:4.5", group_size=32).target(palettized=True) == "iOS18"
    with pytest.raises(OptionsError, match="one palette per channel group needs iOS18"):
        ConvertOptions(bits="mixed:4.5", group_size=32, deployment_target="iOS17")
