"""Repo trees: deterministic zips with one top-level folder, model cards the Hub accepts."""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import ModelCard

from workers.errors import OutputError
from workers.package.card import render_card
from workers.package.complete import check_complete, check_output
from workers.package.repos import package_output, write_zip
from workers.validate.report import Report


@pytest.fixture
def output(sd2_conversion, tmp_path: Path) -> Path:
    """A private copy of the SD2 conversion output (packaging writes into it)."""
    return Path(shutil.copytree(sd2_conversion[0], tmp_path / "out", symlinks=True))


def test_zips_are_deterministic_and_hold_one_folder_named_like_the_stem(tmp_path: Path) -> None:
    folder = tmp_path / "compiled"
    (folder / "Unet.mlmodelc" / "weights").mkdir(parents=True)
    (folder / "Unet.mlmodelc" / "weights" / "weight.bin").write_bytes(b"\1" * 5000)
    (folder / "vocab.json").write_text("{}")
    first = write_zip(folder, tmp_path / "repo_split_einsum_v2_compiled.zip", "repo_split_einsum_v2_compiled")
    data = first.read_bytes()
    (folder / "vocab.json").touch()  # a newer mtime must not change the bytes
    second = write_zip(folder, tmp_path / "again.zip", "repo_split_einsum_v2_compiled")
    assert second.read_bytes() == data
    names = zipfile.ZipFile(first).namelist()
    assert {n.split("/")[0] for n in names} == {"repo_split_einsum_v2_compiled"}
    assert "repo_split_einsum_v2_compiled/Unet.mlmodelc/weights/weight.bin" in names


