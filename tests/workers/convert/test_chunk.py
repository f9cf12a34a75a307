"""UNet chunks for iOS: the Swift interface of both chunks, chunk 1 → chunk 2 equal to the whole UNet, and
weights split within 10 % of half, on the tiny SD 1.x UNet in both default layouts."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import negate_largest_weight
from workers.convert.chunk import BALANCE, validate_chunks, weight_file_bytes
from workers.convert.engine import convert_pipeline
from workers.options import ConvertOptions
from workers.errors import OptionsError
from workers.validate.readback import read_package
from workers.source.resolve import resolve_source


@pytest.fixture(scope="session")
def chunked(sd1_pipeline: Path, tmp_path_factory: pytest.TempPathFactory):
    """The tiny UNet converted with --chunk-unet, float16 only: (output folder, report)."""
    out = tmp_path_factory.mktemp("chunked")
    report = convert_pipeline(resolve_source(str(sd1_pipeline)), out,
                              ConvertOptions(components=("unet",), bits=None, chunk_unet=True))
    return out, report


def _packages(out: Path, report, variant: str) -> dict[str, Path]:
    return {p.component: out / p.path for p in report.packages if p.variant == variant}


@pytest.mark.parametrize("variant", ["original", "split_einsum_v2"])
def test_chunks_have_the_interface_swift_feeds(chunked, variant: str) -> None:
    """Chunk 1 takes the UNet's inputs; chunk 2 takes chunk 1's outputs and UNet inputs, and outputs noise_pred."""
    out, report = chunked
    packages = _packages(out, report, variant)
    assert sorted(packages) == ["unet", "unet_chunk1", "unet_chunk2"]
    assert packages["unet_chunk1"].name.endswith("_unet_chunk1.mlpackage")
    assert packages["unet_chunk2"].name.endswith("_unet_chunk2.mlpackage")
    whole, one, two = (read_package(packages[c]) for c in ("unet", "unet_chunk1", "unet_chunk2"))
    assert one.inputs == whole.inputs
    assert two.outputs == whole.outputs and [n for n, *_ in two.outputs] == ["noise_pred"]
    assert all(dtype == "float32" for _, _, dtype in one.outputs)  # crossing values leave chunk 1 as float32
    fed = {name: (shape, dtype) for name, shape, dtype in whole.inputs + one.outputs}
    assert all(fed[name] == (shape, dtype) for name, shape, dtype in two.inputs)
    assert {n for n, *_ in one.outputs} <= {n for n, *_ in two.inputs}  # nothing computed for nobody
    assert one.metadata["component"] == "unet_chunk1" and two.metadata["deployment_target"] == "iOS16"


@pytest.mark.parametrize("variant", ["original", "split_einsum_v2"])
def test_chained_chunks_equal_the_whole_unet(chunked, variant: str) -> None:
    from workers.execute.executor import execute_program
    from workers.validate.compiled import load_check_data

    out, report = chunked
    packages = _packages(out, report, variant)
    data = load_check_data(out, "unet")
    whole = read_package(packages["unet"])
    expected = execute_program(whole.program, data.inputs, constants=whole.expanded)
    one = read_package(packages["unet_chunk1"])
    feed = {**data.inputs, **execute_program(one.program, {n: data.inputs[n] for n, *_ in one.inputs})}
    two = read_package(packages["unet_chunk2"])
    chained = execute_program(two.program, {n: feed[n] for n, *_ in two.inputs})
    assert np.array_equal(chained["noise_pred"], expected["noise_pred"])
    checks = {p.component: {c.name: c for c in p.checks} for p in report.packages if p.variant == variant}
    assert checks["unet_chunk2"]["chain"].status == "passed"
    assert checks["unet_chunk2"]["psnr_program"].value == checks["unet"]["psnr_program"].value


@pytest.mark.parametrize("variant", ["original", "split_einsum_v2"])
def test_each_chunk_holds_about_half_the_weights(chunked, variant: str) -> None:
    out, report = chunked
    packages = _packages(out, report, variant)
    half = weight_file_bytes(packages["unet"]) / 2
    for component in ("unet_chunk1", "unet_chunk2"):
        assert abs(weight_file_bytes(packages[component]) / half - 1) <= BALANCE, component
    assert report.passed


def test_a_chunk_that_computes_something_else_fails(chunked, tmp_path: Path) -> None:
    """The checks can fail: chunk 2 with one weight's sign flipped no longer equals the whole UNet."""
    from workers.validate.compiled import load_check_data

    out, report = chunked
    packages = _packages(out, report, "original")
    broken = tmp_path / packages["unet_chunk2"].name
    shutil.copytree(packages["unet_chunk2"], broken)
    negate_largest_weight(broken)
    data = load_check_data(out, "unet")
    first, second = validate_chunks(packages["unet"], packages["unet_chunk1"], broken, data.inputs, data.reference,
                                    data.compared, 35.0)
    assert {c.name: c.status for c in second}["chain"] == "failed"


