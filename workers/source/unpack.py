"""Unpack step: a fetched single-file checkpoint made into a diffusers pipeline folder, in memory, by diffusers' own
single-file loader (``from_single_file``) with the configs :mod:`workers.source.checkpoint` chose.

The pipeline is saved as safetensors (in the checkpoint's own precision: float16 stays float16, bit for bit) in
a fresh temporary folder, checked like any local diffusers source, and from there on everything is as for one:
every component, layout, precision and check.  :func:`workers.source.fetch.release` removes the folder.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from workers.errors import SourceError
from workers.source.checkpoint import ARCHITECTURES, CONFIGS
from workers.source.source import Source

UNPACKED = "coreml-publish-unpacked-"  # the prefix of the folders unpack makes (and release removes)


def shipped_configs(name: str, into: Path) -> Path:
    """The shipped configs ``name`` as a diffusers config folder at ``into`` (JSON files copied, CLIP's
    tokenizer files linked into each tokenizer folder)."""
    shutil.copytree(CONFIGS / name, into)
    for tokenizer in ("tokenizer", "tokenizer_2"):
        if (into / tokenizer).is_dir():
            for file in ("vocab.json", "merges.txt"):
                (into / tokenizer / file).symlink_to(CONFIGS / "clip" / file)
    return into


def recorded_tokenizers(record: dict, into: Path) -> Path:
    """Where the tokenizer folders of the single-file source a report records (its provenance) are: its
    ``--config``'s folder as the conversion read it, else the shipped configs' (assembled at ``into``)."""
    config = record.get("config") or {}
    if config.get("path") and Path(config["path"]).is_dir():
        return Path(config["path"])
    if not (into / "model_index.json").is_file():
        shutil.rmtree(into, ignore_errors=True)
        shipped_configs(ARCHITECTURES[record["checkpoint"]["architecture"]].configs, into)
    return into


def unpack(source: Source) -> Source:
    """The fetched checkpoint source as a checked diffusers folder source (``origin``: where the file is).

    Raises SourceError when diffusers cannot read the checkpoint with those configs."""
    import torch
    import diffusers

    from workers.source.resolve import resolve_local

    assert source.path is not None and source.checkpoint is not None and source.architecture is not None
    architecture = ARCHITECTURES[source.architecture]
    folder = Path(tempfile.mkdtemp(prefix=f"{UNPACKED}{source.name}-"))
    try:
        config = dict(source.extras).get("config")
        if config is not None:
            assert config.path is not None
            config_dir = config.path
        else:
            config_dir = shipped_configs(source.configs or architecture.configs, folder / "_configs")
        file = source.path / source.checkpoint
        half = _is_half(file)
        pipeline_class = getattr(diffusers, architecture.pipeline_class)
        try:
            pipeline = pipeline_class.from_single_file(
                str(file), config=str(config_dir), local_files_only=True, safety_checker=None, feature_extractor=None,
                requires_safety_checker=False, torch_dtype=torch.float16 if half else torch.float32)
        except (ValueError, KeyError, RuntimeError, OSError) as e:
            raise SourceError(f"{source.id}: {source.checkpoint} cannot be read as an {architecture.title} "
                              f"checkpoint with {config.id if config else architecture.canonical}'s configs "
                              f"({str(e).splitlines()[0][:160] if str(e) else type(e).__name__})", source=source.id,
                              hint="Pass --config with the diffusers pipeline this checkpoint was fine-tuned "
                                   "from.") from e
        out = folder / "pipeline"
        pipeline.save_pretrained(out, safe_serialization=True)
        del pipeline
        shutil.rmtree(folder / "_configs", ignore_errors=True)
        readme = source.path / "README.md"
        if readme.is_file():  # the card's license and text, as for any source
            shutil.copyfile(readme, out / "README.md")
        checked = resolve_local(out, source_id=source.id, need_safety_checker=False)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return replace(source, path=out, origin=source.origin or source.path, components=checked.components,
                   model_index=checked.model_index, weight_files=checked.weight_files,
                   weight_variant=checked.weight_variant, use_safetensors=True, unpacked=folder)


def _is_half(file: Path) -> bool:
    """Whether every float tensor of a checkpoint is float16 (then it is unpacked in float16, bit for bit; any
    other mix is unpacked in float32, which holds float16 and bfloat16 values exactly)."""
    if not file.name.endswith(".safetensors"):
        return False
    from workers.source.weights import read_header

    dtypes = {e["dtype"] for e in read_header(file, source=str(file)).values() if e["dtype"].startswith(("F", "BF"))}
    return dtypes == {"F16"}
