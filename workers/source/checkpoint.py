"""Single-file checkpoints as sources: which file, which architecture, which configs (resolve side).

A repo or folder without ``model_index.json`` whose weights are one ``.safetensors`` file in the original
(CompVis / Stability, A1111) layout is a single-file source.  Its architecture (SD 1.x, SD 2.x, SDXL base or
refiner) is recognised here from the tensor names and shapes alone: the file's header, read locally or, for a
Hub repo, by a range request, so nothing is downloaded to refuse it.  The diffusers configs it is unpacked with
are the canonical model's, shipped in :mod:`workers.source.checkpoint_configs` (the CLIP tokenizer's files
once, for every model), or those of ``--config`` (a diffusers pipeline).  The unpacking itself
(:mod:`workers.source.unpack`) is diffusers' own single-file loader, after the fetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from workers.errors import OptionsError, SourceError, UnsafeWeightsError, UnsupportedModelError
from workers.source.pipelines import PICKLE_SUFFIXES
from workers.source.weights import read_header

CONFIGS = Path(__file__).with_name("checkpoint_configs")
UNET, VAE = "model.diffusion_model.", "first_stage_model."


@dataclass(frozen=True)
class Architecture:
    """What a checkpoint's tensors say it is, and the configs of the canonical model of that architecture."""

    key: str
    title: str
    pipeline_class: str
    configs: str  # the shipped config folder under checkpoint_configs/
    canonical: str  # the Hub repo those configs are the diffusers configs of
    components: tuple[str, ...]


ARCHITECTURES = {a.key: a for a in (
    Architecture("sd1", "SD 1.x", "StableDiffusionPipeline", "sd15", "stable-diffusion-v1-5/stable-diffusion-v1-5",
                 ("text_encoder", "unet", "vae", "tokenizer")),
    Architecture("sd2", "SD 2.x", "StableDiffusionPipeline", "sd21", "stabilityai/stable-diffusion-2-1",
                 ("text_encoder", "unet", "vae", "tokenizer")),
    Architecture("sdxl", "SDXL base", "StableDiffusionXLPipeline", "sdxl-base",
                 "stabilityai/stable-diffusion-xl-base-1.0",
                 ("text_encoder", "text_encoder_2", "unet", "vae", "tokenizer", "tokenizer_2")),
    Architecture("sdxl-refiner", "SDXL refiner", "StableDiffusionXLImg2ImgPipeline", "sdxl-refiner",
                 "stabilityai/stable-diffusion-xl-refiner-1.0", ("text_encoder_2", "unet", "vae", "tokenizer_2")),
)}
# the text encoders' prefixes, which tell the architectures apart
_ENCODERS = (("conditioner.embedders.1.model.", "sdxl"), ("conditioner.embedders.0.model.", "sdxl-refiner"),
             ("cond_stage_model.model.", "sd2"), ("cond_stage_model.transformer.", "sd1"))
CHECKPOINT_SUFFIXES = (".safetensors", *PICKLE_SUFFIXES)


def candidates(files: list[str]) -> list[str]:
    """The top-level files of a repo or folder that may be single-file checkpoints."""
    return sorted(f for f in files if "/" not in f and f.endswith(CHECKPOINT_SUFFIXES))


def choose(files: list[str], wanted: str | None, *, source: str, allow_pickle: bool) -> str:
    """The checkpoint to convert: ``wanted`` (``--checkpoint``), else the only candidate; refused, listing them, when
    there are several, and without ``allow_pickle`` when it is a pickle file."""
    found = candidates(files)
    if wanted is not None:
        if wanted not in files:
            shown = ", ".join(found[:8]) or "none"
            raise SourceError(f"{source} has no file {wanted!r} (its checkpoints: {shown})", source=source,
                              hint="Pass --checkpoint with one of the files listed.")
        chosen = wanted
    elif not found:
        raise UnsupportedModelError(f"{source} is not a diffusers pipeline (no model_index.json) and holds no "
                                    "single-file checkpoint (.safetensors)", source=source,
                                    hint="Pick a diffusers repo or a repo with a .safetensors checkpoint.")
    else:
        safe = [f for f in found if f.endswith(".safetensors")]
        if len(safe if safe else found) > 1:
            shown = ", ".join((safe or found)[:8]) + (" …" if len(safe or found) > 8 else "")
            raise OptionsError(f"{source} holds several single-file checkpoints ({shown}): which one is unclear",
                               hint="Pass --checkpoint FILE with one of them.")
        chosen = (safe or found)[0]
    if chosen.endswith(PICKLE_SUFFIXES) and not allow_pickle:
        raise UnsafeWeightsError(f"{source}: {chosen} is a pickle checkpoint; loading pickle runs arbitrary code",
                                 source=source, files=[chosen])
    if not chosen.endswith(CHECKPOINT_SUFFIXES):
        raise SourceError(f"{source}: {chosen} is not a checkpoint (.safetensors, or .ckpt with --allow-pickle)",
                          source=source, hint="Pass --checkpoint with the model's weights file.")
    return chosen


