"""A source's config files read with every value checked, before any module is built from them.

Each value the conversion uses is checked for its type (a clear error instead of a traceback deep in
diffusers) and a sane range, and the sizes the configs describe (parameters per component, the largest
activation) are estimated and refused far beyond any Stable Diffusion model, instead of letting torch try
to allocate terabytes.  The limits are generous: several times SDXL, the largest model of this family.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from workers.errors import SourceError, UnsupportedModelError

MAX_CONFIG_BYTES = 10 * 2**20  # a config is a few kilobytes
MAX_PARAMETERS = 10e9  # per component; SDXL's UNet, the largest of the family, has 2.6e9
MAX_ACTIVATION_BYTES = 64e9  # one float32 tensor or attention matrix; SD 2.1 at 768 px needs 3.4 GB
# the largest value accepted for each field: a generous multiple of the largest real model's
MAX_SAMPLE_SIZE = 1024  # latent side; SDXL: 128
MAX_CHANNELS = 16384  # UNet / VAE block widths, context width; SDXL: 1280 (context 2048)
MAX_BLOCKS = 8  # UNet / VAE levels; SD: 4
MAX_LAYERS_PER_BLOCK = 32  # SD: 2
MAX_TRANSFORMER_LAYERS = 64  # SDXL: 10
MAX_HEADS = 1024  # SD 2.x: 20
MAX_VOCAB = 1_000_000  # CLIP: 49,408
MAX_POSITIONS = 4096  # CLIP: 77 (long-context CLIP variants: 248)
MAX_WIDTH = 65536  # text / vision MLP widths; OpenCLIP bigG: 5,120
MAX_TEXT_LAYERS = 256  # OpenCLIP bigG: 32
MAX_IMAGE_SIZE = 4096  # safety checker input side; SD: 224


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Config:
    """One JSON config of a source folder; its values read with a type and range check each."""

    def __init__(self, data: dict, file: str, source: str) -> None:
        self.data, self.file, self.source = data, file, source

    @classmethod
    def read(cls, root: Path, component: str, name: str = "config.json") -> "Config":
        file = f"{component}/{name}"
        return cls(read_json(root / component / name, label=file, source=str(root)), file, str(root))

    def get(self, key: str, default: object = None) -> object:
        value = self.data.get(key)
        return default if value is None else value

    def wrong(self, key: str, value: object, want: str) -> SourceError:
        return SourceError(f"{self.file}: {key} must be {want}, not {_short(value)}", source=self.source,
                           hint=f"Fix {self.file} in the source: diffusers cannot build a model from it.")

    def too_large(self, key: str, value: object, high: float) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.file}: {key} {_short(value)} is far beyond any Stable Diffusion model (the limit is {high:,})",
            source=self.source,
            hint=f"{self.file} is damaged or not a Stable Diffusion model's; fix it or pick another source.")

    def check(self, key: str, value: object, high: float, low: int = 1) -> int:
        """``value`` (read from ``key``) as an integer from ``low`` to ``high``."""
        if _number(value) and value > high:
            raise self.too_large(key, value, high)
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.wrong(key, value, "an integer")
        if value < low:
            raise self.wrong(key, value, f"at least {low}")
        return value

    def integer(self, key: str, default: int, *, high: int, low: int = 1) -> int:
        return self.check(key, self.get(key, default), high, low)

    def integers(self, key: str, default: list[int], *, high: int, count: int | None = None,
                 max_count: int = MAX_BLOCKS) -> list[int]:
        """A list of integers (``count`` of them, or 1 to ``max_count``)."""
        value = self.get(key, default)
        if not isinstance(value, (list, tuple)) or not value:
            raise self.wrong(key, value, "a list of integers")
        if count is not None and len(value) != count:
            raise self.wrong(key, value, f"a list of {count} integers")
        if len(value) > max_count:
            raise self.too_large(f"{key} (length)", len(value), max_count)
        return [self.check(f"{key}[{i}]", v, high, 1) for i, v in enumerate(value)]

    def per_block(self, key: str, default: int, count: int, *, high: int) -> list[int]:
        """An integer for every block, or one list entry per block."""
        value = self.get(key, default)
        if isinstance(value, (list, tuple)):
            return self.integers(key, default, high=high, count=count)
        return [self.check(key, value, high, 1)] * count

    def too_much_memory(self, key: str, value: object, needed: float, where: str) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.file}: {key} {_short(value)} makes one activation ({where}) of {needed / 1e9:,.0f} GB; "
            f"the limit is {MAX_ACTIVATION_BYTES / 1e9:.0f} GB", source=self.source,
            hint=f"{self.file} is damaged or not a Stable Diffusion model's; fix it or pick another source.")

    def names(self, key: str, default: list[str], count: int) -> list[str]:
        value = self.get(key, default)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise self.wrong(key, value, "a list of block class names")
        if len(value) != count:
            raise self.wrong(key, value, f"{count} block names, one per block_out_channels entry")
        return list(value)


def read_json(file: Path, *, label: str, source: str, hint: str | None = None) -> dict:
    """A JSON object from ``file``.  Raises SourceError naming ``label`` when missing, huge or malformed."""
    hint = hint or f"Fix {label} in the source."
    try:
        size = file.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise SourceError(f"{label} is {size:,} bytes, far too large for a config", source=source, hint=hint)
        data = json.loads(file.read_text())
    except FileNotFoundError as e:
        raise SourceError(f"{label} is missing", source=source,
                          hint="The source is incomplete; re-download it.") from e
    except ValueError as e:  # JSON or UTF-8 errors
        raise SourceError(f"{label} is not valid JSON ({e})", source=source, hint=hint) from e
    except OSError as e:  # a folder, no permission
        raise SourceError(f"{label} cannot be read ({e.strerror})", source=source, hint=hint) from e
    if not isinstance(data, dict):
        raise SourceError(f"{label} is not a JSON object", source=source, hint=hint)
    return data


@dataclass(frozen=True)
class SourceSizes:
    """What the configs say, checked: the sizes geometry needs and those the activation estimate needs."""

    sample: tuple[int, int]  # the UNet's default latent size
    down_factor: int  # the UNet's total downsampling: latent sides must be multiples of it
    latent_channels: int
    vae_scale_factor: int
    context_dim: int
    sequence_length: int
    vocab_size: int
    safety_image_size: int
    unet_levels: tuple[tuple[int, int, bool], ...]  # per level: channels, heads, has attention
    vae_channels: tuple[int, ...]
    # SDXL: the hidden width of each text encoder the UNet reads (0: absent, as in a refiner), the pooled
    # text embedding and the number of micro-conditioning values (6 base, 5 refiner); all 0 for SD 1.x/2.x
    text_widths: tuple[int, int] = (0, 0)
    text_embeds_dim: int = 0
    time_ids: int = 0
    vae_float32: bool = False  # the SDXL VAE overflows in float16: converted in float32 unless it says otherwise
    # an SDXL refiner's UNet shipped beside a base's (``refiner/``): its context, pooled width and time_ids
    refiner: tuple[int, int, int] = (0, 0, 0)

    @property
    def xl(self) -> bool:
        return self.time_ids > 0


def check_configs(root: Path) -> SourceSizes:
    """Read and check the configs of ``root``'s UNet, VAE, text encoder(s), tokenizer(s) and (when present)
    safety checker and feature extractor; refuse architectures the specs cannot describe and sizes far
    beyond any Stable Diffusion model.  SDXL (a ``text_time`` UNet) reads ``text_encoder_2`` and, unless it
    is a refiner, ``text_encoder``.  Raises SourceError, UnsupportedModelError."""
    unet, vae = Config.read(root, "unet"), Config.read(root, "vae")
    source = str(root)
    name = unet.get("_class_name")
    if name != "UNet2DConditionModel":
        raise UnsupportedModelError(f"unet class {name if isinstance(name, str) else _short(name)} is not "
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
        what = f"class_embed_type {_short(unet.get('class_embed_type'))}" if unet.get("class_embed_type") \
            else f"addition_embed_type {_short(added)}"
        raise UnsupportedModelError(f"UNets with {what} are not supported", source=source,
                                    hint="Pick a Stable Diffusion 1.x/2.x or SDXL model.")
    if isinstance(unet.get("cross_attention_dim"), (list, tuple)):
        raise UnsupportedModelError("per-block cross_attention_dim is not supported", source=source)
    context = unet.integer("cross_attention_dim", 1280, high=MAX_CHANNELS)
    xl = added == "text_time"
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
    vae_channels = vae.integers("block_out_channels", [64], high=MAX_CHANNELS)
    vae_layers = vae.integer("layers_per_block", 1, high=MAX_LAYERS_PER_BLOCK)
    groups = vae.integer("norm_num_groups", 32, high=MAX_CHANNELS)
    if any(c % groups for c in vae_channels):
        raise vae.wrong("block_out_channels", vae_channels, f"multiples of norm_num_groups {groups}")
    if vae.get("_class_name", "AutoencoderKL") != "AutoencoderKL":
        raise UnsupportedModelError(f"vae class {_short(vae.get('_class_name'))} is not supported", source=source,
                                    hint="Only AutoencoderKL VAEs are supported.")
    if vae.integer("latent_channels", 4, high=MAX_CHANNELS) != in_channels:
        raise UnsupportedModelError(f"the VAE's {vae.get('latent_channels')} latent channels do not match the "
                                    f"UNet's {in_channels}", source=source,
                                    hint="The source's VAE and UNet do not belong together.")
    upcast = vae.get("force_upcast", True)
    if not isinstance(upcast, bool):
        raise vae.wrong("force_upcast", upcast, "true or false")
    _refuse_parameters(vae, "VAE", _vae_parameters(vae_channels, vae_layers),
                       f"block_out_channels {vae_channels}, layers_per_block {vae_layers}")
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
                        refiner=refiner)
    needed, where = largest_activation(sizes, sample, batch_size=2)
    if needed > MAX_ACTIVATION_BYTES:
        raise unet.too_much_memory("sample_size", sample_value, needed, where)
    return sizes


XL_ENCODERS = ("text_encoder", "text_encoder_2")  # the order SDXL concatenates their hidden states in


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
        if not _number(limit) or math.isnan(limit):
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
