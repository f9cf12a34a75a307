"""Versions of the converter and its toolchain: provenance for packages, reports and model cards."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

CONVERTER_NAME = "coreml-publisher"
TOOLCHAIN_PACKAGES = ("coremltools", "torch", "diffusers", "transformers", "numpy", "huggingface_hub")


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def converter_id() -> str:
    """``coreml-publisher <version>``."""
    return f"{CONVERTER_NAME} {_version(CONVERTER_NAME)}"


def toolchain() -> dict[str, str]:
    """The converter and every library whose version changes the output."""
    return {"converter": converter_id(), **{p: _version(p) for p in TOOLCHAIN_PACKAGES}}