def recognise(shapes: dict[str, list[int]], *, source: str, file: str) -> Architecture:
    """The architecture of a checkpoint from its tensor names and shapes; refuses, naming what it is where that is
    known, anything but SD 1.x, SD 2.x and SDXL base and refiner text-to-image checkpoints."""
    label = f"{source}: {file}"
    if not any(k.startswith(UNET) for k in shapes):
        if any(k.startswith("control_model.") for k in shapes):
            what, hint = "a ControlNet in the original layout", "Convert the ControlNet's diffusers folder with --base."
        elif any(k.startswith(("lora_unet_", "lora_te")) or ".lora_" in k or "lora_A" in k for k in shapes):
            what, hint = "a LoRA, not a whole model", "Convert its base model instead."
        else:
            what, hint = (f"not a Stable Diffusion checkpoint: none of its {len(shapes)} tensors is a UNet's "
                          f"({UNET}*)"), "Pick the model's full checkpoint."
        raise UnsupportedModelError(f"{label} is {what}", source=source, hint=hint)
    conv_in = shapes.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None or len(conv_in) != 4:
        raise UnsupportedModelError(f"{label} has no UNet input convolution ({UNET}input_blocks.0.0.weight)",
                                    source=source, hint="Pick an SD 1.x, SD 2.x or SDXL checkpoint.")
    if conv_in[1] != 4:
        what = "an inpainting checkpoint (9 input channels)" if conv_in[1] == 9 else \
            f"a UNet with {conv_in[1]} input channels"
        raise UnsupportedModelError(f"{label} is {what}; text-to-image checkpoints (4 channels) are converted",
                                    source=source, hint="Pick a text-to-image checkpoint.")
    if "edm_mean" in shapes:
        raise UnsupportedModelError(f"{label} is a Playground v2.5 checkpoint, which is not supported",
                                    source=source, hint="Pick an SD 1.x, SD 2.x or SDXL checkpoint.")
    if not any(k.startswith(VAE) for k in shapes):
        raise UnsupportedModelError(f"{label} holds no VAE ({VAE}*)", source=source,
                                    hint="Pick a checkpoint with its VAE baked in.")
    for prefix, key in _ENCODERS:
        if any(k.startswith(prefix) for k in shapes):
            if key == "sdxl" and not any(k.startswith("conditioner.embedders.0.transformer.") for k in shapes):
                break
            return ARCHITECTURES[key]
    raise UnsupportedModelError(f"{label} has a UNet but no text encoder of SD 1.x, SD 2.x or SDXL",
                                source=source, hint="Pick an SD 1.x, SD 2.x or SDXL checkpoint.")


def local_shapes(file: Path, *, source: str) -> dict[str, list[int]]:
    """Tensor name -> shape of a local checkpoint: the safetensors header (checked), or a pickle's tensors (only
    with ``--allow-pickle``, checked by the caller), loaded by torch's restricted unpickler."""
    if file.name.endswith(".safetensors"):
        return {name: entry["shape"] for name, entry in read_header(file, source=source).items()}
    import torch

    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # torch's unpickler raises many kinds for a damaged or hostile file
        raise SourceError(f"{source}: {file.name} cannot be read as a checkpoint ({type(e).__name__})",
                          source=source, hint="Pass a .safetensors checkpoint.") from e
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {k: list(v.shape) for k, v in state.items() if hasattr(v, "shape")}


