"""Names: the file and folder names of the output tree that apps and downloads rely on, and the Hub's rules
for repo ids and namespaces.

These names are an API (see the Core ML interface and Hub repo layout contracts): the Swift pipeline finds
models by compiled name, downloads select variants by folder name.  Keep every name here.
"""

from __future__ import annotations

import enum
import re
from pathlib import Path


class Attention(str, enum.Enum):
    """UNet attention layouts; the value is the variant folder name in published repos."""

    ORIGINAL = "original"
    SPLIT_EINSUM = "split_einsum"
    SPLIT_EINSUM_V2 = "split_einsum_v2"


def sort_attentions(values) -> tuple[str, ...]:
    """Layout names without repeats, in the order layouts are declared (the canonical order everywhere)."""
    order = [a.value for a in Attention]
    return tuple(sorted(set(values), key=order.index))


# the Hub's limits: 96 characters a namespace or name, so a repo id is at most 96 + 1 + 96; git refs 255
MAX_NAMESPACE = 96
MAX_REPO_ID = 2 * MAX_NAMESPACE + 1
MAX_REVISION = 255
# one part of a repo id, as the Hub allows it: ASCII letters, digits, "-", "_", "."; 1-96 characters, not
# starting or ending with "-" or "." (and, checked below, no "--" or "..", not ending with ".git")
_REPO_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_REPO_ID = re.compile(rf"(?:{_REPO_PART}/)?{_REPO_PART}", re.ASCII)


def looks_like_repo_id(text: str) -> bool:
    """True for ``name`` or ``namespace/name`` following the Hub's rules (ASCII only)."""
    return (isinstance(text, str) and _REPO_ID.fullmatch(text) is not None and ".." not in text
            and "--" not in text and not text.endswith(".git"))


def valid_namespace(name: str) -> bool:
    """Whether ``name`` is a namespace the Hub allows (a user or organisation name: one part of a repo id)."""
    return isinstance(name, str) and "/" not in name and looks_like_repo_id(name)

# package component -> compiled resource name the Swift StableDiffusion package loads
COMPILED_NAMES: dict[str, str] = {
    "text_encoder": "TextEncoder",
    "text_encoder_2": "TextEncoder2",
    "unet": "Unet",
    "unet_chunk1": "UnetChunk1",
    "unet_chunk2": "UnetChunk2",
    "refiner": "UnetRefiner",
    "refiner_chunk1": "UnetRefinerChunk1",
    "refiner_chunk2": "UnetRefinerChunk2",
    "controlled_unet": "ControlledUnet",  # Swift's spelling: ControlledUnet, never ControlledUNet
    "controlled_unet_chunk1": "ControlledUnetChunk1",
    "controlled_unet_chunk2": "ControlledUnetChunk2",
    "vae_decoder": "VAEDecoder",
    "vae_encoder": "VAEEncoder",
    "safety_checker": "SafetyChecker",
    "controlnet": "controlnet/",  # + the ControlNet's own name (:func:`controlnet_name`)
}
# the component part of a package file name where it differs from the component (Apple's converter's names)
PACKAGE_SUFFIXES: dict[str, str] = {"controlled_unet": "control-unet",
                                    "controlled_unet_chunk1": "control-unet_chunk1",
                                    "controlled_unet_chunk2": "control-unet_chunk2"}
CONTROLNET_FOLDER = "controlnet"  # where compiled ControlNets go, in a variant's compiled folder and its zip

REPORT_FILE = "report.json"
CHECK_DATA_DIR = "_validation"  # per component: the check inputs and float32 reference outputs (not published)
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def model_version(source_id: str) -> str:
    """The ``{model_version}`` part of package file names: the source id with ``/`` replaced by ``_``."""
    return source_id.replace("/", "_")


def package_file_name(source_id: str, component: str) -> str:
    """``Stable_Diffusion_version_{model_version}_{component}.mlpackage`` (a ControlledUnet's component part is
    ``control-unet``); a ControlNet's: ``ControlNet_{model_version}.mlpackage``."""
    if component == "controlnet":
        return f"ControlNet_{model_version(source_id)}.mlpackage"
    return f"Stable_Diffusion_version_{model_version(source_id)}_{PACKAGE_SUFFIXES.get(component, component)}.mlpackage"


def package_component(file_name: str) -> str | None:
    """The component a package file name (:func:`package_file_name`) is of, or None."""
    stem = file_name.removesuffix(".mlpackage")
    if stem.startswith("ControlNet_") and file_name.endswith(".mlpackage"):
        return "controlnet"
    suffixes = {PACKAGE_SUFFIXES.get(c, c): c for c in COMPILED_NAMES if c != "controlnet"}
    return next((suffixes[s] for s in sorted(suffixes, key=len, reverse=True) if stem.endswith(f"_{s}")), None)


def controlnet_name(source_id: str) -> str:
    """A ControlNet's compiled name, as Apple's bundler makes it: the model version split on ``_`` and ``-``,
    each word title-cased (``org/sd-controlnet-canny`` → ``OrgSdControlnetCanny``)."""
    return "".join(word.title() for word in re.split("_|-", model_version(source_id)))


def compiled_file_name(component: str, source_id: str | None = None) -> str:
    """The ``.mlmodelc`` name the Swift pipeline expects for a package component, relative to a variant's compiled
    folder (a ControlNet's, ``controlnet/<Name>.mlmodelc``, needs its ``source_id``)."""
    if component == "controlnet":
        if source_id is None:
            raise ValueError("a ControlNet's compiled name needs its source id")
        return f"{CONTROLNET_FOLDER}/{controlnet_name(source_id)}.mlmodelc"
    return f"{COMPILED_NAMES[component]}.mlmodelc"


def repo_names(source_name: str) -> tuple[str, str]:
    """The float16 and palettized repo names for a source: ``coreml-<name>``, ``coreml-<name>-palettized``."""
    if not _NAME_OK.match(source_name):
        raise ValueError(f"{source_name!r} cannot be used in a repo name")
    base = f"coreml-{source_name}"
    return base, f"{base}-palettized"


def mixed_repo_name(source_name: str) -> str:
    """The mixed-bit repo's name for a source: ``coreml-<name>-mixed-bit``."""
    return f"{repo_names(source_name)[0]}-mixed-bit"


def packages_dir(out: Path, repo_name: str, variant: Attention | str) -> Path:
    """``OUT/<repo-name>/<variant>/packages`` (a variant: a layout, or ``<layout>/<W>x<H>``, :func:`variant_name`)."""
    return out / repo_name / (variant.value if isinstance(variant, Attention) else variant) / "packages"


# Image sizes: ``<W>x<H>`` in pixels (width first, as people say them), the folder name of a size's variants
_SIZE = re.compile(r"^([1-9][0-9]{0,5})x([1-9][0-9]{0,5})$")


def parse_size(text: str) -> tuple[int, int] | None:
    """``(width, height)`` of a ``<W>x<H>`` text (``512x768``; ``X`` and spaces around it allowed), or None."""
    found = _SIZE.match(text.strip().lower().replace(" ", "")) if isinstance(text, str) else None
    return (int(found.group(1)), int(found.group(2))) if found else None


def size_name(size: tuple[int, int]) -> str:
    """The folder name of an image size: ``<W>x<H>``."""
    return f"{size[0]}x{size[1]}"


def variant_name(attention: Attention | str, size: tuple[int, int] | None = None) -> str:
    """A variant's folder, relative to its repo: the layout (``original``) at the model's native size, else
    ``<layout>/<W>x<H>`` (``original/512x768``)."""
    layout = attention.value if isinstance(attention, Attention) else attention
    return layout if size is None else f"{layout}/{size_name(size)}"


def variant_layout(variant: str) -> Attention:
    """The attention layout of a variant (:func:`variant_name`)."""
    return Attention(variant.split("/", 1)[0])


def variant_size(variant: str) -> tuple[int, int] | None:
    """The image size of a variant at an extra size, or None (the native size: Apple's paths)."""
    _, _, size = variant.partition("/")
    return parse_size(size) if size else None


def check_data_name(component: str, variant: str | None = None) -> str:
    """The file a component's check data is kept in under ``_validation/`` (per size: their inputs differ)."""
    size = variant_size(variant) if variant else None
    return f"{component}@{size_name(size)}" if size else component
