"""A source's configs checked as a whole, before any module is built from them: an architecture the specs can
describe (a text-to-image UNet2DConditionModel, an AutoencoderKL, CLIP text encoders that fit the UNet's
context, SDXL's added conditioning), and sizes within reach (parameters per component, the largest
activation).  Each value is read through :class:`workers.source.configs.Config`, which checks its type and
range."""

from __future__ import annotations

import math
from pathlib import Path

from workers.errors import SourceError, UnsupportedModelError
from workers.source.configs import (
    MAX_ACTIVATION_BYTES,
    MAX_CHANNELS,
    MAX_HEADS,
    MAX_IMAGE_SIZE,
    MAX_LAYERS_PER_BLOCK,
    MAX_PARAMETERS,
    MAX_POSITIONS,
    MAX_SAMPLE_SIZE,
    MAX_TEXT_LAYERS,
    MAX_TRANSFORMER_LAYERS,
    MAX_VOCAB,
    MAX_WIDTH,
    Config,
    SourceSizes,
    is_number,
    shown,
)


def check_configs(root: Path) -> SourceSizes:
    """Read and check the configs of ``root``'s UNet, VAE, text encoder(s), tokenizer(s) and (when present)
    safety checker and feature extractor; refuse architectures the specs cannot describe and sizes far
    beyond any Stable Diffusion model.  SDXL (a ``text_time`` UNet) reads ``text_encoder_2`` and, unless it
    is a refiner, ``text_encoder``.  Raises SourceError, UnsupportedModelError."""
    unet, vae = Config.read(root, "unet"), Config.read(root, "vae")
    source = str(root)
    in_channels, context, xl = _unet_kind(unet)
    encoders = _text_encoders(root, xl)
    widths = [text.integer("hidden_size", 512, high=MAX_CHANNELS) for text in encoders.values()]
    if sum(widths) != context:
        label = " + ".join(f"{key} {w}" for key, w in zip(encoders, widths))
        raise UnsupportedModelError(
            f"text encoder width {label} does not match the UNet's context {context}",
            source=source, hint="The source's text encoder and UNet do not belong together.")
    sample_value = unet.get("sample_size", 64)
    if isinstance(sample_value, (list, tuple)):
        sample = tuple(unet.integers("sample_size", [64, 64], high=MAX_SAMPLE_SIZE, count=2))
    else:
        sample = (unet.integer("sample_size", 64, high=MAX_SAMPLE_SIZE),) * 2
    unet_levels = _unet_levels(unet, context)
    residuals = residual_levels(unet)
    vae_channels, upcast = _vae(vae, in_channels)
    texts = {key: _text(root, text, width, "tokenizer" + key[len("text_encoder"):])
             for (key, text), width in zip(encoders.items(), widths)}
    if len({sequence for sequence, _ in texts.values()}) > 1:
        raise UnsupportedModelError(f"the text encoders' sequence lengths differ ({texts})", source=source,
                                    hint="The source's tokenizers do not belong together.")
    sequence = next(iter(texts.values()))[0]
    vocab = min(v for _, v in texts.values())  # the ids sampled for checks fit every encoder
    safety_image_size = _safety(root)
    text_embeds_dim, time_ids = _added_conditioning(unet, encoders) if xl else (0, 0)
    if time_ids == 6 and "text_encoder" not in encoders:  # a refiner's UNet takes 5 (its aesthetic score)
        raise SourceError("an SDXL base UNet needs text_encoder, and the source has none", source=source,
                          hint="Add the first text encoder, or pick a refiner (its UNet takes an aesthetic score).")
    width_of = dict(zip(encoders, widths))
    refiner = _refiner(root, time_ids, encoders, width_of) if (root / "refiner" / "config.json").is_file() else (0, 0, 0)
    sizes = SourceSizes(sample=sample, down_factor=2 ** (len(unet_levels) - 1), latent_channels=in_channels,
                        vae_scale_factor=2 ** (len(vae_channels) - 1), context_dim=context,
                        sequence_length=sequence, vocab_size=vocab, safety_image_size=safety_image_size,
                        unet_levels=unet_levels, vae_channels=tuple(vae_channels),
                        text_widths=(width_of.get("text_encoder", 0), width_of.get("text_encoder_2", 0)),
                        text_embeds_dim=text_embeds_dim, time_ids=time_ids, vae_float32=xl and upcast,
                        refiner=refiner, residuals=residuals)
    needed, where = largest_activation(sizes, sample, batch_size=2)
    if needed > MAX_ACTIVATION_BYTES:
        raise unet.too_much_memory("sample_size", sample_value, needed, where)
    return sizes


XL_ENCODERS = ("text_encoder", "text_encoder_2")  # the order SDXL concatenates their hidden states in


def _unet_kind(unet: Config) -> tuple[int, int, bool]:
    """A text-to-image UNet the specs describe: its input channels, context width, and whether it is SDXL's."""
    source = unet.source
    name = unet.get("_class_name")
    if name != "UNet2DConditionModel":
        raise UnsupportedModelError(f"unet class {name if isinstance(name, str) else shown(name)} is not "
                                    "supported", source=source, hint="Only UNet2DConditionModel is supported.")
    in_channels = unet.integer("in_channels", 4, high=MAX_CHANNELS)
    if in_channels != 4:
        raise UnsupportedModelError(
            f"a UNet with {in_channels} input channels (inpainting or depth) is not supported yet",
            source=source, hint="Pick a text-to-image Stable Diffusion model.")
    if unet.integer("out_channels", 4, high=MAX_CHANNELS) != 4:
        raise UnsupportedModelError(f"a UNet with {unet.get('out_channels')} output channels is not supported",
                                    source=source, hint="Pick a text-to-image Stable Diffusion model.")
    added = unet.get("addition_embed_type")
    if unet.get("class_embed_type") or added not in (None, "text_time"):
        what = f"class_embed_type {shown(unet.get('class_embed_type'))}" if unet.get("class_embed_type") \
            else f"addition_embed_type {shown(added)}"
        raise UnsupportedModelError(f"UNets with {what} are not supported", source=source,
                                    hint="Pick a Stable Diffusion 1.x/2.x or SDXL model.")
    if isinstance(unet.get("cross_attention_dim"), (list, tuple)):
        raise UnsupportedModelError("per-block cross_attention_dim is not supported", source=source)
    return in_channels, unet.integer("cross_attention_dim", 1280, high=MAX_CHANNELS), added == "text_time"


def _vae(vae: Config, in_channels: int) -> tuple[list[int], bool]:
    """An AutoencoderKL that goes with the UNet: its block widths, and whether it must run in float32."""
    vae_channels = vae.integers("block_out_channels", [64], high=MAX_CHANNELS)
    vae_layers = vae.integer("layers_per_block", 1, high=MAX_LAYERS_PER_BLOCK)
    groups = vae.integer("norm_num_groups", 32, high=MAX_CHANNELS)
    if any(c % groups for c in vae_channels):
        raise vae.wrong("block_out_channels", vae_channels, f"multiples of norm_num_groups {groups}")
    if vae.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise UnsupportedModelError(f"vae class {shown(vae.get('_class_name'))} is not supported", source=vae.source,
                                    hint="Only AutoencoderKL VAEs are supported.")
    if vae.integer("latent_channels", 4, high=MAX_CHANNELS) != in_channels:
        raise UnsupportedModelError(f"the VAE's {vae.get('latent_channels')} latent channels do not match the "
                                    f"UNet's {in_channels}", source=vae.source,
                                    hint="The source's VAE and UNet do not belong together.")
    upcast = vae.get("force_upcast", True)
    if not isinstance(upcast, bool):
        raise vae.wrong("force_upcast", upcast, "true or false")
    _refuse_parameters(vae, "VAE", _vae_parameters(vae_channels, vae_layers),
                       f"block_out_channels {vae_channels}, layers_per_block {vae_layers}")
    return vae_channels, upcast


