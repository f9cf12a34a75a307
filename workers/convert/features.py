"""A package's input and output features: name, shape, type and description, as the Swift pipeline reads them
(:mod:`workers.convert.specs` declares each component's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TensorSpec:
    """One input or output feature of a package."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float16" or "float32"
    description: str
