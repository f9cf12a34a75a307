"""The tiny SD1 UNet's mixed-bit analysis, shared by the sensitivity and recipe tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def unet_analysis(sd1_pipeline: Path):
    """(sensitivity, candidate layers, run, reference output) of the tiny SD1 UNet, layers above 2,048 weights."""
    import torch

    from workers.compress.sensitivity import analyse, candidates
    from workers.convert.geometry import read_geometry
    from workers.convert.specs import spec_for

    g = read_geometry(sd1_pipeline)
    spec = spec_for("unet", g)
    modules = spec.load(sd1_pipeline, {}, True)
    reference = spec.reference(modules)
    inputs = spec.sample_inputs(g, 1)

    def run() -> torch.Tensor:
        return reference(*inputs.values())[0]

    sensitivity = analyse(modules["unet"], run, min_weights=2048)
    layers, _ = candidates(modules["unet"], 2048)
    return sensitivity, layers, run, sensitivity.reference