def _text_encoders(root: Path, xl: bool) -> dict[str, Config]:
    """The text encoders' configs the UNet's context is made of: SD 1.x/2.x's one; SDXL's two (the
    refiner's second only)."""
    if not xl:
        return {"text_encoder": Config.read(root, "text_encoder")}
    if not (root / "text_encoder_2" / "config.json").is_file():
        raise SourceError("an SDXL UNet (addition_embed_type text_time) needs text_encoder_2, and the source "
                          "has none", source=str(root), hint="Pick a complete SDXL diffusers repo.")
    return {key: Config.read(root, key) for key in XL_ENCODERS if (root / key / "config.json").is_file()}


def _refiner(root: Path, time_ids: int, encoders: dict[str, Config], width_of: dict[str, int]
             ) -> tuple[int, int, int]:
    """A refiner UNet (``refiner/``) beside an SDXL base: conditioned by the base's second text encoder."""
    config = Config.read(root, "refiner")
    source = str(root)
    if time_ids != 6:
        raise UnsupportedModelError("--refiner goes with an SDXL base model, and this source is not one",
                                    source=source, hint="Drop --refiner, or convert an SDXL base model.")
    if config.get("_class_name") != "UNet2DConditionModel" or config.get("addition_embed_type") != "text_time":
        raise UnsupportedModelError("the --refiner UNet is not an SDXL UNet", source=source,
                                    hint="Pass an SDXL refiner repo.")
    context = config.integer("cross_attention_dim", 1280, high=MAX_CHANNELS)
    second = width_of["text_encoder_2"]
    if context != second:
        raise UnsupportedModelError(f"the --refiner UNet's context {context} does not match the base's second "
                                    f"text encoder ({second})", source=source,
                                    hint="Pass the refiner made for this base model.")
    _unet_levels(config, context)  # its sizes, checked as the base's
    pooled, count = _added_conditioning(config, encoders)
    if count != 5:
        raise UnsupportedModelError("the --refiner UNet takes a base's 6 time_ids, not a refiner's 5",
                                    source=source, hint="Pass an SDXL refiner, not a base model.")
    return context, pooled, count


def _added_conditioning(unet: Config, encoders: dict[str, Config]) -> tuple[int, int]:
    """SDXL's pooled text embedding width (the second encoder's projection) and micro-conditioning count."""
    second = encoders["text_encoder_2"]
    pooled = second.integer("projection_dim", 1280, high=MAX_CHANNELS)
    per_value = unet.integer("addition_time_embed_dim", 256, high=MAX_CHANNELS)
    total = unet.integer("projection_class_embeddings_input_dim", pooled + 6 * per_value, high=MAX_CHANNELS * 8)
    count, rest = divmod(total - pooled, per_value)
    if rest or count not in (5, 6):
        raise unet.wrong("projection_class_embeddings_input_dim", total,
                         f"the pooled text width {pooled} plus 6 (base) or 5 (refiner) times "
                         f"addition_time_embed_dim {per_value}")
    return pooled, count


