"""Tiny random Stable Diffusion pipelines built in code, for trying the tool and for tests.

They have the real architectures' structure (SD 1.x: fixed head count, conv projections, safety checker;
SD 2.x: linear projections, per-block head counts, no safety checker; SDXL: two text encoders, added
text/time conditioning, per-block transformer depths, a float32 VAE; the SDXL refiner: the second encoder
only and an aesthetic score) at a few hundred kilobytes, so a full conversion takes minutes on a laptop CPU
and nothing is downloaded.
"""

from __future__ import annotations

import json
from pathlib import Path

STYLES = ("sd1", "sd2", "sdxl", "sdxl-refiner")
XL_STYLES = ("sdxl", "sdxl-refiner")
_SPECIAL = ("<|startoftext|>", "<|endoftext|>")


def _bytes_to_unicode() -> dict[int, str]:
    # the byte-level alphabet CLIP's BPE uses: printable bytes map to themselves, the rest above 255
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tokenizer(folder: Path, *, max_length: int = 77, pad: str = _SPECIAL[1]) -> None:
    """A small but valid CLIP BPE tokenizer: byte alphabet, a few merges, CLIP's special tokens (SDXL's
    second tokenizer pads with ``!``)."""
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = list(_bytes_to_unicode().values())
    merges = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("an", "d</w>"), ("c", "a"), ("ca", "t</w>")]
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + list(_SPECIAL)
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": max_length,
              "bos_token": _SPECIAL[0], "eos_token": _SPECIAL[1], "pad_token": pad,
              "unk_token": _SPECIAL[1], "do_lower_case": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    special = {"bos_token": _SPECIAL[0], "eos_token": _SPECIAL[1], "pad_token": pad,
               "unk_token": _SPECIAL[1]}
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))


def build_tiny_pipeline(out: Path, *, style: str = "sd1", seed: int = 0, sample_size: int | None = None,
                        safety_checker: bool | None = None, license: str = "creativeml-openrail-m",
                        initial_norms: bool = False) -> Path:
    """Write a tiny random diffusers ``StableDiffusionPipeline`` folder (safetensors weights) to ``out``.

    ``style`` is ``sd1`` or ``sd2``.  ``sample_size`` is the latent size; the SD2 default (24) makes
    576-token attention, which exercises the SPLIT_EINSUM_V2 remainder chunk.  Normalisation layers get
    random scales and shifts unless ``initial_norms`` keeps them at their initial ones and zeros.
    """
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}")
    if style in XL_STYLES:
        return build_tiny_xl_pipeline(out, refiner=style == "sdxl-refiner", seed=seed, sample_size=sample_size,
                                      license=license, initial_norms=initial_norms)
    sd2 = style == "sd2"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    context = 64 if sd2 else 32
    unet = UNet2DConditionModel(
        sample_size=sample_size or (24 if sd2 else 16),
        in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D") if sd2 else ("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D") if sd2 else ("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=context,
        attention_head_dim=(2, 4) if sd2 else 4,
        use_linear_projection=sd2,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32,
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        sample_size=2 * (sample_size or (24 if sd2 else 16)),
    )
    text_config = CLIPTextConfig(
        bos_token_id=0, eos_token_id=2, hidden_size=context, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, vocab_size=1000, max_position_embeddings=77,
        projection_dim=context, hidden_act="gelu" if sd2 else "quick_gelu", layer_norm_eps=1e-5,
    )
    text_encoder = CLIPTextModel(text_config)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1,
                              prediction_type="v_prediction" if sd2 else "epsilon")
    with_checker = (not sd2) if safety_checker is None else safety_checker
    if not initial_norms:
        randomize_norms(unet, vae, text_encoder)
    return save_pipeline(out, unet=unet, vae=vae, text_encoder=text_encoder, scheduler=scheduler,
                         safety_checker=_safety_checker(context) if with_checker else None,
                         title=f"Tiny random {style.upper()} pipeline", license=license)


