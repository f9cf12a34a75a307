"""ControlNet: the ControlledUnet beside a base's UNet, and ControlNet repos converted for a base (tiny SD 1.x and
2.x models), with Apple's names and interfaces written out literally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.convert.engine import convert_pipeline
from workers.convert.specs import SPECS
from workers.convert.specs.controlnet import ControlledUnetSpec, ControlNetSpec
from workers.devtools.tiny import build_tiny_controlnet
from workers.errors import ValidationError
from workers.names import Attention
from workers.options import ConvertOptions
from workers.source.fetch import fetched
from workers.source.resolve import resolve_source
from workers.validate.readback import read_package

F16, F32 = "float16", "float32"


def residuals(b: int, h: int, w: int) -> list[tuple[int, int, int, int]]:
    """The tiny UNets' down path (block_out_channels 32, 64; one ResNet per block): conv_in, ResNet, downsampler,
    ResNet, then the mid block, written out."""
    return [(b, 32, h, w), (b, 32, h, w), (b, 32, h // 2, w // 2), (b, 64, h // 2, w // 2), (b, 64, h // 2, w // 2)]


@pytest.fixture(scope="module")
def controlnets(sd1_pipeline: Path, sd2_pipeline: Path, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("controlnets")
    return {"sd1": build_tiny_controlnet(root / "sd-controlnet-canny", sd1_pipeline, seed=3),
            "sd2": build_tiny_controlnet(root / "sd2-controlnet-depth", sd2_pipeline, seed=4, condition="depth")}


def _convert(source: str, out: Path, *, base: str | None = None, **options):
    resolved = resolve_source(source, source_id=f"tests/{Path(source).name}", base=base)
    with fetched(resolved) as found:
        return convert_pipeline(found, out, ConvertOptions(**options))


@pytest.mark.parametrize("style,side,context", [("sd1", 16, 32), ("sd2", 24, 64)])
def test_a_controlnet_converts_for_its_base_with_apples_interface(controlnets, sd1_pipeline, sd2_pipeline, tmp_path,
                                                                  style, side, context) -> None:
    base = {"sd1": sd1_pipeline, "sd2": sd2_pipeline}[style]
    name = controlnets[style].name
    report = _convert(str(controlnets[style]), tmp_path, base=str(base),
                      attentions=(Attention.ORIGINAL, Attention.SPLIT_EINSUM_V2) if style == "sd1"
                      else (Attention.SPLIT_EINSUM,), bits=6 if style == "sd1" else None)
    assert report.passed and {p.component for p in report.packages} == {"controlnet"}
    assert len(report.packages) == (4 if style == "sd1" else 1)  # both layouts, float16 and 6-bit
    for p in report.packages:
        assert p.path.endswith(f"/packages/ControlNet_tests_{name}.mlpackage"), p.path
        contents = read_package(tmp_path / p.path)
        assert contents.inputs == [("sample", (2, 4, side, side), F16), ("timestep", (2,), F16),
                                   ("encoder_hidden_states", (2, context, 1, 77), F16),
                                   ("controlnet_cond", (2, 3, 2 * side, 2 * side), F16)]
        assert contents.outputs == [(f"additional_residual_{i}", shape, F32)
                                    for i, shape in enumerate(residuals(2, side, side))]
        program = next(c for c in p.checks if c.name == "psnr_program")
        assert all(f"additional_residual_{i} " in program.detail for i in range(5))  # every residual's figure
        contents.release()
    assert report.source["base"]["id"] == base.name and report.source["pipeline_class"] == "ControlNetModel"


def test_the_controlled_unet_takes_every_residual_and_ships_beside_the_unet(sd1_pipeline, tmp_path) -> None:
    report = convert_pipeline(resolve_source(str(sd1_pipeline), source_id="tests/tiny-sd1"), tmp_path, ConvertOptions(
        attentions=(Attention.SPLIT_EINSUM_V2,), controlled_unet=True, chunk_unet=True,
        components=("unet", "controlled_unet", "vae_encoder")))
    assert report.passed
    found = {p.component: p for p in report.packages if p.repo == "coreml-tiny-sd1"}
    assert set(found) == {"unet", "unet_chunk1", "unet_chunk2", "controlled_unet", "controlled_unet_chunk1",
                          "controlled_unet_chunk2", "vae_encoder"}
    assert found["controlled_unet"].path.endswith("Stable_Diffusion_version_tests_tiny-sd1_control-unet.mlpackage")
    assert found["controlled_unet_chunk2"].path.endswith("_control-unet_chunk2.mlpackage")
    contents = read_package(tmp_path / found["controlled_unet"].path)
    assert contents.inputs == [("sample", (2, 4, 16, 16), F16), ("timestep", (2,), F16),
                               ("encoder_hidden_states", (2, 32, 1, 77), F16)] + [
        (f"additional_residual_{i}", shape, F16) for i, shape in enumerate(residuals(2, 16, 16))]
    assert contents.outputs == [("noise_pred", (2, 4, 16, 16), F32)]
    contents.release()
    palettized = {p.component for p in report.packages if p.repo == "coreml-tiny-sd1-palettized"}
    assert "controlled_unet" in palettized


def test_a_controlled_unet_that_ignores_the_residuals_fails(sd1_pipeline, tmp_path, monkeypatch) -> None:
    plain = SPECS["unet"]

    def ignoring(self, modules, attention):  # the residual adds removed: the plain UNet under the controlled name
        inner = plain.export_module(modules, attention)
        return type(inner)(lambda module, s, t, c, *residuals: inner(s, t, c), inner=inner).eval()

    monkeypatch.setattr(ControlledUnetSpec, "export_module", ignoring)
    with pytest.raises(ValidationError) as raised:
        convert_pipeline(resolve_source(str(sd1_pipeline), source_id="tests/tiny-sd1"), tmp_path, ConvertOptions(
            attentions=(Attention.ORIGINAL,), bits=None, components=("controlled_unet", "vae_encoder")))
    assert "controlled_unet" in str(raised.value)
    failed = [p for p in raised.value.report.packages if p.component == "controlled_unet"]
    assert failed and all(p.status == "failed" for p in failed)


def test_a_controlnet_missing_an_output_fails_validation(controlnets, sd1_pipeline, tmp_path, monkeypatch) -> None:
    real_outputs, real_export = ControlNetSpec.outputs, ControlNetSpec.export_module
    monkeypatch.setattr(ControlNetSpec, "outputs", lambda self, g: real_outputs(self, g)[:-1])
    monkeypatch.setattr(ControlNetSpec, "export_module", lambda self, m, a: _dropping_last(real_export(self, m, a)))
    with pytest.raises(ValidationError, match="controlnet_mid_block.weight") as raised:
        _convert(str(controlnets["sd1"]), tmp_path, base=str(sd1_pipeline), attentions=(Attention.ORIGINAL,),
                 bits=None)
    assert [p.status for p in raised.value.report.packages] == ["failed"]
    assert not (tmp_path / raised.value.report.packages[0].path).exists()  # a failed package is not kept


def _dropping_last(module):
    forward = module._fn
    module._fn = lambda self, *args: forward(self, *args)[:-1]
    return module


def test_a_controlnet_program_feeds_the_controlled_unet_program(controlnets, sd1_pipeline, tmp_path) -> None:
    from diffusers import ControlNetModel, UNet2DConditionModel

    from workers.convert.geometry import read_geometry
    from workers.validate.chain import chain_check, chain_reference

    base = _convert(str(sd1_pipeline), tmp_path / "base", attentions=(Attention.ORIGINAL,), bits=None,
                    controlled_unet=True, components=("controlled_unet", "vae_encoder"))
    cn = _convert(str(controlnets["sd1"]), tmp_path / "cn", base=str(sd1_pipeline), attentions=(Attention.ORIGINAL,),
                  bits=None)
    unet_package = tmp_path / "base" / next(p.path for p in base.packages if p.component == "controlled_unet")
    controlnet_package = tmp_path / "cn" / cn.packages[0].path
    inputs = ControlNetSpec().sample_inputs(read_geometry(sd1_pipeline), seed=11)
    unet = UNet2DConditionModel.from_pretrained(str(sd1_pipeline), subfolder="unet").eval()
    controlnet = ControlNetModel.from_pretrained(str(controlnets["sd1"])).eval()
    reference = chain_reference(controlnet, unet, inputs)
    check = chain_check(controlnet_package, unet_package, inputs, reference, threshold=30.0)
    assert check.status == "passed" and check.value >= 30.0, check
    # the same chain with the ControlNet's weights perturbed is caught
    controlnet.controlnet_mid_block.weight.data *= 3.0
    assert chain_check(controlnet_package, unet_package, inputs, chain_reference(controlnet, unet, inputs),
                       threshold=30.0).failed


def test_the_tiny_controlnet_is_a_published_controlnet_folder(controlnets) -> None:
    folder = controlnets["sd1"]
    assert json.loads((folder / "config.json").read_text())["_class_name"] == "ControlNetModel"
    assert (folder / "diffusion_pytorch_model.safetensors").is_file() and "canny" in (folder / "README.md").read_text()


def test_a_controlnet_takes_the_sizes_of_its_base(controlnets, sd1_pipeline, tmp_path) -> None:
    """--resolution on a ControlNet source: its residuals and condition at that size, the weights the native
    package's, the ControlNet's compiled name unchanged (apps match it to the base's size by its inputs)."""
    import os

    report = _convert(str(controlnets["sd1"]), tmp_path, base=str(sd1_pipeline), attentions=(Attention.ORIGINAL,),
                      bits=None, resolutions=("48x32",))
    assert report.passed and report.variants == ["original", "original/48x32"]
    native, sized = (next(p for p in report.packages if p.variant == v) for v in report.variants)
    assert sized.path == native.path.replace("/original/", "/original/48x32/")
    contents = read_package(tmp_path / sized.path)
    assert contents.inputs[0] == ("sample", (2, 4, 16, 24), F16) and contents.inputs[-1] == (
        "controlnet_cond", (2, 3, 32, 48), F16)
    assert [shape for _, shape, _ in contents.outputs] == residuals(2, 16, 24)
    contents.release()
    weights = [tmp_path / p.path / "Data/com.apple.CoreML/weights/weight.bin" for p in (native, sized)]
    assert os.path.samefile(*weights) and sized.weights_from == native.path
