"""The manifest every published repo carries (``coreml-publisher.json``): what it holds, machine-readable.

Variants (layout, image size, deployment target and OS versions, zip), each component's package and compiled
resource with its size, input and output features and validation figures, the source (repo, commit, license)
and the toolchain.  The ``download`` command and the status page's repo page read it; people and tools can too.
Its schema is the pydantic model below, written out as JSON Schema in ``docs/manifest.schema.json`` (a test keeps
the two the same).  ``schema_version`` changes only when a field is removed or changes meaning; fields are added
without it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.convert.targets import SPEC_VERSIONS
from workers.errors import OutputError
from workers.names import COMPILED_NAMES, Attention, compiled_file_name, variant_layout, variant_size
from workers.validate.report import Report

MANIFEST_FILE = "coreml-publisher.json"
SCHEMA_VERSION = 1


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True)  # fields a newer version adds are ignored by this one


class Feature(_Model):
    """One input or output of a Core ML model, as its description declares it."""

    name: str
    shape: list[int]
    dtype: str = Field(description="float16, float32 or int32")


class Figure(_Model):
    """One validation check of a package: its value in dB (PSNR checks) and the bar it had to reach."""

    check: str = Field(description="psnr_program (the saved program executed), psnr_torch (the weights read back "
                                   "into torch), psnr_layout, structure, weights, recipe, coreml")
    status: Literal["passed", "failed", "skipped"]
    value: float | None = None
    bar: float | None = None


class Component(_Model):
    """One model of a variant: a Swift pipeline resource (Unet, TextEncoder, VAEDecoder …)."""

    component: str = Field(description="the component's name in the report: unet, text_encoder, vae_decoder …")
    resource: str = Field(description="the compiled resource's name the Swift pipeline loads (Unet.mlmodelc)")
    package: str = Field(description="the .mlpackage, relative to the repo's root")
    compiled: str | None = Field(description="the .mlmodelc folder relative to the repo's root (None: not compiled)")
    precision: str = Field(description="float16, float32, palettized-6bit, palettized-6bit-group16, mixed-4.50bit …")
    size_bytes: int
    deployment_target: str | None
    shared_from: str | None = Field(None, description="the package this one is a copy of (a layout-independent "
                                                      "component, or a float16 one in a palettized repo)")
    inputs: list[Feature]
    outputs: list[Feature]
    figures: list[Figure]


class Variant(_Model):
    """One variant folder: a layout at an image size."""

    name: str = Field(description="the folder: original, split_einsum_v2, or <layout>/<W>x<H> for an extra size")
    attention: str
    image_size: tuple[int, int] = Field(description="width, height in pixels")
    deployment_target: str = Field(description="the newest of its packages' (iOS16, iOS17, macOS14 …)")
    zip: str | None = Field(description="the zip of its compiled resources (None: packages only)")
    components: list[Component]


class Source(_Model):
    id: str
    repo_id: str | None
    sha: str | None
    license: str | None


class Manifest(_Model):
    """A published repo, machine-readable (``coreml-publisher.json`` at its root)."""

    schema_version: Literal[1] = SCHEMA_VERSION
    repo_id: str
    kind: Literal["float16", "palettized"]
    pipeline: str = Field(description="stable-diffusion, stable-diffusion-xl or controlnet")
    native_image_size: tuple[int, int]
    batch_size: int
    source: Source
    toolchain: dict[str, str]
    variants: list[Variant]
    recipes: dict[str, dict] = Field(default_factory=dict, description="mixed-bit: each component's recipe in brief")

    @property
    def deployment_target(self) -> str | None:
        """The newest of its variants' deployment targets that this version knows (what the repo needs)."""
        return _newest(v.deployment_target for v in self.variants)


def _newest(targets) -> str | None:
    known = [t for t in targets if t in SPEC_VERSIONS]
    return max(known, key=SPEC_VERSIONS.__getitem__) if known else None


def _features(package: Path) -> tuple[list[Feature], list[Feature]]:
    """The declared inputs and outputs of a saved package (its specification only; the weights are not read)."""
    import coremltools as ct

    from workers.validate.readback import feature_list

    description = ct.utils.load_spec(str(package)).description
    return tuple([Feature(name=name, shape=list(shape), dtype=dtype) for name, shape, dtype in feature_list(found)]
                 for found in (description.input, description.output))