def build_tiny_xl_pipeline(out: Path, *, refiner: bool = False, seed: int = 0, sample_size: int | None = None,
                           license: str = "openrail++", initial_norms: bool = False,
                           float16_vae: bool = False) -> Path:
    """Write a tiny random ``StableDiffusionXLPipeline`` (or, with ``refiner``, a refiner's
    ``StableDiffusionXLImg2ImgPipeline``: the second text encoder only, an aesthetic score) to ``out``.

    The two text encoders have different widths (32 and 48), so a mix-up cannot go unnoticed; the VAE says
    ``force_upcast`` (converted in float32, as the original SDXL VAE) unless ``float16_vae``.
    """
    import torch
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    widths = (0 if refiner else 32, 48)
    sample = sample_size or 8  # 64 tokens at the top level: SDXL's structure at a fraction of the time
    unet = UNet2DConditionModel(
        sample_size=sample, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=sum(widths), addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=widths[1] + (5 if refiner else 6) * 8, norm_num_groups=32,
    )
    vae = _xl_vae(sample, float16_safe=float16_vae)

    def text_config(width: int) -> CLIPTextConfig:
        return CLIPTextConfig(bos_token_id=0, eos_token_id=2, pad_token_id=1, hidden_size=width,
                              intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=1000,
                              max_position_embeddings=77, projection_dim=width, hidden_act="gelu",
                              layer_norm_eps=1e-5)

    encoders = {"text_encoder_2": CLIPTextModelWithProjection(text_config(widths[1]))}
    if not refiner:
        encoders["text_encoder"] = CLIPTextModel(text_config(widths[0]))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    if not initial_norms:
        randomize_norms(unet, vae, *encoders.values())
    title = "Tiny random SDXL refiner" if refiner else "Tiny random SDXL pipeline"
    return save_xl_pipeline(out, unet=unet, vae=vae, scheduler=scheduler, title=title, license=license,
                            refiner=refiner, **encoders)


def save_xl_pipeline(out: Path, *, unet, vae, scheduler, text_encoder_2, text_encoder=None, refiner: bool = False,
                     title: str, license: str = "openrail++") -> Path:
    """Write a diffusers ``StableDiffusionXLPipeline`` folder (or, with ``refiner``, a refiner's
    ``StableDiffusionXLImg2ImgPipeline`` without the first text encoder) from its modules, one at a time."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    encoders = {"text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    for key, model in encoders.items():
        if model is not None:
            model.save_pretrained(out / key, safe_serialization=True)
            write_tokenizer(out / key.replace("text_encoder", "tokenizer"),
                            pad="!" if key == "text_encoder_2" else _SPECIAL[1])
    index = {
        "_class_name": "StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline",
        "_diffusers_version": _diffusers_version(),
        "force_zeros_for_empty_prompt": not refiner,
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": [None, None] if text_encoder is None else ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": [None, None] if text_encoder is None else ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "feature_extractor": [None, None], "image_encoder": [None, None],
    }
    if refiner:
        index["requires_aesthetics_score"] = True
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "README.md").write_text(
        f"---\nlicense: {license}\ntags:\n- stable-diffusion-xl\n- text-to-image\n---\n\n"
        f"# {title}\n\nRandom weights, for testing conversions.\n")
    return out


def _xl_vae(sample: int, *, float16_safe: bool):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, norm_num_groups=32, block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        sample_size=2 * sample, scaling_factor=0.13025, force_upcast=not float16_safe,
    )


def build_tiny_vae(out: Path, *, seed: int = 0, sample_size: int = 8, float16_safe: bool = True) -> Path:
    """Write a tiny random SDXL-shaped VAE as float16-fixed SDXL VAEs are published: ``config.json`` and
    safetensors weights at the folder's root (``force_upcast`` false unless ``float16_safe`` is False)."""
    import torch

    torch.manual_seed(seed)
    vae = _xl_vae(sample_size, float16_safe=float16_safe)
    randomize_norms(vae)
    vae.save_pretrained(out, safe_serialization=True)
    (Path(out) / "README.md").write_text("---\nlicense: mit\n---\n\n# Tiny random SDXL VAE\n")
    return Path(out)


