"""Which components of a run convert memory-lean (``workers.convert.run.converts_lean``)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from workers.convert.geometry import read_geometry
from workers.convert.run import converts_lean
from workers.convert.specs import spec_for
from workers.options import ConvertOptions
from workers.source.resolve import resolve_source


def test_every_unet_with_safetensors_weights_converts_lean_unless_told_not_to(sd1_pipeline: Path,
                                                                             tmp_path: Path) -> None:
    source = resolve_source(str(sd1_pipeline))
    g = read_geometry(sd1_pipeline)
    unet, vae = spec_for("unet", g), spec_for("vae_decoder", g)
    assert converts_lean(unet, source, ConvertOptions())  # a tiny UNet too: the default is not a size
    assert not converts_lean(unet, source, ConvertOptions(lean=False))
    assert not converts_lean(vae, source, ConvertOptions(lean=True))  # only UNets have the lean path

    pickled = tmp_path / "pickled"
    shutil.copytree(sd1_pipeline, pickled)
    for file in (pickled / "unet").glob("*.safetensors"):
        file.unlink()  # the lean loader reads safetensors only: such weights take the float32 path
    assert not converts_lean(unet, dataclasses.replace(source, path=pickled), ConvertOptions())