def test_chunks_only_replace_the_whole_float16_unet(sd1_pipeline: Path, tmp_path: Path) -> None:
    from workers.names import Attention

    options = ConvertOptions(components=("unet",), attentions=(Attention.SPLIT_EINSUM_V2,), chunk_unet=True,
                             chunks_only=True)
    report = convert_pipeline(resolve_source(str(sd1_pipeline)), tmp_path, options)
    assert sorted((p.repo, p.component) for p in report.packages) == [
        ("coreml-tiny-sd1", "unet_chunk1"), ("coreml-tiny-sd1", "unet_chunk2"),
        ("coreml-tiny-sd1-palettized", "unet")]  # palettized UNets fit on iOS whole, as Apple ships them
    assert sorted(p.name.split("_")[-1] for p in tmp_path.glob("coreml-tiny-sd1/*/packages/*")) == [
        "chunk1.mlpackage", "chunk2.mlpackage"]


@pytest.mark.parametrize("options, message", [
    (dict(chunks_only=True), "--chunks-only needs --chunk-unet"),
    (dict(chunk_unet=True, components=("vae_decoder",)), "--chunk-unet needs the unet component"),
])
def test_chunk_options_that_contradict_are_refused(sd1_pipeline: Path, tmp_path: Path, options: dict,
                                                   message: str) -> None:
    with pytest.raises(OptionsError, match=message):
        convert_pipeline(resolve_source(str(sd1_pipeline)), tmp_path / "out", ConvertOptions(**options))


@pytest.mark.parametrize("damage, status", [(1.0, "passed"), (-1.0, "failed")])
def test_compiled_chunks_are_predicted_chained_as_swift_feeds_them(chunked, tmp_path: Path, damage: float,
                                                                   status: str) -> None:
    """On macOS Core ML predicts through UnetChunk1 → UnetChunk2 (here its double) against the UNet's reference."""

    from tests.workers.package.test_repos import core_ml_double
    from workers.errors import ValidationError
    from workers.validate.compiled import check_compiled
    from workers.validate.report import Report

    out = Path(shutil.copytree(chunked[0], tmp_path / "out"))
    report = Report.load(out)
    compiled = out / "coreml-tiny-sd1" / "split_einsum_v2" / "compiled"
    for name in ("Unet", "UnetChunk1", "UnetChunk2"):
        (compiled / f"{name}.mlmodelc").mkdir(parents=True)
    calls: list = []
    try:
        check_compiled(out, report, "coreml-tiny-sd1", "split_einsum_v2", compiled,
                       predict=core_ml_double(out, damage=damage, calls=calls))
    except ValidationError as e:
        assert status == "failed" and "unet_chunk2 (split_einsum_v2, float16) compiled psnr_coreml" in str(e.failures)
    figures = {p.component: {c.name: c for c in p.checks}["psnr_coreml"] for p in report.packages
               if p.variant == "split_einsum_v2"}
    assert figures["unet_chunk1"] == figures["unet_chunk2"]
    assert figures["unet_chunk2"].status == status and "chunk 1 → chunk 2" in figures["unet_chunk2"].detail
    # each compute unit once for the whole UNet and once per chunk, not twice for the pair
    assert sorted(c[2] for c in calls) == sorted(["unet", "unet_chunk1", "unet_chunk2"] * 2)


def test_validate_rechecks_chunks_with_or_without_the_whole_unet(chunked, sd1_pipeline: Path, tmp_path: Path) -> None:
    """`coreml-publish validate`: chunks are re-checked chained; a damaged chunk 2 fails, and a pair shipped
    without its whole UNet (--chunks-only) is held to the UNet's interface and reference."""
    from workers.validate.output import verify_output

    out = Path(shutil.copytree(chunked[0], tmp_path / "out"))
    packages = _packages(out, chunked[1], "original")
    shutil.rmtree(packages["unet"])  # as --chunks-only ships it
    negate_largest_weight(_packages(out, chunked[1], "split_einsum_v2")["unet_chunk2"])
    report = verify_output(out, resolve_source(str(sd1_pipeline)))
    checks = {(p.variant, p.component): {c.name: c.status for c in p.checks} for p in report.packages}
    assert checks[("original", "unet_chunk2")] == {"structure": "passed", "balance": "passed",
                                                   "psnr_program": "passed"}
    assert checks[("original", "unet")]["structure"] == "failed"  # the whole UNet is gone from this tree
    assert checks[("split_einsum_v2", "unet_chunk2")]["chain"] == "failed"
    assert checks[("split_einsum_v2", "unet")]["psnr_program"] == "passed"