def _unet_levels(unet: Config, context: int) -> tuple[tuple[int, int, bool], ...]:
    channels = unet.integers("block_out_channels", [320, 640, 1280, 1280], high=MAX_CHANNELS)
    n = len(channels)
    down = unet.names("down_block_types", ["CrossAttnDownBlock2D"] * (n - 1) + ["DownBlock2D"], n)
    up = unet.names("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * (n - 1), n)
    layers = unet.per_block("layers_per_block", 2, n, high=MAX_LAYERS_PER_BLOCK)
    transformers = unet.per_block("transformer_layers_per_block", 1, n, high=MAX_TRANSFORMER_LAYERS)
    # diffusers' historical naming: without num_attention_heads, attention_head_dim is the head count
    heads_key = "num_attention_heads" if unet.get("num_attention_heads") is not None else "attention_head_dim"
    heads = unet.per_block(heads_key, 8, n, high=MAX_HEADS)
    groups = unet.integer("norm_num_groups", 32, high=MAX_CHANNELS)
    if any(c % groups for c in channels):
        raise unet.wrong("block_out_channels", channels, f"multiples of norm_num_groups {groups}")
    attention = [("CrossAttn" in down[i]) or ("CrossAttn" in up[n - 1 - i]) for i in range(n)]
    parameters = 0
    for c, lay, t, attn in zip(channels, layers, transformers, attention):
        block = 18 * c * c + (t * (18 * c * c + 2 * c * context) + 2 * c * c if attn else 0)
        parameters += (2 * lay + 1) * block  # down resnets, up resnets (one more), their transformers
    top = channels[-1]
    parameters += 36 * top * top + transformers[-1] * (18 * top * top + 2 * top * context)  # mid block
    _refuse_parameters(unet, "UNet", parameters, f"block_out_channels {channels}, layers_per_block "
                       f"{layers}, transformer_layers_per_block {transformers}")
    return tuple(zip(channels, heads, attention))


def residual_levels(config: Config) -> tuple[tuple[int, int], ...]:
    """The down path's outputs a ControlNet adds to (a UNet's, or a ControlNet's own), in diffusers' order:
    ``conv_in``, every ResNet of every down block, every downsampler, then the mid block; each as (channels, how
    much it is downsampled).  The same config keys mean the same in a UNet's and a ControlNet's config."""
    channels = config.integers("block_out_channels", [320, 640, 1280, 1280], high=MAX_CHANNELS)
    n = len(channels)
    layers = config.per_block("layers_per_block", 2, n, high=MAX_LAYERS_PER_BLOCK)
    found = [(channels[0], 1)]
    for level, (width, count) in enumerate(zip(channels, layers)):
        found += [(width, 2 ** level)] * count
        if level < n - 1:  # every down block but the last ends with a downsampler
            found.append((width, 2 ** (level + 1)))
    return tuple(found) + ((channels[-1], 2 ** (n - 1)),)


def _vae_parameters(channels: list[int], layers: int) -> int:
    top = channels[-1]
    return sum((2 * layers + 1) * 18 * c * c for c in channels) + 40 * top * top


def _refuse_parameters(config: Config, what: str, parameters: float, detail: str) -> None:
    if parameters > MAX_PARAMETERS:
        raise UnsupportedModelError(
            f"{config.file} describes a {what} of about {parameters / 1e9:,.0f} billion parameters ({detail}); "
            f"the limit is {MAX_PARAMETERS / 1e9:.0f} billion", source=config.source,
            hint=f"No Stable Diffusion model is this large: {config.file} is damaged or not a Stable "
                 "Diffusion model's.")


def _text(root: Path, text: Config, hidden: int, tokenizer: str = "tokenizer") -> tuple[int, int]:
    """The sequence length and vocabulary size of a text encoder (and its tokenizer folder)."""
    vocab = text.integer("vocab_size", 49408, high=MAX_VOCAB)
    positions = text.integer("max_position_embeddings", 77, high=MAX_POSITIONS)
    width = text.integer("intermediate_size", 2048, high=MAX_WIDTH)
    layers = text.integer("num_hidden_layers", 12, high=MAX_TEXT_LAYERS)
    heads = text.integer("num_attention_heads", 8, high=MAX_HEADS)
    if hidden % heads:
        raise text.wrong("num_attention_heads", heads, f"a divisor of hidden_size {hidden}")
    _refuse_parameters(text, "text encoder", (vocab + positions) * hidden + layers * (4 * hidden**2 + 2 * hidden * width),
                       f"vocab_size {vocab}, hidden_size {hidden}, num_hidden_layers {layers}")
    if heads * positions**2 * 4 > MAX_ACTIVATION_BYTES:
        raise text.too_much_memory("max_position_embeddings", positions, heads * positions**2 * 4, "self-attention")
    sequence = positions
    if (root / tokenizer / "tokenizer_config.json").is_file():
        config = Config.read(root, tokenizer, "tokenizer_config.json")
        limit = config.get("model_max_length", positions)
        if not is_number(limit) or math.isnan(limit):
            raise config.wrong("model_max_length", limit, "a number")
        if limit < 1:
            raise config.wrong("model_max_length", limit, "at least 1")
        sequence = int(min(limit, positions))  # tokenizers often say 1e30: "no limit of my own"
    return sequence, vocab


def _safety(root: Path) -> int:
    """The safety checker's input side (from the feature extractor), checked with its vision model."""
    side, extractor = 224, None
    if (root / "feature_extractor" / "preprocessor_config.json").is_file():
        extractor = Config.read(root, "feature_extractor", "preprocessor_config.json")
        crop = extractor.get("crop_size", 224)
        if isinstance(crop, dict):
            side = extractor.check("crop_size.height", crop.get("height", 224), MAX_IMAGE_SIZE)
            extractor.check("crop_size.width", crop.get("width", side), MAX_IMAGE_SIZE)
        else:
            side = extractor.integer("crop_size", 224, high=MAX_IMAGE_SIZE)
    if not (root / "safety_checker" / "config.json").is_file():
        return side
    checker = Config.read(root, "safety_checker")
    vision = checker.get("vision_config", {})
    if not isinstance(vision, dict):
        raise checker.wrong("vision_config", vision, "an object")
    sub = Config(vision, checker.file, checker.source)
    hidden = sub.check("vision_config.hidden_size", sub.get("hidden_size", 768), MAX_CHANNELS)
    width = sub.check("vision_config.intermediate_size", sub.get("intermediate_size", 3072), MAX_WIDTH)
    layers = sub.check("vision_config.num_hidden_layers", sub.get("num_hidden_layers", 12), MAX_TEXT_LAYERS)
    heads = sub.check("vision_config.num_attention_heads", sub.get("num_attention_heads", 12), MAX_HEADS)
    image = sub.check("vision_config.image_size", sub.get("image_size", 224), MAX_IMAGE_SIZE)
    patch = sub.check("vision_config.patch_size", sub.get("patch_size", 32), image)
    if hidden % heads:
        raise sub.wrong("vision_config.num_attention_heads", heads, f"a divisor of hidden_size {hidden}")
    checker.integer("projection_dim", 512, high=MAX_CHANNELS)
    _refuse_parameters(checker, "safety checker", layers * (4 * hidden**2 + 2 * hidden * width)
                       + (3 * patch * patch + (image // patch) ** 2 + 1) * hidden,
                       f"vision hidden_size {hidden}, num_hidden_layers {layers}")
    needed = heads * ((side // patch) ** 2 + 1) ** 2 * 4
    if needed > MAX_ACTIVATION_BYTES:
        culprit = extractor or checker
        raise culprit.too_much_memory("crop_size" if extractor else "vision_config.patch_size",
                                      side if extractor else patch, needed, "safety checker self-attention")
    return side


def largest_activation(sizes: SourceSizes, latent: tuple[int, int], batch_size: int) -> tuple[int, str]:
    """The bytes of the largest float32 tensor (or attention matrix) that depends on the latent size, and
    where it is: a UNet level's feature maps or self-attention, the VAE's."""
    h, w = latent
    found = [(0, "")]
    for i, (channels, heads, attention) in enumerate(sizes.unet_levels):
        tokens = math.ceil(h / 2**i) * math.ceil(w / 2**i)
        found.append((batch_size * channels * tokens * (8 if attention else 1) * 4, f"UNet level {i} features"))
        if attention:
            found.append((batch_size * heads * tokens * tokens * 4, f"UNet level {i} self-attention"))
    image = (h * sizes.vae_scale_factor, w * sizes.vae_scale_factor)
    for i, channels in enumerate(sizes.vae_channels):
        found.append((channels * math.ceil(image[0] / 2**i) * math.ceil(image[1] / 2**i) * 4, "VAE features"))
    found.append(((h * w) ** 2 * 4, "VAE self-attention"))
    return max(found)
