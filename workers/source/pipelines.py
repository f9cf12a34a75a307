"""What we convert: a diffusers pipeline's model_index.json and file list checked, before any download.

A Stable Diffusion 1.x/2.x or SDXL (base or refiner) diffusers pipeline, safetensors weights for every
component we need (pickle only when explicitly allowed), never remote code; refused otherwise with a one-line
reason naming what the source is.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import Iterable

from workers.errors import SourceError, UnsafeWeightsError, UnsupportedModelError
from workers.package.card import card_license
from workers.source.configs import read_json

SD_PIPELINES = frozenset({"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"})
# SDXL base (and fine-tunes, Turbo) and refiner repos (an img2img pipeline, usually without text_encoder)
XL_PIPELINES = frozenset({"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"})
SUPPORTED_PIPELINES = SD_PIPELINES | XL_PIPELINES
# Pipelines people commonly try; named so the refusal can say what the source is.
KNOWN_UNSUPPORTED = {
    "StableDiffusionXLInpaintPipeline": "SDXL inpainting",
    "StableDiffusionXLControlNetPipeline": "SDXL ControlNet",
    "StableDiffusion3Pipeline": "Stable Diffusion 3",
    "FluxPipeline": "FLUX",
    "StableDiffusionInpaintPipeline": "Stable Diffusion inpainting",
    "StableDiffusionUpscalePipeline": "Stable Diffusion upscaler",
    "StableDiffusionDepth2ImgPipeline": "Stable Diffusion depth-to-image",
    "LatentConsistencyModelPipeline": "LCM",
    "PixArtAlphaPipeline": "PixArt",
    "KandinskyV22Pipeline": "Kandinsky 2.2",
}
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
# diffusers components that hold weights, and the package components that need them
WEIGHT_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae", "safety_checker")
REQUIRED_COMPONENTS = ("text_encoder", "tokenizer", "unet", "vae")
# SDXL: text_encoder (with tokenizer) too, except in a refiner (checked with the UNet's config)
XL_REQUIRED_COMPONENTS = ("text_encoder_2", "tokenizer_2", "unet", "vae")
DEFAULT_MAX_BYTES = 30 * 1024**3  # the weights a conversion downloads; SDXL base's float32 ones are 14 GB
# the files the conversion reads from a CLIP tokenizer folder: either pair, or tokenizer.json alone
TOKENIZER_FILES = (("vocab.json", "merges.txt"), ("tokenizer.json",))
_VARIANT_FILE = re.compile(r"^[^.]+\.(?P<variant>[A-Za-z0-9_]+)\.safetensors$")


def raise_not_diffusers(source: str, files: Iterable[str]) -> None:
    singles = sorted(f for f in files if f.endswith(SINGLE_FILE_SUFFIXES) and "/" not in f)
    detail = f" (it has single-file checkpoints: {', '.join(singles[:3])})" if singles else ""
    raise UnsupportedModelError(
        f"{source} is not a diffusers pipeline: no model_index.json{detail}", source=source,
        hint="Convert it to the diffusers folder layout first, or pick a diffusers repo.")


def read_model_index(path: Path, *, source: str, files: list[str]) -> dict:
    if not path.is_file():
        raise_not_diffusers(source, files)
    index = read_json(path, label="model_index.json", source=source, hint="Fix or regenerate model_index.json.")
    if "_class_name" not in index:
        raise SourceError(f"{source}: model_index.json has no _class_name", source=source,
                          hint="Regenerate it with diffusers' save_pretrained.")
    if not isinstance(index["_class_name"], str):
        raise SourceError(f"{source}: model_index.json's _class_name must be a pipeline class name, not "
                          f"{str(index['_class_name'])[:60]}", source=source,
                          hint="Regenerate it with diffusers' save_pretrained.")
    return index


def _components(index: dict, source: str) -> tuple[str, ...]:
    """The components model_index.json lists with a (library, class) pair; refuses malformed entries of
    the components a conversion uses (others, unused, only count when well formed)."""
    used = {*REQUIRED_COMPONENTS, *XL_REQUIRED_COMPONENTS, *WEIGHT_COMPONENTS, "feature_extractor"}
    present = []
    for key, value in index.items():
        if key.startswith("_") or not (isinstance(value, list) or key in used):
            continue  # pipeline options such as requires_safety_checker
        if not (isinstance(value, list) and len(value) == 2 and all(v is None or isinstance(v, str) for v in value)):
            if key not in used:
                continue
            raise SourceError(f"{source}: model_index.json entry {key} must be a [library, class] pair, not "
                              f"{str(value)[:60]}", source=source, hint="Regenerate it with diffusers' save_pretrained.")
        if value[0] is not None:
            present.append(key)
    if not present:
        raise SourceError(f"{source}: model_index.json lists no components", source=source,
                          hint="Regenerate it with diffusers' save_pretrained.")
    return tuple(present)


def card_license_of(readme: Path) -> str | None:
    """The license a local source's card names (front matter parsed without YAML aliases, size-bounded)."""
    if not readme.is_file():
        return None
    return card_license(readme.read_text(errors="replace"))