def test_compiled_trees_zips_and_cards(output: Path, xcrun_double) -> None:
    trees = package_output(output, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"))
    assert [(t.kind, t.name, t.variants) for t in trees] == [
        ("float16", "coreml-tiny-sd2", ("original", "split_einsum_v2")),
        ("palettized", "coreml-tiny-sd2-palettized", ("original", "split_einsum_v2"))]
    pal = output / "coreml-tiny-sd2-palettized"
    for variant in ("original", "split_einsum_v2"):
        archive = pal / f"coreml-tiny-sd2-palettized_{variant}_compiled.zip"
        names = zipfile.ZipFile(archive).namelist()
        assert {n.split("/")[0] for n in names} == {archive.stem}
        assert f"{archive.stem}/Unet.mlmodelc/coremldata.bin" in names and f"{archive.stem}/merges.txt" in names
    card = ModelCard.load(pal / "README.md")
    assert "The float16 version is [studio/coreml-tiny-sd2](/studio/coreml-tiny-sd2)." in card.text
    assert card.data.base_model == "tests/tiny-sd2"  # the --source-id the conversion was given
    assert card.data.base_model_relation == "quantized"
    assert "base_model_relation" not in ModelCard.load(output / "coreml-tiny-sd2" / "README.md").data.to_dict()
    assert card.data.license == "creativeml-openrail-m" and card.data.pipeline_tag == "text-to-image"
    assert {"core-ml", "stable-diffusion", "text-to-image"} <= set(card.data.tags)
    assert "| split_einsum_v2 | unet | palettized-6bit |" in card.text
    assert 'allow_patterns="split_einsum_v2/compiled/*"' in card.text
    assert "coreml-tiny-sd2-palettized_split_einsum_v2_compiled.zip" in card.text
    assert "## Original model card" in card.text and "Tiny random SD2 pipeline" in card.text


def test_packages_only_cards_say_compiled_resources_are_absent(output: Path, xcrun_double) -> None:
    package_output(output, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"))
    package_output(output, namespace="studio", compiled=False)
    pal = output / "coreml-tiny-sd2-palettized"
    assert not list(pal.glob("*.zip")) and not list(pal.glob("*/compiled"))
    assert "Compiled resources are absent" in (pal / "README.md").read_text()


def test_a_missing_or_failed_report_is_refused(tmp_path: Path, output: Path) -> None:
    with pytest.raises(OutputError, match="holds no report.json"):
        package_output(tmp_path, namespace="x", compiled=False)
    report = output / "report.json"
    report.write_text(report.read_text().replace('"status": "passed"', '"status": "failed"', 1))  # a package that failed
    with pytest.raises(OutputError, match="did not pass validation"):
        package_output(output, namespace="x", compiled=False)


def test_cards_name_the_palette_granularity(output: Path) -> None:
    report = Report.load(output)
    kwargs = dict(kind="palettized", repo_id="studio/x-palettized", sibling_id="studio/x",
                  variants=["original"], compiled=False)
    assert "6-bit palettized weights (the VAE" in render_card(report, **kwargs)
    report.options["group_size"] = 16
    assert "6-bit palettized weights, one palette per 16 output channels (the VAE" in render_card(report, **kwargs)


def core_ml_double(output: Path, *, damage: float = 1.0, calls: list | None = None):
    """TEST DOUBLE of Core ML's prediction with a compiled model (Core ML exists only on macOS).

    It predicts what Core ML should: the program of the package the model was compiled from, executed by
    the project's program executor in float16; ``damage`` scales the outputs to stand for a wrong model.
    """
    from workers.execute.executor import execute_program
    from workers.names import COMPILED_NAMES, package_file_name
    from workers.validate.readback import read_package

    source_id = json.loads((output / "report.json").read_text())["source"]["id"]
    components = {f"{name}.mlmodelc": component for component, name in COMPILED_NAMES.items()}

    def predict(model: Path, inputs: dict, compute_units: str) -> dict:
        assert model.is_dir()
        component = components[model.name]
        if calls is not None:
            calls.append((model.parent.parent.parent.name, model.parent.parent.name, component, compute_units))
        package = model.parent.parent / "packages" / package_file_name(source_id, component)
        result = execute_program(read_package(package).program, inputs)
        return {k: v * damage for k, v in result.items()}

    return predict


def test_compiled_models_are_checked_against_the_reference(output: Path, xcrun_double) -> None:
    calls: list = []
    package_output(output, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"),
                   predict=core_ml_double(output, calls=calls))
    report = json.loads((output / "report.json").read_text())
    assert report["passed"]
    for package in report["packages"]:
        check = {c["name"]: c for c in package["checks"]}["psnr_coreml"]
        assert check["status"] == "passed" and check["where"] == "coreml", package["path"]
        assert check["threshold"] == (35.0 if package["precision"] == "float16" else 25.0)
        assert ("CPU_AND_NE" in check["detail"]) == package["variant"].startswith("split_einsum")
    assert len(calls) == len(report["packages"]) + sum(p["variant"] == "split_einsum_v2" for p in report["packages"])
    card = (output / "coreml-tiny-sd2" / "README.md").read_text()
    assert "Program, torch and Core ML checks ran for every package (Core ML on macOS)." in card


def test_a_compiled_model_below_its_bar_fails_the_stage(output: Path, xcrun_double) -> None:
    from workers.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        package_output(output, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"),
                       predict=core_ml_double(output, damage=-1.0))
    assert "compiled psnr_coreml" in caught.value.failures[0]
    report = json.loads((output / "report.json").read_text())
    assert report["passed"] is False
    with pytest.raises(OutputError, match="did not pass validation"):
        package_output(output, namespace="studio", compiled=False)  # nothing gets published after that


def test_check_data_travels_with_the_output(output: Path) -> None:
    from workers.validate.compiled import load_check_data

    for component in ("text_encoder", "unet", "vae_decoder", "vae_encoder"):
        data = load_check_data(output, component)
        assert data is not None and data.compared and set(data.reference) >= set(data.compared)
    unet = load_check_data(output, "unet")
    assert unet.inputs["sample"].dtype == np.float16 and unet.inputs["timestep"][0] != 981.0


@pytest.mark.macos
def test_real_core_ml_predicts_with_every_compiled_model(output: Path) -> None:
    package_output(output, namespace="studio", compiled=True)  # the real xcrun coremlcompiler and Core ML
    report = json.loads((output / "report.json").read_text())
    assert report["passed"]
    for package in report["packages"]:
        check = {c["name"]: c for c in package["checks"]}["psnr_coreml"]
        assert check["status"] == "passed" and "CPU_AND_GPU" in check["detail"], package["path"]


# --- complete variants only ------------------------------------------------------------------------------

def _variant_report(*components: str, failed: tuple[str, ...] = ()) -> Report:
    """A report whose float16 repo has ``components`` in its original variant."""
    return Report.from_dict({
        "source": {}, "options": {"attentions": ["original"]}, "geometry": {}, "toolchain": {},
        "repos": {"float16": "coreml-x", "palettized": "coreml-x-palettized"}, "packages": [
            {"repo": "coreml-x", "variant": "original", "component": c, "precision": "float16",
             "path": f"coreml-x/original/packages/Stable_Diffusion_version_x_{c}.mlpackage",
             "status": "failed" if c in failed else "passed", "checks": []} for c in components]})


def _compiled(folder: Path, *names: str) -> Path:
    """A compiled folder holding ``names`` (.mlmodelc folders with a file, other names as files)."""
    for name in names:
        if name.endswith(".mlmodelc"):
            (folder / name).mkdir(parents=True)
            (folder / name / "coremldata.bin").write_bytes(b"x")
        else:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("{}")
    return folder


@pytest.mark.parametrize(("components", "missing"), [
    (("unet", "vae_decoder", "vae_encoder"), "text_encoder"),
    (("text_encoder", "vae_decoder", "vae_encoder"), "unet (or both unet_chunk1 and unet_chunk2)"),
    (("text_encoder", "unet_chunk1", "vae_decoder"), "unet_chunk2 to go with unet_chunk1 (or unet)"),
    (("text_encoder", "unet_chunk2", "vae_decoder"), "unet_chunk1 to go with unet_chunk2 (or unet)"),
    (("text_encoder", "unet", "vae_encoder"), "vae_decoder"),
    (("safety_checker",), "text_encoder; unet (or both unet_chunk1 and unet_chunk2); vae_decoder"),
])
def test_a_variant_without_what_the_swift_pipeline_loads_is_refused(components, missing) -> None:
    with pytest.raises(OutputError) as caught:
        check_complete(_variant_report(*components), "coreml-x", "original", namespace="studio")
    assert caught.value.message.startswith("studio/coreml-x (variant original) ")
    assert caught.value.message.endswith(f"nothing is published; missing: {missing}")
    assert "--components" in caught.value.hint and "\n" not in caught.value.one_line()


def test_sdxl_variants_need_the_second_text_encoder_and_the_first_unless_a_refiner() -> None:
    base = _variant_report("text_encoder", "unet", "vae_decoder")
    base.geometry = {"time_ids": 6}
    with pytest.raises(OutputError, match="missing: text_encoder_2$"):
        check_complete(base, "coreml-x", "original")
    refiner = _variant_report("text_encoder_2", "unet", "vae_decoder")
    refiner.geometry = {"time_ids": 5}
    check_complete(refiner, "coreml-x", "original")  # a refiner's UNet needs only the second encoder
    refiner.geometry = {"time_ids": 6}
    with pytest.raises(OutputError, match="missing: text_encoder$"):
        check_complete(refiner, "coreml-x", "original")


def test_a_package_that_failed_validation_counts_as_missing() -> None:
    report = _variant_report("text_encoder", "unet", "vae_decoder", failed=("unet",))
    with pytest.raises(OutputError, match=r"missing: unet \(failed validation\) \(or both unet_chunk1 and "
                                           r"unet_chunk2\)$") as caught:
        check_complete(report, "coreml-x", "original")
    assert "report.json" in caught.value.hint


def test_unet_chunks_stand_for_the_whole_unet_and_compiled_variants_need_their_resources(tmp_path: Path) -> None:
    report = _variant_report("text_encoder", "unet_chunk1", "unet_chunk2", "vae_decoder")
    check_complete(report, "coreml-x", "original")  # packages: complete
    compiled = _compiled(tmp_path / "compiled", "TextEncoder.mlmodelc", "UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc",
                         "VAEDecoder.mlmodelc", "vocab.json", "merges.txt")
    check_complete(report, "coreml-x", "original", compiled_dir=compiled)  # compiled: complete
    for name in ("vocab.json", "merges.txt", "UnetChunk2.mlmodelc", "VAEDecoder.mlmodelc"):
        moved = compiled / name
        moved.rename(tmp_path / name)
        with pytest.raises(OutputError) as caught:
            check_complete(report, "coreml-x", "original", compiled_dir=compiled, namespace="studio")
        assert caught.value.message.endswith(f"missing: compiled/{name}"), name
        assert "studio/coreml-x (variant original)" in caught.value.message
        assert "--packages-only" in caught.value.hint
        (tmp_path / name).rename(moved)


def _drop_components(output: Path, *components: str) -> None:
    report = json.loads((output / "report.json").read_text())
    report["packages"] = [p for p in report["packages"] if p["component"] not in components]
    (output / "report.json").write_text(json.dumps(report))


def test_packaging_refuses_an_incomplete_conversion_before_any_work(output: Path, xcrun_double) -> None:
    _drop_components(output, "text_encoder")  # as if converted with --components unet,vae_decoder,vae_encoder
    with pytest.raises(OutputError) as caught:
        package_output(output, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"))
    assert caught.value.message.startswith("studio/coreml-tiny-sd2 (variant original) ")
    assert caught.value.message.endswith("missing: text_encoder")
    assert not list(output.glob("*/README.md")) and not list(output.glob("*/*.zip"))
    assert not list(output.glob("*/*/compiled"))


def test_a_variant_with_unet_chunks_instead_of_the_whole_unet_is_packaged(output: Path, xcrun_double) -> None:
    report = json.loads((output / "report.json").read_text())
    packages = []
    for package in report["packages"]:  # the whole unet's package stands in for both chunks
        if package["component"] == "unet":
            packages += [{**package, "component": "unet_chunk1"}, {**package, "component": "unet_chunk2"}]
        else:
            packages.append(package)
    report["packages"] = packages
    (output / "report.json").write_text(json.dumps(report))
    trees = package_output(output, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"))
    assert len(trees) == 2
    archive = output / "coreml-tiny-sd2" / "coreml-tiny-sd2_original_compiled.zip"
    names = {n.split("/")[1] for n in zipfile.ZipFile(archive).namelist()}
    assert {"UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc", "TextEncoder.mlmodelc", "vocab.json"} <= names
    assert "Unet.mlmodelc" not in names
    report["packages"] = [p for p in packages if p["component"] != "unet_chunk2"]
    (output / "report.json").write_text(json.dumps(report))
    with pytest.raises(OutputError, match=r"missing: unet_chunk2 to go with unet_chunk1 \(or unet\)$"):
        check_output(Report.from_dict(report), output, namespace="studio")


def test_a_float16_only_run_links_no_palettized_repo(output: Path) -> None:
    report = json.loads((output / "report.json").read_text())  # as `convert --bits 0` writes it
    report["options"]["bits"] = None
    report["packages"] = [p for p in report["packages"] if p["repo"] == report["repos"]["float16"]]
    (output / "report.json").write_text(json.dumps(report))
    shutil.rmtree(output / report["repos"]["palettized"])
    trees = package_output(output, namespace="studio", compiled=False)
    assert [t.kind for t in trees] == ["float16"]
    card = (output / "coreml-tiny-sd2" / "README.md").read_text()
    assert "palettized" not in card.lower()
    assert "studio/coreml-tiny-sd2" in card  # its own repo is named
