"""Single-file checkpoints written from a diffusers pipeline folder, in the original (CompVis / Stability, A1111)
key layout, for tests and for trying ``convert`` on a single-file source.

The layout is the one diffusers' single-file loaders read: the UNet under ``model.diffusion_model.`` (LDM's
``input_blocks`` / ``middle_block`` / ``output_blocks``), the VAE under ``first_stage_model.``, SD 1.x's CLIP
text encoder under ``cond_stage_model.transformer.``, SD 2.x's OpenCLIP one under ``cond_stage_model.model.``
(fused ``in_proj`` attention weights), SDXL's two under ``conditioner.embedders.0.transformer.`` and
``conditioner.embedders.1.model.`` (a refiner's OpenCLIP one under ``conditioner.embedders.0.model.``).
diffusers ships only the reading direction (original → diffusers), so the writing one is here; a round trip
through diffusers' loader gives back every tensor exactly, which the tests check.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

UNET, VAE = "model.diffusion_model.", "first_stage_model."
CLIP_PREFIX = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}
OPEN_CLIP_PREFIX = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model.",
                    "sdxl-refiner": "conditioner.embedders.0.model."}
_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
           ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection"))
_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
             "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
             "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def write_checkpoint(pipeline: Path, out: Path, *, half: bool = False) -> Path:
    """Write the pipeline folder ``pipeline`` (SD 1.x, SD 2.x, SDXL base or refiner, as saved by diffusers) as one
    ``.safetensors`` file ``out`` in the original key layout; ``half`` stores it in float16."""
    import torch
    from safetensors.torch import save_file

    pipeline = Path(pipeline)
    index = json.loads((pipeline / "model_index.json").read_text())
    style = _style(pipeline, index)
    tensors: dict[str, torch.Tensor] = {}
    unet_config = json.loads((pipeline / "unet" / "config.json").read_text())
    for key, value in _state(pipeline / "unet").items():
        tensors[UNET + unet_key(key, unet_config)] = value
    blocks = len(json.loads((pipeline / "vae" / "config.json").read_text())["block_out_channels"])
    for key, value in _state(pipeline / "vae").items():
        name, value = vae_key(key, value, blocks)
        tensors[VAE + name] = value
    encoders = [("text_encoder", CLIP_PREFIX.get(style), OPEN_CLIP_PREFIX.get(style) if style == "sd2" else None),
                ("text_encoder_2", None, OPEN_CLIP_PREFIX.get(style))]
    for folder, clip, open_clip in encoders:
        if index.get(folder, [None])[0] is None:
            continue
        state = _state(pipeline / folder)
        if open_clip:
            tensors.update({open_clip + k: v for k, v in open_clip_state(state).items()})
        else:
            tensors.update({clip + k: v for k, v in clip_state(state).items()})
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    return out


def _style(pipeline: Path, index: dict) -> str:
    if index["_class_name"].startswith("StableDiffusionXL"):
        return "sdxl-refiner" if index.get("text_encoder", [None])[0] is None else "sdxl"
    text = json.loads((pipeline / "text_encoder" / "config.json").read_text())
    return "sd2" if text.get("hidden_act") == "gelu" else "sd1"


def _state(folder: Path) -> dict:
    from safetensors.torch import load_file

    state: dict = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update(load_file(str(file)))
    return state


def unet_key(key: str, config: dict) -> str:
    """A diffusers UNet parameter's name in LDM's layout."""
    per_block = config["layers_per_block"]
    per_block = per_block if isinstance(per_block, int) else per_block[0]
    step = per_block + 1
    attentions = ["CrossAttn" in kind for kind in config["up_block_types"]]
    for old, new in _UNET_TOP.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    patterns = [
        (r"down_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"input_blocks.{step * i + j + 1}.0."),
        (r"down_blocks\.(\d+)\.attentions\.(\d+)\.", lambda i, j: f"input_blocks.{step * i + j + 1}.1."),
        (r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.", lambda i: f"input_blocks.{step * (i + 1)}.0.op."),
        (r"mid_block\.resnets\.(\d+)\.", lambda k: f"middle_block.{0 if k == 0 else 2}."),
        (r"mid_block\.attentions\.0\.", lambda: "middle_block.1."),
        (r"up_blocks\.(\d+)\.resnets\.(\d+)\.", lambda i, j: f"output_blocks.{step * i + j}.0."),
        (r"up_blocks\.(\d+)\.attentions\.(\d+)\.", lambda i, j: f"output_blocks.{step * i + j}.1."),
        (r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.",
         lambda i: f"output_blocks.{step * i + per_block}.{2 if attentions[i] else 1}.conv."),
    ]
    for pattern, place in patterns:
        found = re.match(pattern, key)
        if found:
            rest = key[found.end():]
            if ".resnets." in pattern:
                rest = _renamed(rest, _RESNET)
            return place(*map(int, found.groups())) + rest
    raise ValueError(f"no LDM name for UNet parameter {key}")


def vae_key(key: str, value, blocks: int):
    """A diffusers VAE parameter's LDM name, and its value (attention projections as 1×1 convolutions); ``blocks``
    is the VAE's number of blocks (LDM numbers the decoder's from the bottom)."""
    name = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", key)
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2.", name)
    name = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", name)
    name = re.sub(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.",
                  lambda m: f"decoder.up.{blocks - 1 - int(m.group(1))}.block.{m.group(2)}.", name)
    name = re.sub(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                  lambda m: f"decoder.up.{blocks - 1 - int(m.group(1))}.upsample.", name)
    name = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.",
                  lambda m: f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.", name)
    attention = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.", name)
    if attention:
        rest = _renamed(name[attention.end():], (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"),
                                                 ("to_v", "v"), ("to_out.0", "proj_out")))
        name = f"{attention.group(1)}.mid.attn_1.{rest}"
        if value.ndim == 2:
            value = value[:, :, None, None]
    return name.replace(".conv_shortcut.", ".nin_shortcut."), value


def clip_state(state: dict) -> dict:
    """A transformers CLIP text model's parameters as LDM's ``transformer.`` names them (``text_model.`` first)."""
    return {(k if k.startswith(("text_model.", "text_projection")) else "text_model." + k): v
            for k, v in state.items()}


def open_clip_state(state: dict) -> dict:
    """A transformers CLIP text model's parameters in OpenCLIP's layout (fused query/key/value projections, the
    text projection transposed; an identity one where the model has none, as SD 2.x checkpoints carry one)."""
    import torch

    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    found: dict = {"token_embedding.weight": state["embeddings.token_embedding.weight"],
                   "positional_embedding": state["embeddings.position_embedding.weight"],
                   "ln_final.weight": state["final_layer_norm.weight"],
                   "ln_final.bias": state["final_layer_norm.bias"]}
    width = found["token_embedding.weight"].shape[1]
    projection = state.get("text_projection.weight")
    found["text_projection"] = projection.T.contiguous() if projection is not None else torch.eye(width)
    layers = sorted({int(m.group(1)) for k in state if (m := re.match(r"encoder\.layers\.(\d+)\.", k))})
    for i in layers:
        old, new = f"encoder.layers.{i}.", f"transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            found[f"{new}attn.in_proj_{kind}"] = torch.cat(
                [state[f"{old}self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")])
            found[f"{new}attn.out_proj.{kind}"] = state[f"{old}self_attn.out_proj.{kind}"]
            found[f"{new}ln_1.{kind}"] = state[f"{old}layer_norm1.{kind}"]
            found[f"{new}ln_2.{kind}"] = state[f"{old}layer_norm2.{kind}"]
            found[f"{new}mlp.c_fc.{kind}"] = state[f"{old}mlp.fc1.{kind}"]
            found[f"{new}mlp.c_proj.{kind}"] = state[f"{old}mlp.fc2.{kind}"]
    return found


def _renamed(rest: str, names) -> str:
    for old, new in names:
        if rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest
