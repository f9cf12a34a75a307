"""The sizes of a pipeline: every shape the specs need, read from a source folder's configs (no torch).

``read_geometry`` also refuses what the specs cannot describe (inpainting UNets, SDXL-style conditioning,
mismatched text encoders) before any weights are loaded.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from workers.errors import OptionsError, SourceError, UnsupportedModelError


@dataclass(frozen=True)
class TensorSpec:
    """One input or output feature of a package."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # "float16" or "float32"
    description: str


@dataclass(frozen=True)
class Geometry:
    """Every size the specs need, read from the source's configs (and the user's overrides)."""

    batch_size: int
    latent_height: int
    latent_width: int
    latent_channels: int
    vae_scale_factor: int
    context_dim: int
    sequence_length: int
    safety_image_size: int
    vocab_size: int

    @property
    def image_height(self) -> int:
        return self.latent_height * self.vae_scale_factor

    @property
    def image_width(self) -> int:
        return self.latent_width * self.vae_scale_factor

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _read_config(path: Path, component: str, name: str = "config.json") -> dict:
    file = path / component / name
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as e:
        raise SourceError(f"{component}/{name} is missing", source=str(path),
                          hint="The source is incomplete; re-download it.") from e
    except json.JSONDecodeError as e:
        raise SourceError(f"{component}/{name} is not valid JSON ({e})", source=str(path),
                          hint="Fix the file in the source.") from e


def read_geometry(path: Path, *, latent_size: tuple[int, int] | None = None,
                  batch_size: int = 2) -> Geometry:
    """Derive the geometry from a source folder's configs.

    Latent size defaults to ``unet.config.sample_size``; the VAE scale factor is
    ``2 ** (len(vae.config.block_out_channels) - 1)``.  Raises OptionsError / UnsupportedModelError.
    """
    unet = _read_config(path, "unet")
    vae = _read_config(path, "vae")
    text = _read_config(path, "text_encoder")
    if unet.get("_class_name") != "UNet2DConditionModel":
        raise UnsupportedModelError(f"unet class {unet.get('_class_name')} is not supported",
                                    source=str(path), hint="Only UNet2DConditionModel is supported.")
    if unet.get("in_channels", 4) != 4 or unet.get("out_channels", 4) != 4:
        raise UnsupportedModelError(
            f"a UNet with {unet.get('in_channels')} input channels (inpainting or depth) is not supported yet",
            source=str(path), hint="Pick a text-to-image Stable Diffusion model.")
    if unet.get("addition_embed_type") or unet.get("class_embed_type"):
        raise UnsupportedModelError("UNets with added conditioning (SDXL-style) are not supported yet",
                                    source=str(path), hint="Pick a Stable Diffusion 1.x/2.x model.")
    context = unet.get("cross_attention_dim")
    if not isinstance(context, int):
        raise UnsupportedModelError("per-block cross_attention_dim is not supported", source=str(path))
    if text.get("hidden_size") != context:
        raise UnsupportedModelError(
            f"text encoder width {text.get('hidden_size')} does not match the UNet's context {context}",
            source=str(path), hint="The source's text encoder and UNet do not belong together.")
    if batch_size not in (1, 2):
        raise OptionsError(f"--batch-size must be 1 or 2, not {batch_size}",
                           hint="Use 2 for classifier-free guidance (the default) or 1.")
    sample = unet.get("sample_size", 64)
    h, w = latent_size or ((sample, sample) if isinstance(sample, int) else tuple(sample))
    factor = 2 ** (len(vae.get("block_out_channels", [0])) - 1)
    down = 2 ** (len(unet.get("block_out_channels", [0])) - 1)
    for value in (h, w):
        if value < 1 or value % down:
            raise OptionsError(f"latent size {h}x{w} must be positive multiples of {down} for this UNet",
                               hint=f"Pick a latent size divisible by {down}.")
    tokenizer_dir = path / "tokenizer"
    seq = text.get("max_position_embeddings", 77)
    if (tokenizer_dir / "tokenizer_config.json").is_file():
        seq = int(_read_config(path, "tokenizer", "tokenizer_config.json").get("model_max_length", seq))
        seq = min(seq, text.get("max_position_embeddings", seq))
    safety = 224
    if (path / "feature_extractor" / "preprocessor_config.json").is_file():
        crop = _read_config(path, "feature_extractor", "preprocessor_config.json").get("crop_size", 224)
        safety = crop.get("height", 224) if isinstance(crop, dict) else int(crop)
    return Geometry(batch_size=batch_size, latent_height=int(h), latent_width=int(w),
                    latent_channels=unet.get("in_channels", 4), vae_scale_factor=factor,
                    context_dim=context, sequence_length=int(seq), safety_image_size=int(safety),
                    vocab_size=int(text.get("vocab_size", 49408)))