def hub_shapes(repo_id: str, file: str, *, sha: str, token: str | None, endpoint: str | None) -> dict[str, list[int]]:
    """Tensor name -> shape of a Hub checkpoint, from its safetensors header (two range requests, no download)."""
    from huggingface_hub import HfApi

    from workers.hub.client import hub_errors

    with hub_errors(repo_id, sha):
        try:
            metadata = HfApi(endpoint=endpoint, token=token).parse_safetensors_file_metadata(repo_id, file,
                                                                                          revision=sha)
        except Exception as e:
            if type(e).__name__ != "SafetensorsParsingError":
                raise
            raise SourceError(f"{repo_id}: {file} is not a valid safetensors file ({e})", source=repo_id,
                              hint="Pick another checkpoint, or ask the repo's owner to upload it again.") from e
    return {name: list(info.shape) for name, info in metadata.tensors.items()}


def check_configs_fit(shapes: dict[str, list[int]], unet: dict, text: dict | None, *, source: str,
                      configs: str) -> None:
    """Refuse configs that do not describe the checkpoint's tensors (its UNet's first width and input channels, its
    cross-attention width, its first text encoder's width), naming the mismatch."""
    conv_in = shapes[UNET + "input_blocks.0.0.weight"]
    widths = unet.get("block_out_channels") or [320]
    cross = next((s[-1] for k, s in shapes.items() if k.startswith(UNET) and k.endswith("attn2.to_k.weight")), None)
    pairs = [("the UNet's first block width", conv_in[0], widths[0]),
             ("the UNet's cross-attention width", cross, unet.get("cross_attention_dim"))]
    if text is not None:
        token = next((s for k, s in shapes.items() if k.endswith(("token_embedding.weight",)) and
                      k.startswith(("cond_stage_model.", "conditioner.embedders.0."))), None)
        pairs.append(("the text encoder's width", token[-1] if token else None, text.get("hidden_size")))
    for what, theirs, ours in pairs:
        if theirs is not None and ours is not None and theirs != ours:
            raise UnsupportedModelError(f"{source} does not fit the configs of {configs}: "
                                        f"{what} is {theirs}, the configs say {ours}", source=source,
                                        hint="Pass --config with the diffusers pipeline this checkpoint was "
                                             "fine-tuned from.")


def configs_of(source):
    """``source`` as its configs are read before it is fetched: a single-file checkpoint with shipped configs reads
    them from the shipped folder; any other source is itself."""
    from dataclasses import replace

    if source.checkpoint is None or source.configs is None:
        return source
    return replace(source, path=CONFIGS / source.configs)


def checkpoint_fields(source: str, files: list[str], *, wanted: str | None, allow_pickle: bool, shapes_of,
                      config=None, read_config=None) -> dict:
    """The :class:`~workers.source.source.Source` fields of a single-file source: the checkpoint chosen from
    ``files``, its architecture recognised from ``shapes_of(file)`` (name -> shape), checked against the configs it
    will be unpacked with (``config``, the ``--config`` pipeline resolved, whose JSON files ``read_config(names)``
    reads; else the shipped ones of its architecture).  The caller adds the file's sha256."""
    import json

    file = choose(files, wanted, source=source, allow_pickle=allow_pickle)
    shapes = shapes_of(file)
    architecture = recognise(shapes, source=source, file=file)
    text = "text_encoder_2" if architecture.key == "sdxl-refiner" else "text_encoder"
    names = ("unet/config.json", f"{text}/config.json")
    if config is not None:
        if config.pipeline_class != architecture.pipeline_class:
            raise UnsupportedModelError(f"{source}: {file} is an {architecture.title} checkpoint, and --config "
                                        f"{config.id} is a {config.pipeline_class}", source=source,
                                        hint="Pass --config with a pipeline of the checkpoint's architecture.")
        unet, text_config = read_config(names)
        index, label, configs = config.model_index, config.id, None
    else:
        folder = CONFIGS / architecture.configs
        unet, text_config = (json.loads((folder / name).read_text()) for name in names)
        index = json.loads((folder / "model_index.json").read_text())
        label, configs = f"{architecture.canonical} (shipped)", architecture.configs
    check_configs_fit(shapes, unet, text_config if text == "text_encoder" else None, source=f"{source}: {file}",
                      configs=label)
    return dict(pipeline_class=architecture.pipeline_class, model_index=index, components=architecture.components,
                weight_files={"checkpoint": (file,)}, weight_variant={"checkpoint": None},
                use_safetensors=file.endswith(".safetensors"), checkpoint=file, architecture=architecture.key,
                configs=configs)
