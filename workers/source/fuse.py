"""Fuse step: a fetched source's LoRAs (``--lora``) fused into its weights, with diffusers' LoRA loading and fusing
(PEFT underneath), before anything is converted: Core ML cannot apply a LoRA at run time.

The pipeline is loaded in float32, each LoRA loaded as an adapter of its own (the kohya / A1111 and the diffusers
/ PEFT formats: diffusers reads both) and fused at its scale, the adapters unloaded, and the fused pipeline saved
as safetensors in a fresh temporary folder (the components no LoRA touched as hard links to the source's files);
from there on it is a diffusers source like any other, so the
validation reference is the pipeline with the same LoRAs fused by diffusers.  A LoRA that fits no layer of the
model is refused naming it.  :func:`workers.source.fetch.release` removes the folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from workers.errors import UnsupportedModelError
from workers.source.source import Source

FUSED = "coreml-publish-fused-"
ENCODERS = ("text_encoder", "text_encoder_2")


def loras_of(source: Source) -> list[Source]:
    """The ``--lora`` sources of ``source``, in the order they were given."""
    return [extra for kind, extra in source.extras if kind.startswith("lora")]


def fuse(source: Source) -> Source:
    """``source`` (fetched: a diffusers folder) with its LoRAs fused; the folder it was unpacked in, if any, goes."""
    import torch
    from diffusers import DiffusionPipeline

    from workers.source.resolve import resolve_local

    assert source.path is not None
    variants = {v for c, v in source.weight_variant.items() if c in ("unet", *ENCODERS)}
    folder = Path(tempfile.mkdtemp(prefix=f"{FUSED}{source.name}-"))
    try:
        pipeline = DiffusionPipeline.from_pretrained(
            source.path, dtype=torch.float32, variant=next(iter(variants)) if len(variants) == 1 else None,
            use_safetensors=source.use_safetensors, local_files_only=True)
        changed: set[str] = set()
        for i, lora in enumerate(loras_of(source)):  # each fused and its adapter unloaded before the next
            changed |= _fuse_one(pipeline, lora, f"lora{i}", source=source.id)
            pipeline.unload_lora_weights()
        out = folder / "pipeline"
        _link_tree(source.path, out, skip=changed)  # what no LoRA touched: the same files, not written again
        for component in sorted(changed):
            getattr(pipeline, component).save_pretrained(out / component, safe_serialization=True)
        del pipeline
        checked = resolve_local(out, source_id=source.id, need_safety_checker="safety_checker" in source.components)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if source.unpacked is not None:  # the unpacked checkpoint: its fused copy replaces it
        shutil.rmtree(source.unpacked, ignore_errors=True)
    return replace(source, path=out, origin=source.origin or source.path, components=checked.components,
                   model_index=checked.model_index, weight_files=checked.weight_files,
                   weight_variant=checked.weight_variant, use_safetensors=True, unpacked=folder)


def _link_tree(source: Path, out: Path, *, skip: set[str]) -> None:
    """``source``'s files (links followed) hard-linked into ``out`` (copied across file systems), but for the
    top-level folders in ``skip``."""
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if relative.parts[0] in skip or not path.is_file():
            continue
        target = out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path.resolve(), target)
        except OSError:
            shutil.copyfile(path, target)


def _fuse_one(pipeline, lora: Source, name: str, *, source: str) -> set[str]:
    assert lora.path is not None and lora.lora_scale is not None
    file = lora.path / lora.weight_files["lora"][0]
    try:
        pipeline.load_lora_weights(str(file), adapter_name=name)
    except (ValueError, KeyError, RuntimeError, IndexError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip() and not line.strip().endswith(":")]
        first = lines[0][:200] if lines else type(e).__name__
        raise UnsupportedModelError(f"--lora {lora.id} does not fit {source} ({first})", source=lora.id,
                                    hint="Pass a LoRA trained for this model's architecture.") from e
    fused = [c for c in ("unet", *ENCODERS) if _adapted(getattr(pipeline, c, None), name)]
    if not fused:
        raise UnsupportedModelError(f"--lora {lora.id} matches no layer of {source}'s UNet or text encoders",
                                    source=lora.id, hint="Pass a LoRA trained for this model's architecture.")
    pipeline.fuse_lora(components=fused, lora_scale=lora.lora_scale, adapter_names=[name])
    return set(fused)


def _adapted(model, name: str) -> bool:
    """Whether any layer of ``model`` took the adapter ``name``."""
    if model is None:
        return False
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) and name in getattr(m, "lora_A", {}) for m in model.modules())