def component_weights(component: str, folder: str, files: list[str], source: str
                       ) -> tuple[tuple[str, ...], str | None, list[str]]:
    """The weight files of one component in ``folder`` (repo-relative; "" for the root), their diffusers
    variant and which of them are pickle: plain safetensors, else the fp16 variant, else pickle files."""
    in_folder = [f for f in files if PurePosixPath(f).parent.as_posix() == (folder or ".")]
    safetensors = sorted(f for f in in_folder if f.endswith(".safetensors"))
    plain = [f for f in safetensors if not _VARIANT_FILE.match(PurePosixPath(f).name) or "-of-" in f]
    if plain:
        return tuple(plain) + tuple(f for f in in_folder if f.endswith(".safetensors.index.json")), None, []
    fp16 = [f for f in safetensors if PurePosixPath(f).name.split(".")[-2] == "fp16"]
    if fp16:
        return tuple(fp16), "fp16", []
    found = sorted(f for f in in_folder if f.endswith(PICKLE_SUFFIXES))
    if not found:
        raise SourceError(f"{source}: no weights found for {component}", source=source,
                          hint=f"Add {folder + '/' if folder else ''}*.safetensors to the source.")
    return tuple(found), None, found


def check_pipeline(index: dict, files: list[str], *, source: str, allow_pickle: bool,
           need_safety_checker: bool, sizes: dict[str, int] | None = None,
           max_bytes: int = DEFAULT_MAX_BYTES) -> dict:
    cls = index["_class_name"]
    if cls not in SUPPORTED_PIPELINES:
        what = KNOWN_UNSUPPORTED.get(cls)
        label = f"{cls} ({what})" if what else cls
        raise UnsupportedModelError(
            f"{source}: {label} is not supported yet; supported: "
            + ", ".join(sorted(SUPPORTED_PIPELINES)), source=source,
            hint="Pick a Stable Diffusion 1.x/2.x or SDXL diffusers repo.")
    present = _components(index, source)
    xl = cls in XL_PIPELINES
    required = XL_REQUIRED_COMPONENTS + (("text_encoder", "tokenizer") if "text_encoder" in present else ()) \
        if xl else REQUIRED_COMPONENTS
    missing = [c for c in required if c not in present]
    if missing:
        raise SourceError(f"{source}: model_index.json lacks {', '.join(missing)}", source=source,
                          hint=f"A{'n SDXL' if xl else ' Stable Diffusion'} pipeline needs {', '.join(required)}.")
    for tokenizer in (t for t in ("tokenizer", "tokenizer_2") if t in required):
        if not any(f.startswith(f"{tokenizer}/") for f in files):
            raise SourceError(f"{source}: model_index.json lists a {tokenizer}, but there is no {tokenizer} folder",
                              source=source,
                              hint=f"Add the CLIP tokenizer's files (vocab.json, merges.txt) to {tokenizer}/.")
        if not any(all(f"{tokenizer}/{f}" in files for f in names) for names in TOKENIZER_FILES):
            raise SourceError(f"{source}: the {tokenizer} folder lacks vocab.json and merges.txt (or tokenizer.json)",
                              source=source, hint=f"Add the CLIP tokenizer's files to {tokenizer}/ in the source.")
    wanted = [c for c in WEIGHT_COMPONENTS if c in present
              and (c != "safety_checker" or need_safety_checker)]
    weight_files: dict[str, tuple[str, ...]] = {}
    weight_variant: dict[str, str | None] = {}
    pickles: list[str] = []
    for component in wanted:
        weight_files[component], weight_variant[component], pickled = component_weights(
            component, component, files, source)
        pickles.extend(pickled)
    total = sum((sizes or {}).get(f, 0) for names in weight_files.values() for f in names)
    if total > max_bytes:
        raise SourceError(f"{source} is too large: {total / 1e9:.1f} GB of weights to convert, the limit is "
                          f"{max_bytes / 1e9:.1f} GB", source=source,
                          hint="Stable Diffusion pipelines (SDXL: 14 GB) are smaller; raise the limit only if "
                               "this source is what you expect (COREML_PUBLISH_MAX_SOURCE_GB).")
    if pickles and not allow_pickle:
        raise UnsafeWeightsError(
            f"{source} has only pickle weights for some components ({', '.join(pickles)}); "
            "loading pickle runs arbitrary code", source=source, files=pickles)
    return {
        "pipeline_class": cls,
        "model_index": index,
        "components": tuple(wanted) + tuple(t for t in ("tokenizer", "tokenizer_2") if t in required),
        "weight_files": weight_files,
        "weight_variant": weight_variant,
        "use_safetensors": not pickles,
    }
