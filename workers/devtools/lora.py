"""Tiny random LoRAs for a pipeline folder, in the diffusers / PEFT format or the kohya / A1111 one, for tests and
for trying ``--lora``.

Both formats hold the same update when written with the same seed: the attention projections of the UNet and the
(first) text encoder, rank ``rank``, alpha equal to the rank (a scale of 1), the up matrices random instead of
PEFT's zeros so that the LoRA changes the model.  The diffusers format is what ``save_lora_weights`` writes
(``unet.…lora_A.weight``); the kohya one names each layer by its module path with underscores
(``lora_unet_down_blocks_1_…_to_q.lora_down.weight``, ``lora_te_…``; SDXL's encoders ``lora_te1_`` and
``lora_te2_``) with an ``.alpha`` beside it.
"""

from __future__ import annotations

import json
from pathlib import Path

TARGETS = {"unet": ["to_q", "to_k", "to_v", "to_out.0"], "text_encoder": ["q_proj", "k_proj", "v_proj", "out_proj"]}
KOHYA = {"unet": "lora_unet_", "text_encoder": "lora_te_", "text_encoder_2": "lora_te2_"}


def lora_layers(pipeline: Path, *, rank: int = 4, seed: int = 0, text_encoder: bool = True) -> dict[str, dict]:
    """Per component (``unet``, ``text_encoder``), the LoRA layers as PEFT names them: module path ->
    (A, B) matrices, A of shape (rank, in), B of shape (out, rank)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    generator = torch.Generator().manual_seed(seed)
    found: dict[str, dict] = {}
    models = {"unet": UNet2DConditionModel.from_pretrained(pipeline / "unet")}
    if text_encoder and (pipeline / "text_encoder").is_dir():
        models["text_encoder"] = CLIPTextModel.from_pretrained(pipeline / "text_encoder")
    for component, model in models.items():
        layers = {}
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in TARGETS[component]):
                a = torch.randn((rank, module.in_features), generator=generator) * 0.1
                b = torch.randn((module.out_features, rank), generator=generator) * 0.1
                layers[name] = (a, b)
        found[component] = layers
    return found


def write_lora(pipeline: Path, out: Path, *, kind: str = "diffusers", rank: int = 4, seed: int = 0,
               text_encoder: bool = True) -> Path:
    """Write a LoRA for the pipeline folder ``pipeline`` to the ``.safetensors`` file ``out`` in the ``diffusers``
    or the ``kohya`` format."""
    import torch
    from safetensors.torch import save_file

    xl = json.loads((Path(pipeline) / "model_index.json").read_text())["_class_name"].startswith(
        "StableDiffusionXL")
    tensors = {}
    for component, layers in lora_layers(Path(pipeline), rank=rank, seed=seed, text_encoder=text_encoder).items():
        for name, (a, b) in layers.items():
            if kind == "diffusers":
                tensors[f"{component}.{name}.lora_A.weight"] = a
                tensors[f"{component}.{name}.lora_B.weight"] = b
            elif kind == "kohya":
                prefix = "lora_te1_" if xl and component == "text_encoder" else KOHYA[component]
                path = name if component == "unet" or name.startswith("text_model.") else f"text_model.{name}"
                key = prefix + path.replace(".", "_")
                tensors[f"{key}.lora_down.weight"] = a
                tensors[f"{key}.lora_up.weight"] = b
                tensors[f"{key}.alpha"] = torch.tensor(float(rank))
            else:
                raise ValueError(f"kind must be diffusers or kohya, not {kind!r}")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    return out
