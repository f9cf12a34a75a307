"""Names and paths of the output tree: the file and folder names apps and downloads rely on.

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


DEFAULT_ATTENTIONS: tuple[Attention, ...] = (Attention.ORIGINAL, Attention.SPLIT_EINSUM_V2)

# components converted once per attention layout; every other component is shared by all layouts
PER_LAYOUT_COMPONENTS = frozenset({"unet", "refiner"})


def depends_on_attention(component: str) -> bool:
    """Whether a component's program differs between attention layouts (converted once per layout)."""
    return component in PER_LAYOUT_COMPONENTS


def sort_attentions(values) -> tuple[str, ...]:
    """Layout names without repeats, in the order layouts are declared (the canonical order everywhere)."""
    order = [a.value for a in Attention]
    return tuple(sorted(set(values), key=order.index))

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
    "vae_decoder": "VAEDecoder",
    "vae_encoder": "VAEEncoder",
    "safety_checker": "SafetyChecker",
}

REPORT_FILE = "report.json"
CHECK_DATA_DIR = "_validation"  # per component: the check inputs and float32 reference outputs (not published)
_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def model_version(source_id: str) -> str:
    """The ``{model_version}`` part of package file names: the source id with ``/`` replaced by ``_``."""
    return source_id.replace("/", "_")


def package_file_name(source_id: str, component: str) -> str:
    """``Stable_Diffusion_version_{model_version}_{component}.mlpackage``."""
    return f"Stable_Diffusion_version_{model_version(source_id)}_{component}.mlpackage"


def compiled_file_name(component: str) -> str:
    """The ``.mlmodelc`` folder name the Swift pipeline expects for a package component."""
    return f"{COMPILED_NAMES[component]}.mlmodelc"


def repo_names(source_name: str) -> tuple[str, str]:
    """The float16 and palettized repo names for a source: ``coreml-<name>``, ``coreml-<name>-palettized``."""
    if not _NAME_OK.match(source_name):
        raise ValueError(f"{source_name!r} cannot be used in a repo name")
    base = f"coreml-{source_name}"
    return base, f"{base}-palettized"


def packages_dir(out: Path, repo_name: str, attention: Attention) -> Path:
    """``OUT/<repo-name>/<variant>/packages``."""
    return out / repo_name / attention.value / "packages"