def build_manifest(report: Report, out: Path | None, *, kind: str, name: str, repo_id: str, variants: list[str],
                   compiled: bool, zips: dict[str, str]) -> Manifest:
    """The manifest of repo ``name`` of the packaged output ``out`` (after its variants are compiled and zipped,
    when ``compiled``).  Without ``out``, from the report alone: no features, nothing found compiled (a card
    rendered without the packages at hand)."""
    geometry = report.geometry
    native = (geometry["latent_width"] * geometry["vae_scale_factor"],
              geometry["latent_height"] * geometry["vae_scale_factor"])
    folder = out / name if out is not None else None
    built = []
    for variant in variants:
        packages = sorted(report.packages_of(name, variant), key=lambda p: list(COMPILED_NAMES).index(p.component)
                          if p.component in COMPILED_NAMES else len(COMPILED_NAMES))
        components = []
        for p in packages:
            package = p.path.removeprefix(f"{name}/")
            resource = compiled_file_name(p.component, report.source.get("id"))
            found = folder is not None and compiled and (folder / variant / "compiled" / resource).exists()
            inputs, outputs = _features(out / p.path) if out is not None else ([], [])
            components.append(Component(
                component=p.component, resource=resource, package=package,
                compiled=f"{variant}/compiled/{resource}" if found else None,
                precision=p.precision, size_bytes=p.size_bytes, deployment_target=p.target,
                shared_from=p.shared_from, inputs=inputs, outputs=outputs,
                figures=[Figure(check=c.name, status=c.status, value=c.value, bar=c.threshold) for c in p.checks]))
        built.append(Variant(name=variant, attention=variant_layout(variant).value,
                             image_size=variant_size(variant) or native,
                             deployment_target=_newest(c.deployment_target for c in components) or "iOS16",
                             zip=zips.get(variant) if compiled else None, components=components))
    xl = (geometry.get("time_ids") or 0) > 0
    pipeline = "controlnet" if report.pipeline == "controlnet" else \
        "stable-diffusion-xl" if xl else "stable-diffusion"
    source = report.source
    return Manifest(repo_id=repo_id, kind=kind, pipeline=pipeline, native_image_size=native,
                    batch_size=geometry.get("batch_size", 2),
                    source=Source(id=source["id"], repo_id=source.get("repo_id"), sha=source.get("sha"),
                                  # as the source's card declares it, when that is a name (a card may hold anything)
                                  license=source["license"] if isinstance(source.get("license"), str) else None),
                    toolchain={k: str(v) for k, v in report.toolchain.items()}, variants=built,
                    recipes=report.recipes if kind == "palettized" else {})


def write_manifest(folder: Path, manifest: Manifest) -> Path:
    path = folder / MANIFEST_FILE
    path.write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


def read_manifest(text: str, *, where: str) -> Manifest:
    """A manifest from its JSON; OutputError naming ``where`` when it is not one this version reads."""
    try:
        return Manifest.model_validate_json(text)
    except ValidationError as e:
        first = e.errors()[0]
        at = ".".join(str(part) for part in first["loc"]) or "the top"
        raise OutputError(f"{where} is not a manifest this version reads ({at}: {first['msg']})",
                          hint="Upgrade coreml-publisher, or use the repo's card.") from None


def schema() -> dict:
    """The manifest's JSON Schema (``docs/manifest.schema.json``)."""
    return Manifest.model_json_schema()


def variant_names(manifest: Manifest) -> list[str]:
    return [v.name for v in manifest.variants]


def find_variant(manifest: Manifest, attention: str, size: tuple[int, int] | None) -> Variant | None:
    """The variant of ``attention`` at image ``size`` (None: the native size), if the repo holds it."""
    wanted = tuple(size) if size else tuple(manifest.native_image_size)
    for variant in manifest.variants:
        if variant.attention == Attention(attention).value and tuple(variant.image_size) == wanted:
            return variant
    return None


def dumps_schema() -> str:
    return json.dumps(schema(), indent=2, sort_keys=True) + "\n"
