"""The manifest every published repo carries: what it holds, read back whole, documented by its schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from workers.errors import OutputError
from workers.package.manifest import MANIFEST_FILE, Manifest, dumps_schema, find_variant, read_manifest
from workers.package.repos import package_output
from workers.validate.report import Report

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def output(sd2_conversion, tmp_path: Path) -> Path:
    return Path(shutil.copytree(sd2_conversion[0], tmp_path / "out", symlinks=True))


def test_the_documented_schema_is_the_manifests_own() -> None:
    assert (ROOT / "docs" / "manifest.schema.json").read_text() == dumps_schema(), \
        "docs/manifest.schema.json is stale: write workers.package.manifest.dumps_schema() to it"


def test_a_packaged_repo_describes_itself(output: Path, xcrun_double) -> None:
    import jsonschema

    package_output(output, namespace="studio", compiled=True, compiler=("xcrun", "coremlcompiler"))
    folder = output / "coreml-tiny-sd2-palettized"
    data = json.loads((folder / MANIFEST_FILE).read_text())
    jsonschema.validate(data, json.loads(dumps_schema()))
    manifest = read_manifest((folder / MANIFEST_FILE).read_text(), where="it")
    assert manifest.repo_id == "studio/coreml-tiny-sd2-palettized" and manifest.kind == "palettized"
    assert manifest.source.id == "tests/tiny-sd2" and manifest.pipeline == "stable-diffusion"
    assert [v.name for v in manifest.variants] == ["original", "split_einsum_v2"]
    variant = find_variant(manifest, "split_einsum_v2", None)
    assert variant.zip == "coreml-tiny-sd2-palettized_split_einsum_v2_compiled.zip"
    assert (folder / variant.zip).is_file() and variant.deployment_target == "iOS17"
    unet = next(c for c in variant.components if c.component == "unet")
    assert unet.resource == "Unet.mlmodelc" and (folder / unet.compiled).is_dir() and (folder / unet.package).is_dir()
    assert unet.precision == "palettized-6bit" and unet.size_bytes > 0
    width, height = manifest.native_image_size
    factor = Report.load(output).geometry["vae_scale_factor"]
    assert [f.name for f in unet.inputs][:1] == ["sample"]
    assert unet.inputs[0].shape == [manifest.batch_size, 4, height // factor, width // factor]
    program = next(f for f in unet.figures if f.check == "psnr_program")
    assert program.status == "passed" and program.value >= program.bar
    vae = next(c for c in variant.components if c.component == "vae_decoder")
    assert vae.outputs[0].shape == [1, 3, height, width]
    # the float16 repo's manifest is its own
    float16 = read_manifest((output / "coreml-tiny-sd2" / MANIFEST_FILE).read_text(), where="it")
    assert float16.kind == "float16" and float16.variants[0].deployment_target == "iOS16"


def test_a_manifest_from_a_newer_version_reads_and_a_broken_one_is_refused() -> None:
    manifest = Manifest(repo_id="a/b", kind="float16", pipeline="stable-diffusion", native_image_size=(512, 512),
                        batch_size=2, source={"id": "x/y", "repo_id": "x/y", "sha": None, "license": None},
                        toolchain={}, variants=[])
    newer = json.loads(manifest.model_dump_json()) | {"added_later": {"anything": 1}}
    assert read_manifest(json.dumps(newer), where="it") == manifest  # fields added later are ignored
    with pytest.raises(OutputError, match="kind: Input should be 'float16' or 'palettized'"):
        read_manifest(manifest.model_dump_json().replace('"float16"', '"int3"'), where="a/b's coreml-publisher.json")
    with pytest.raises(OutputError, match="not a manifest this version reads"):
        read_manifest("{", where="it")