def build_tiny_controlnet(out: Path, base: Path, *, seed: int = 0, condition: str = "canny",
                          license: str = "openrail", base_model: str | None = None) -> Path:
    """Write a tiny random diffusers ``ControlNetModel`` repo folder for the tiny pipeline at ``base`` (its UNet's
    structure and weights, as ``ControlNetModel.from_unet`` makes a ControlNet; the conditioning embedding
    downsamples by the base VAE's factor), as ControlNet repos are published: ``config.json`` and safetensors
    weights at the root, and a card naming the base and the condition.  The zero-initialised layers get random
    weights, so the residuals matter."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    vae = json.loads((Path(base) / "vae" / "config.json").read_text())
    factor = 2 ** (len(vae["block_out_channels"]) - 1)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet")
    embedding = tuple(16 * 2 ** i for i in range(factor.bit_length()))  # one stride-2 step per factor of two
    controlnet = wake_controlnet(ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=embedding),
                                 weight_std=0.3, bias=0.1)
    out = Path(out)
    controlnet.save_pretrained(out, safe_serialization=True)
    (out / "README.md").write_text(
        f"---\nlicense: {license}\n" + (f"base_model: {base_model}\n" if base_model else "")
        + f"tags:\n- controlnet\n- {condition}\n---\n\n"
        f"# Tiny random ControlNet ({condition})\n\nRandom weights, for testing conversions.\n")
    return out


def wake_controlnet(controlnet, *, weight_std: float, bias: float):
    """A ControlNet made by ``ControlNetModel.from_unet`` with its zero-initialised layers (the residual
    projections, the conditioning embedding's last convolution) given random weights (normal, ``weight_std``)
    and biases (uniform in ±``bias``) and its norms randomised, so its residuals matter; returned for chaining."""
    import torch

    with torch.no_grad():
        for layer in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                      controlnet.controlnet_cond_embedding.conv_out):
            layer.weight.normal_(0.0, weight_std)
            layer.bias.uniform_(-bias, bias)
    randomize_norms(controlnet)
    return controlnet


def save_pipeline(out: Path, *, unet, vae, text_encoder, scheduler, safety_checker=None,
                  title: str, license: str = "creativeml-openrail-m") -> Path:
    """Write diffusers ``StableDiffusionPipeline`` folder from its modules (safetensors weights).

    The tokenizer is a small valid CLIP BPE tokenizer (its ids fit any CLIP text encoder's vocabulary).
    """
    from transformers import CLIPImageProcessor

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.save_pretrained(out / "text_encoder", safe_serialization=True)
    scheduler.save_pretrained(out / "scheduler")
    write_tokenizer(out / "tokenizer")
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": _diffusers_version(),
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": safety_checker is not None,
        "scheduler": ["diffusers", type(scheduler).__name__],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    if safety_checker is not None:
        safety_checker.save_pretrained(out / "safety_checker", safe_serialization=True)
        CLIPImageProcessor(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224}) \
            .save_pretrained(out / "feature_extractor")
        index["safety_checker"] = ["stable_diffusion", "StableDiffusionSafetyChecker"]
        index["feature_extractor"] = ["transformers", "CLIPImageProcessor"]
    (out / "model_index.json").write_text(json.dumps(index, indent=2))
    (out / "README.md").write_text(
        f"---\nlicense: {license}\ntags:\n- stable-diffusion\n- text-to-image\n---\n\n"
        f"# {title}\n\nRandom weights, for testing conversions.\n")
    return out


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def randomize_norms(*models) -> None:
    # fresh norms are all ones/zeros, which hides weight mix-ups; real checkpoints never look like that
    import torch

    for model in models:
        for module in model.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.weight is not None:
                with torch.no_grad():
                    module.weight.uniform_(0.5, 1.5)
                    module.bias.uniform_(-0.2, 0.2)


def _safety_checker(projection: int):
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                     "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
                     "num_hidden_layers": 1, "vocab_size": 1000},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                       "num_hidden_layers": 2, "image_size": 224, "patch_size": 32},
        projection_dim=projection,
    )
    checker = StableDiffusionSafetyChecker(config)
    with torch.no_grad():
        for name in ("concept_embeds", "special_care_embeds"):
            getattr(checker, name).normal_()
        checker.concept_embeds_weights.uniform_(-0.2, 0.2)
        checker.special_care_embeds_weights.uniform_(-0.2, 0.2)
    return checker.eval()
