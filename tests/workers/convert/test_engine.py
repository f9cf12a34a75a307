"""End-to-end conversions of tiny pipelines: Apple's exact tree, names, shapes, dtypes and metadata."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.errors import OptionsError, ValidationError
from tests.helpers import negate_largest_weight
from workers.convert import component
from workers.convert.engine import convert_pipeline
from workers.options import ConvertOptions
from workers.names import Attention
from workers.source.resolve import resolve_source
from workers.convert.specs import SPECS
from workers.validate.readback import read_package

F16, F32 = "float16", "float32"


def contract(b: int, h: int, w: int, ctx: int, f: int, concepts: int = 17) -> dict:
    """The Core ML interface contract, written out literally (not derived from the specs under test)."""
    return {
        "text_encoder": ([("input_ids", (1, 77), F32)],
                         [("last_hidden_state", (1, 77, ctx), F32), ("pooled_outputs", (1, ctx), F32)]),
        "unet": ([("sample", (b, 4, h, w), F16), ("timestep", (b,), F16),
                  ("encoder_hidden_states", (b, ctx, 1, 77), F16)],
                 [("noise_pred", (b, 4, h, w), F32)]),
        "vae_decoder": ([("z", (1, 4, h, w), F16)], [("image", (1, 3, f * h, f * w), F32)]),
        "vae_encoder": ([("x", (1, 3, f * h, f * w), F16)], [("latent", (1, 8, h, w), F32)]),
        "safety_checker": ([("clip_input", (1, 3, 224, 224), F16), ("images", (1, f * h, f * w, 3), F16),
                            ("adjustment", (1,), F16)],
                           [("filtered_images", (1, f * h, f * w, 3), F32), ("has_nsfw_concepts", (1,), F32),
                            ("concept_scores", (1, concepts), F32)]),
    }


def xl_contract(b: int, h: int, w: int, widths: tuple[int, int], pooled: int, time_ids: int, f: int,
                vae: str = F32) -> dict:
    """SDXL's additions to the contract (Apple's StableDiffusionXLPipeline), written out literally."""
    encoder = [("input_ids", (1, 77), F32)]
    unet = [("sample", (b, 4, h, w), F16), ("timestep", (b,), F16), ("encoder_hidden_states", (b, sum(widths), 1, 77), F16),
            ("text_embeds", (b, pooled), F16), ("time_ids", (b, time_ids), F16)]
    found = {
        "text_encoder_2": (encoder, [("hidden_embeds", (1, 77, widths[1]), F32), ("pooled_outputs", (1, pooled), F32)]),
        "unet": (unet, [("noise_pred", (b, 4, h, w), F32)]),
        "vae_decoder": ([("z", (1, 4, h, w), vae)], [("image", (1, 3, f * h, f * w), F32)]),
        "vae_encoder": ([("x", (1, 3, f * h, f * w), vae)], [("latent", (1, 8, h, w), F32)]),
    }
    if widths[0]:
        found["text_encoder"] = (encoder, [("hidden_embeds", (1, 77, widths[0]), F32),
                                           ("pooled_outputs", (1, widths[0]), F32)])
    return found


def test_every_registered_spec_is_in_the_contract_test() -> None:
    # the refiner spec is the UNet's with a refiner's sizes (checked in the SDXL job test); the ControlNet specs'
    # contract is written out in tests/workers/convert/specs/test_controlnet.py
    assert set(contract(2, 8, 8, 32, 8)) | set(xl_contract(2, 8, 8, (32, 48), 48, 6, 8)) | {
        "refiner", "controlled_unet", "controlnet"} == set(SPECS)


def _tree(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.glob("*/*/packages/*.mlpackage")}


def _expected_tree(repo: str, model_version: str, float16: list[str], palettized: list[str]) -> set[str]:
    names = set()
    for variant in ("original", "split_einsum_v2"):
        names |= {f"coreml-{repo}/{variant}/packages/Stable_Diffusion_version_{model_version}_{c}.mlpackage"
                  for c in float16}
        names |= {f"coreml-{repo}-palettized/{variant}/packages/Stable_Diffusion_version_{model_version}_{c}.mlpackage"
                  for c in palettized}
    return names


def test_sd1_tree_has_apples_names(sd1_conversion) -> None:
    out, report = sd1_conversion
    four = ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    # the palettized repo carries the safety checker too (a float16 copy), as Apple's palettized SD 1.x repos do
    assert _tree(out) == _expected_tree("tiny-sd1", "tests_tiny-sd1", four + ["safety_checker"], four + ["safety_checker"])
    assert report.passed and all(p.status == "passed" for p in report.packages)


@pytest.mark.parametrize("repo_suffix", ["", "-palettized"])
@pytest.mark.parametrize("variant", ["original", "split_einsum_v2"])
def test_sd1_packages_meet_the_interface_contract(sd1_conversion, variant: str, repo_suffix: str) -> None:
    out, _ = sd1_conversion
    folder = out / f"coreml-tiny-sd1{repo_suffix}" / variant / "packages"
    expected = contract(b=2, h=16, w=16, ctx=32, f=2)
    for package in folder.iterdir():
        component = package.name.removeprefix("Stable_Diffusion_version_tests_tiny-sd1_").removesuffix(".mlpackage")
        contents = read_package(package)
        assert (contents.inputs, contents.outputs) == expected[component], component


def test_sd2_packages_meet_the_interface_contract(sd2_conversion) -> None:
    out, report = sd2_conversion
    four = ["text_encoder", "unet", "vae_decoder", "vae_encoder"]
    assert _tree(out) == _expected_tree("tiny-sd2", "tests_tiny-sd2", four, four)
    expected = contract(b=2, h=24, w=24, ctx=64, f=2)
    for package in out.glob("*/*/packages/*.mlpackage"):
        component = package.name.removeprefix("Stable_Diffusion_version_tests_tiny-sd2_").removesuffix(".mlpackage")
        contents = read_package(package)
        assert (contents.inputs, contents.outputs) == expected[component], package
    assert report.passed


def test_metadata_says_where_each_package_comes_from(sd1_conversion) -> None:
    out, report = sd1_conversion
    import coremltools as ct

    package = out / "coreml-tiny-sd1-palettized/split_einsum_v2/packages/Stable_Diffusion_version_tests_tiny-sd1_unet.mlpackage"
    model = ct.models.MLModel(str(package), skip_model_load=True)
    meta = model.user_defined_metadata
    assert meta["source_repo"] == "tests/tiny-sd1"
    assert meta["component"] == "unet"
    assert meta["attention_implementation"] == "split_einsum_v2"
    assert meta["precision"] == "palettized-6bit"
    assert meta["converter"].startswith("coreml-publisher ")
    assert meta["deployment_target"] == "iOS17"
    float16 = out / "coreml-tiny-sd1/split_einsum_v2/packages/Stable_Diffusion_version_tests_tiny-sd1_unet.mlpackage"
    assert ct.models.MLModel(str(float16), skip_model_load=True).user_defined_metadata["deployment_target"] == "iOS16"
    assert model.license == "creativeml-openrail-m"
    spec = model.get_spec()
    assert all(f.shortDescription for f in spec.description.input)
    assert all(f.shortDescription for f in spec.description.output)
    text = out / "coreml-tiny-sd1/original/packages/Stable_Diffusion_version_tests_tiny-sd1_text_encoder.mlpackage"
    assert ct.models.MLModel(str(text), skip_model_load=True).user_defined_metadata["attention_implementation"] == "any"


def test_float16_packages_are_for_macos13_and_palettized_ones_for_ios17(sd1_conversion) -> None:
    """ML program specification 7 (macOS 13 / iOS 16, Apple's float16 repos) and 8 (iOS 17 / macOS 14, 6-bit);
    the float16 copies in the palettized repo (VAE, safety checker) keep 7.  Metadata and report agree."""
    import coremltools as ct

    out, report = sd1_conversion
    expected = {"float16": ("iOS16", 7), "palettized-6bit": ("iOS17", 8)}
    assert len(report.packages) == 20  # 2 repos x 2 layouts x 5 components
    for package in report.packages:
        model = ct.models.MLModel(str(out / package.path), skip_model_load=True)
        target, version = expected[package.precision]
        assert model.get_spec().specificationVersion == version, package.path
        assert model.user_defined_metadata["deployment_target"] == package.target == target, package.path
    assert report.options["targets"] == {"float16": "iOS16", "palettized": "iOS17"}


def test_palettized_packages_hold_lookup_tables_and_the_vae_stays_float16(sd1_conversion) -> None:
    out, _ = sd1_conversion
    pal = out / "coreml-tiny-sd1-palettized/original/packages"
    unet = read_package(pal / "Stable_Diffusion_version_tests_tiny-sd1_unet.mlpackage")
    assert unet.lut_ops > 40 and unet.lut_sizes == {64} and not unet.unpalettized_large
    text = read_package(pal / "Stable_Diffusion_version_tests_tiny-sd1_text_encoder.mlpackage")
    assert text.lut_ops >= 1 and text.lut_sizes == {64}
    vae = read_package(pal / "Stable_Diffusion_version_tests_tiny-sd1_vae_decoder.mlpackage")
    assert vae.lut_ops == 0
    float16 = out / "coreml-tiny-sd1/original/packages/Stable_Diffusion_version_tests_tiny-sd1_unet.mlpackage"
    assert read_package(float16).lut_ops == 0
    pal_size = sum(f.stat().st_size for f in (pal / "Stable_Diffusion_version_tests_tiny-sd1_unet.mlpackage").rglob("*"))
    f16_size = sum(f.stat().st_size for f in float16.rglob("*"))
    assert pal_size < 0.6 * f16_size


def test_layout_independent_components_are_converted_once(sd1_conversion) -> None:
    _, report = sd1_conversion
    converts = [k for k in report.timings if k.startswith("convert/")]
    assert sorted(converts) == sorted([
        "convert/text_encoder/float16", "convert/unet/original/float16", "convert/unet/split_einsum_v2/float16",
        "convert/vae_decoder/float16", "convert/vae_encoder/float16", "convert/safety_checker/float16"])
    palettized = [k for k in report.timings if k.startswith("palettize/")]
    assert len(palettized) == 3  # text encoder once, UNet per layout; the VAE is not palettized


def test_report_json_records_provenance_and_every_figure(sd1_conversion) -> None:
    out, _ = sd1_conversion
    data = json.loads((out / "report.json").read_text())
    assert data["passed"] is True
    assert data["source"]["id"] == "tests/tiny-sd1"
    assert data["source"]["license"] == "creativeml-openrail-m"
    assert {"converter", "coremltools", "torch", "diffusers"} <= set(data["toolchain"])
    assert data["repos"] == {"float16": "coreml-tiny-sd1", "palettized": "coreml-tiny-sd1-palettized"}
    assert data["geometry"]["vae_scale_factor"] == 2
    assert len(data["packages"]) == 20  # the palettized repo holds the safety checker too
    for package in data["packages"]:
        checks = {c["name"]: c for c in package["checks"]}
        assert package["status"] == "passed" and package["size_bytes"] > 0
        assert checks["structure"]["status"] == "passed"
        torch_psnr, program = checks["psnr_torch"], checks["psnr_program"]
        assert torch_psnr["value"] >= torch_psnr["threshold"]
        assert program["status"] == "passed" and program["value"] >= program["threshold"]
        assert program["threshold"] == (35.0 if package["precision"] == "float16" else 25.0)
        if package["precision"] == "float16":
            assert torch_psnr["threshold"] == 45.0 and checks["weights"]["status"] == "passed"
            assert checks["psnr_coreml"]["status"] in ("skipped", "passed")
        if package["component"] == "unet":
            assert checks["psnr_layout"]["value"] >= 60


def test_a_corrupted_weight_is_caught_and_the_package_deleted(sd1_pipeline: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = component.save_package

    def save_then_corrupt(model, path: Path) -> None:
        real_save(model, path)
        negate_largest_weight(path)

    monkeypatch.setattr(component, "save_package", save_then_corrupt)
    source = resolve_source(str(sd1_pipeline))
    options = ConvertOptions(components=("vae_decoder",), bits=None, attentions=(Attention.ORIGINAL,))
    with pytest.raises(ValidationError) as caught:
        convert_pipeline(source, tmp_path, options)
    program, torch_side = caught.value.failures
    assert program.startswith("vae_decoder (original, float16) psnr_program: ") and program.endswith("dB < 35.0 dB")
    assert torch_side.startswith("vae_decoder (original, float16) psnr_torch: ") and torch_side.endswith("dB < 45.0 dB")
    assert not any(tmp_path.glob("*/*/packages/*.mlpackage"))
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["passed"] is False and data["packages"][0]["status"] == "failed"


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
def test_other_bit_widths(sd2_pipeline: Path, tmp_path: Path, bits: int) -> None:
    source = resolve_source(str(sd2_pipeline))
    options = ConvertOptions(components=("text_encoder",), bits=bits, attentions=(Attention.ORIGINAL,))
    report = convert_pipeline(source, tmp_path, options)
    pal = [p for p in report.packages if p.precision == f"palettized-{bits}bit"]
    assert len(pal) == 1 and pal[0].status == "passed"
    contents = read_package(tmp_path / pal[0].path)
    assert contents.lut_sizes == {2 ** bits} and contents.lut_ops == 13


def test_one_palette_per_channel_group(sd2_pipeline: Path, tmp_path: Path) -> None:
    """iOS 18 grouped palettes; a weight whose channel count the group does not divide gets one palette."""
    import coremltools as ct

    from workers.validate.readback import load_program

    source = resolve_source(str(sd2_pipeline))
    options = ConvertOptions(components=("text_encoder",), bits=4, attentions=(Attention.ORIGINAL,),
                             group_size=16)  # grouped palettes make the palettized packages iOS18 by default
    report = convert_pipeline(source, tmp_path, options)
    pal = [p for p in report.packages if p.precision == "palettized-4bit-group16"]
    assert len(pal) == 1 and pal[0].status == "passed"
    program = load_program(ct.models.MLModel(str(tmp_path / pal[0].path), skip_model_load=True))
    groups = sorted({int(op.inputs["lut"].val.shape[0]) for op in program.functions["main"].operations
                     if op.op_type.startswith("constexpr_lut_to_dense")})
    assert groups == [1, 4]  # 64 channels in 4 groups of 16; the 37-channel MLP weights: one palette
    assert read_package(tmp_path / pal[0].path).lut_sizes == {16}
    versions = {p.precision: ct.models.MLModel(str(tmp_path / p.path), skip_model_load=True).get_spec().specificationVersion
                for p in report.packages}
    assert versions == {"float16": 7, "palettized-4bit-group16": 9}


def test_deployment_target_overrides_both_precisions(sd2_pipeline: Path, tmp_path: Path) -> None:
    import coremltools as ct

    options = ConvertOptions(components=("text_encoder",), attentions=(Attention.ORIGINAL,), deployment_target="macOS14")
    report = convert_pipeline(resolve_source(str(sd2_pipeline)), tmp_path, options)
    assert {p.precision: (p.target, ct.models.MLModel(str(tmp_path / p.path), skip_model_load=True)
                          .get_spec().specificationVersion) for p in report.packages} == {
        "float16": ("macOS14", 8), "palettized-6bit": ("macOS14", 8)}


@pytest.mark.parametrize("options, message", [
    (dict(bits=3), "--bits 3 is not supported"),
    (dict(bits=6, deployment_target="iOS16"), "6-bit palettized weights need iOS17"),
    (dict(bits=4, deployment_target="iOS15"), "palettized weights need iOS16"),
    (dict(deployment_target="iOS99"), "unknown deployment target"),
    (dict(attentions=()), "no attention layout"),
    (dict(components=("unet", "upscaler")), "unknown components: upscaler"),
    (dict(group_size=16, deployment_target="iOS17"), "one palette per channel group needs iOS18"),
    (dict(group_size=-1, deployment_target="iOS18"), "--group-size must not be negative"),
    (dict(group_size=16, bits=None, deployment_target="iOS18"), "--group-size needs palettized packages"),
])
def test_bad_options_are_refused_before_any_work(sd2_pipeline: Path, tmp_path: Path, options: dict,
                                                 message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        convert_pipeline(resolve_source(str(sd2_pipeline)), tmp_path / "out", ConvertOptions(**options))
    assert not (tmp_path / "out").exists()


def test_components_the_source_lacks_are_named(sd2_pipeline: Path, tmp_path: Path) -> None:
    with pytest.raises(OptionsError, match="the source has no safety_checker"):
        convert_pipeline(resolve_source(str(sd2_pipeline)), tmp_path, ConvertOptions(components=("safety_checker",)))


def test_float16_only_and_batch_one(sd2_pipeline: Path, tmp_path: Path) -> None:
    source = resolve_source(str(sd2_pipeline))
    convert_pipeline(source, tmp_path, ConvertOptions(components=("vae_decoder",), bits=None,
                                                      attentions=(Attention.ORIGINAL,)))
    options = ConvertOptions(components=("unet",), bits=None, batch_size=1, latent_size=(16, 24),
                             attentions=(Attention.SPLIT_EINSUM,))
    report = convert_pipeline(source, tmp_path, options)
    assert [p.path for p in report.packages] == [
        "coreml-tiny-sd2/split_einsum/packages/Stable_Diffusion_version_tiny-sd2_unet.mlpackage"]
    contents = read_package(tmp_path / report.packages[0].path)
    assert contents.inputs[0] == ("sample", (1, 4, 16, 24), F16)
    assert not (tmp_path / "coreml-tiny-sd2-palettized").exists()
    # the earlier run's VAE decoder is gone: a re-run replaces the trees instead of mixing runs
    assert [p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*/packages/*")] == [report.packages[0].path]


def test_an_sdxl_refiner_alone_converts_to_its_own_complete_repo(tmp_path: Path) -> None:
    """A refiner repo (no first text encoder, five time_ids) meets the XL contract; Swift loads its UNet as a
    refiner by the time_ids shape, and the variant is complete without TextEncoder.  Its UNet converts
    memory-lean (as a full-size one would) and is validated like any other."""
    from workers.devtools.tiny import build_tiny_pipeline
    from workers.package.complete import check_output
    from workers.validate.report import Report

    source = resolve_source(str(build_tiny_pipeline(tmp_path / "refiner", style="sdxl-refiner", seed=2)))
    report = convert_pipeline(source, tmp_path / "out", ConvertOptions(attentions=(Attention.ORIGINAL,), bits=None,
                                                                      lean=True))
    assert {p.component for p in report.packages} == {"text_encoder_2", "unet", "vae_decoder", "vae_encoder"}
    assert "load/unet/float16" in report.timings and "load/text_encoder_2/float16" not in report.timings
    expected = xl_contract(2, 8, 8, (0, 48), 48, 5, 2)
    for package in report.packages:
        contents = read_package(tmp_path / "out" / package.path)
        inputs, outputs = expected[package.component]
        assert contents.inputs == inputs and contents.outputs == outputs, package.component
        assert package.target == "iOS17" and package.status == "passed"
    assert {p.component: p.precision for p in report.packages}["vae_decoder"] == "float32"
    check_output(Report.load(tmp_path / "out"), tmp_path / "out")


def test_memory_is_collected_only_when_the_process_holds_enough_to_matter(monkeypatch: pytest.MonkeyPatch) -> None:
    from workers import memory

    collected: list[int] = []
    monkeypatch.setattr(memory.gc, "collect", lambda *a: collected.append(1) or 0)
    memory.release_memory(above=1 << 50)
    assert collected == []
    memory.release_memory(above=0)
    assert collected == [1]
    assert 0 < memory.resident_bytes() < 1 << 50


def test_every_size_is_a_complete_variant_of_its_own_with_the_native_weights(sd1_sizes_conversion) -> None:
    """--resolution: a portrait and a landscape size beside the native 32x32 px; each size's components have its
    shapes, are validated at it, and share the native packages' weight files (the same bytes, hard-linked)."""
    import os

    from workers.names import check_data_name, variant_size
    from workers.package.complete import check_output

    tmp_path, report = sd1_sizes_conversion
    assert report.passed and report.options["resolutions"] == ["32x48", "48x32"]  # the native size is no extra one
    assert report.variants == ["split_einsum_v2", "split_einsum_v2/32x48", "split_einsum_v2/48x32"]
    check_output(report, tmp_path)  # every size's folder has what the Swift pipeline loads
    for width, height in ((32, 48), (48, 32)):
        variant = f"split_einsum_v2/{width}x{height}"
        packages = {(p.repo, p.component): p for p in report.packages if p.variant == variant}
        assert {c for r, c in packages if r == "coreml-tiny-sd1"} == {
            "text_encoder", "unet", "unet_chunk1", "unet_chunk2", "vae_decoder", "vae_encoder", "safety_checker"}
        expected = contract(2, height // 2, width // 2, 32, 2)
        for name, (inputs, outputs) in expected.items():
            package = packages[("coreml-tiny-sd1", name)]
            assert package.path == f"coreml-tiny-sd1/{variant}/packages/" \
                                   f"Stable_Diffusion_version_tests_tiny-sd1_{name}.mlpackage"
            contents = read_package(tmp_path / package.path)
            assert (contents.inputs, contents.outputs) == (inputs, outputs), (variant, name)
            contents.release()
            if name == "text_encoder":  # the same program at every size: placed, not converted again
                assert package.shared_from and not package.weights_from
                continue
            assert package.weights_from and {c.name for c in package.checks} >= {"psnr_program", "psnr_torch"}
            assert all(not c.failed for c in package.checks)
            assert (tmp_path / "_validation" / f"{check_data_name(name, variant)}.npz").is_file()
        for (repo, name), package in packages.items():
            if name == "text_encoder" or name == "safety_checker" and repo.endswith("palettized"):
                continue
            native = next(p for p in report.packages if (p.repo, p.component, p.precision) ==
                          (repo, name, package.precision) and variant_size(p.variant) is None)
            ours, theirs = (tmp_path / p.path / "Data/com.apple.CoreML/weights/weight.bin" for p in (package, native))
            assert ours.read_bytes() == theirs.read_bytes() and os.path.samefile(ours, theirs), (repo, name)
            # the program is the size's own
            assert (tmp_path / package.path / "Data/com.apple.CoreML/model.mlmodel").read_bytes() != \
                (tmp_path / native.path / "Data/com.apple.CoreML/model.mlmodel").read_bytes()
    palettized = [p for p in report.packages if p.repo == "coreml-tiny-sd1-palettized" and p.component == "unet"]
    assert {p.variant for p in palettized} == set(report.variants) and all(p.weights_from for p in palettized[1:])


@pytest.mark.parametrize("size,message", [("30x32", "not a multiple of 4"), ("32x72", "more than twice"),
                                          ("banana", "not an image size")])
def test_sizes_the_model_cannot_take_are_refused_before_any_work(sd1_pipeline, tmp_path, size, message) -> None:
    with pytest.raises(OptionsError, match=message):
        convert_pipeline(resolve_source(str(sd1_pipeline), source_id="tests/tiny-sd1"), tmp_path / "out",
                         ConvertOptions(resolutions=(size,)))
    assert not (tmp_path / "out").exists()


def test_a_batch_one_unet_takes_one_sample_and_is_validated(sd1_pipeline, tmp_path) -> None:
    report = convert_pipeline(resolve_source(str(sd1_pipeline), source_id="tests/tiny-sd1"), tmp_path, ConvertOptions(
        attentions=(Attention.ORIGINAL,), bits=None, unet_batch_one=True, controlled_unet=True,
        components=("unet", "controlled_unet", "vae_encoder")))
    assert report.passed and report.options["batch_size"] == 1
    for name in ("unet", "controlled_unet"):
        package = next(p for p in report.packages if p.component == name)
        contents = read_package(tmp_path / package.path)
        assert [shape[0] for _, shape, _ in contents.inputs] == [1] * len(contents.inputs)
        assert contents.outputs == [("noise_pred", (1, 4, 16, 16), F32)]
        contents.release()
        assert any(c.name == "psnr_program" and not c.failed for c in package.checks)


def test_sharded_and_fp16_only_weights_convert_to_the_same_packages(sd1_pipeline, sd1_conversion, tmp_path) -> None:
    """A UNet whose weights are sharded (with their index) and a text encoder present only as the fp16 variant, as
    such repos are published: resolved, loaded (the memory-lean loader too) and converted to the packages the
    plain folder gives, weight for weight."""
    import shutil

    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    from workers.convert.specs.loading import load_lean_component

    source = Path(shutil.copytree(sd1_pipeline, tmp_path / "src" / sd1_pipeline.name))
    unet = UNet2DConditionModel.from_pretrained(source / "unet")
    shutil.rmtree(source / "unet")
    unet.save_pretrained(source / "unet", max_shard_size="500KB")
    shards = sorted(p.name for p in (source / "unet").glob("*.safetensors"))
    assert len(shards) > 2 and shards[0] == f"diffusion_pytorch_model-00001-of-{len(shards):05d}.safetensors"
    assert (source / "unet" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    text = CLIPTextModel.from_pretrained(source / "text_encoder")
    shutil.rmtree(source / "text_encoder")
    text.half().save_pretrained(source / "text_encoder", variant="fp16")
    assert [p.name for p in (source / "text_encoder").glob("*.safetensors")] == ["model.fp16.safetensors"]

    resolved = resolve_source(str(source), source_id="tests/tiny-sd1")
    assert resolved.weight_variant["text_encoder"] == "fp16" and set(resolved.weight_files["unet"]) == {
        f"unet/{name}" for name in shards + ["diffusion_pytorch_model.safetensors.index.json"]}
    lean = load_lean_component(UNet2DConditionModel, source, "unet", variant=None, meta=False)
    assert all(torch.equal(lean.state_dict()[k].half(), v.half()) for k, v in unet.state_dict().items())
    report = convert_pipeline(resolved, tmp_path / "out", ConvertOptions(
        attentions=(Attention.ORIGINAL,), bits=None, components=("text_encoder", "unet")))
    assert report.passed
    out, _ = sd1_conversion
    for name in ("text_encoder", "unet"):
        package = next(p for p in report.packages if p.component == name)
        ours, plain = (folder / package.path / "Data/com.apple.CoreML/weights/weight.bin"
                       for folder in (tmp_path / "out", out))
        assert ours.read_bytes() == plain.read_bytes(), name
