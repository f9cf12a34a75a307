"""LoRAs (``--lora REF[:SCALE]``): which file, resolved and pinned like ``--vae`` (resolve side).

A reference is a Hub repo (``org/name``, or ``org/name/path/file.safetensors`` for one file of it), a local
folder or a ``.safetensors`` file; the scale (default 1) multiplies the LoRA's update when it is fused.  The file's
header says whether it is a LoRA at all (every tensor a LoRA layer's: the kohya / A1111 names ``lora_unet_…``,
``lora_te…`` or the diffusers / PEFT ones ``….lora_A.weight``, ``….lora.down.weight``), read locally or by a
range request, so nothing is downloaded to refuse it.  Fusing is :mod:`workers.source.fuse`'s, after the fetch.
"""

from __future__ import annotations

import math
from pathlib import Path, PurePosixPath

from workers.errors import OptionsError, SourceError, UnsupportedModelError
from workers.names import looks_like_repo_id
from workers.source.source import Source
from workers.source.weights import read_header

MAX_LORAS = 8
MAX_SCALE = 10.0
DIFFUSERS_NAME = "pytorch_lora_weights.safetensors"  # what diffusers' save_lora_weights writes


def parse_lora(value: str) -> tuple[str, float]:
    """``REF[:SCALE]`` → (REF, SCALE); refuses a scale that is not a finite number within ±10."""
    if not isinstance(value, str) or not value.strip():
        raise OptionsError("--lora needs a Hub repo, folder or file", hint="Pass --lora org/name[:SCALE].")
    ref, scale = value.strip(), 1.0
    head, sep, tail = ref.rpartition(":")
    if sep and head and "/" not in tail:
        try:
            scale = float(tail)
        except ValueError:
            raise OptionsError(f"--lora {value[:100]!r}: the scale {tail[:20]!r} is not a number",
                               hint="Write it as REF:SCALE, e.g. org/style-lora:0.8.") from None
        ref = head
    if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
        raise OptionsError(f"--lora {value[:100]!r}: the scale must be a number between -{MAX_SCALE:g} and "
                           f"{MAX_SCALE:g}", hint="LoRA scales are usually between 0 and 1.")
    return ref, scale


def hub_parts(ref: str) -> tuple[str, str | None] | None:
    """A Hub reference's repo id and the file in it (None: the repo's only LoRA), or None if it is not one."""
    parts = ref.split("/")
    if len(parts) < 2 or not looks_like_repo_id("/".join(parts[:2])):
        return None
    return "/".join(parts[:2]), ("/".join(parts[2:]) or None)


def lora_repo(lora: str) -> str:
    """The Hub repo of a job's normalised ``--lora`` (``org/name[/FILE]:SCALE``)."""
    parts = hub_parts(lora.rpartition(":")[0])
    if parts is None:
        raise OptionsError(f"--lora {lora[:100]!r} is not a Hub repo", hint="Pass --lora org/name[:SCALE].")
    return parts[0]


def check_lora_tensors(names: list[str], *, label: str, source: str) -> str:
    """The LoRA format of a file's tensor names (``kohya`` or ``diffusers``); refuses what is not a LoRA, naming
    what it is where that is known."""
    if any(n.startswith("model.diffusion_model.") for n in names):
        raise UnsupportedModelError(f"--lora {label} is a whole checkpoint, not a LoRA", source=source,
                                    hint="Convert it as the source instead, or pass a LoRA file.")
    if names and all(n.startswith(("lora_unet_", "lora_te")) for n in names):
        return "kohya"
    if names and all("lora" in n for n in names):
        return "diffusers"
    odd = next((n for n in names if "lora" not in n), "no tensors")
    raise UnsupportedModelError(f"--lora {label} is not a LoRA: its tensor {odd[:80]!r} is no LoRA layer's",
                                source=source, hint="Pass a LoRA in the kohya / A1111 or diffusers / PEFT format.")


def choose_file(files: list[str], wanted: str | None, *, label: str, source: str) -> str:
    """The LoRA file of a repo or folder: ``wanted``, else its only ``.safetensors`` (diffusers' name preferred)."""
    if wanted is not None:
        if wanted not in files:
            raise SourceError(f"--lora {label}: there is no file {wanted}", source=source,
                              hint="Check the file's path inside the repo.")
        chosen = wanted
    else:
        found = sorted(f for f in files if f.endswith(".safetensors"))
        if DIFFUSERS_NAME in found:
            found = [DIFFUSERS_NAME]
        if len(found) != 1:
            shown = ", ".join(found[:6]) or "none"
            raise OptionsError(f"--lora {label} holds {len(found)} .safetensors files ({shown}): which one is "
                               "unclear" if found else f"--lora {label} holds no .safetensors LoRA file",
                               hint="Pass --lora org/name/FILE.safetensors[:SCALE] naming the file.")
        chosen = found[0]
    if not chosen.endswith(".safetensors"):
        raise SourceError(f"--lora {label}: {chosen} is not a .safetensors file", source=source,
                          hint="LoRAs are read from safetensors files only.")
    return chosen


def resolve_lora(value: str, *, revision: str | None = None, token: str | None = None,
                 endpoint: str | None = None) -> Source:
    """One ``--lora``: a local file or folder, or a Hub repo (at ``revision``, else its main branch, pinned to a
    sha), with its file checked to be a LoRA.  Raises SourceError (and subclasses), OptionsError."""
    from huggingface_hub import HfApi

    from workers.hub.client import hub_errors
    from workers.package.card import license_id
    from workers.source.checkpoint import hub_shapes
    from workers.source.source import source_files

    ref, scale = parse_lora(value)
    path = Path(ref).expanduser()
    if path.exists():
        if revision:
            raise SourceError(f"a revision applies to Hub repos, but --lora {ref} is local", source=ref,
                              hint="Pass the LoRA's Hub repo id.")
        folder, files = (path.parent, [path.name]) if path.is_file() else (path, list(source_files(path, source=ref)))
        file = choose_file(files, path.name if path.is_file() else None, label=ref, source=ref)
        check_lora_tensors(list(read_header(folder / file, source=ref, label=file)), label=ref, source=ref)
        return _lora_source(ref, file, scale, path=folder.resolve())
    parts = hub_parts(ref)
    if ref.startswith((".", "/", "~")) or parts is None:
        raise SourceError(f"--lora {ref!r} is neither a local file or folder nor a Hub repo", source=ref,
                          hint="Pass org/name[/FILE.safetensors][:SCALE], or a path.")
    repo_id, wanted = parts
    with hub_errors(repo_id, revision):
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision, files_metadata=True)
    files = [s.rfilename for s in info.siblings or []]
    file = choose_file(files, wanted, label=ref, source=repo_id)
    check_lora_tensors(list(hub_shapes(repo_id, file, sha=info.sha, token=token, endpoint=endpoint)), label=ref,
                       source=repo_id)
    card = info.card_data
    sizes = {s.rfilename: s.size for s in info.siblings or [] if s.size is not None}
    return _lora_source(repo_id, file, scale, repo_id=repo_id, revision=revision or "main", sha=info.sha,
                        private=bool(info.private),
                        license=license_id(card.get("license")) if card is not None else None).pinned(sizes)


def _lora_source(name: str, file: str, scale: float, **fields) -> Source:
    folder = str(PurePosixPath(file).parent)
    return Source(id=name, pipeline_class="LoRA", model_index={}, components=("lora",),
                  weight_files={"lora": (file,)}, weight_variant={"lora": None},
                  subfolder="" if folder == "." else folder, lora_scale=scale, **fields)
