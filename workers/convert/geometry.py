"""The sizes of a pipeline: every shape the specs need, read from a source folder's configs (no torch).

``read_geometry`` also refuses what the specs cannot describe (inpainting UNets, class conditioning,
mismatched text encoders), malformed config values and sizes no Stable Diffusion model has, before any
module is built (the checks are in :mod:`workers.source.configs`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterable

from workers.source.config_checks import check_configs, largest_activation
from workers.source.configs import MAX_ACTIVATION_BYTES
from workers.errors import OptionsError, SourceError
from workers.names import parse_size, size_name


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
    # SDXL (see workers.source.configs.SourceSizes): 0 for SD 1.x/2.x
    text_encoder_dim: int = 0  # hidden width of text_encoder (0: none, an SDXL refiner)
    text_encoder_2_dim: int = 0
    text_embeds_dim: int = 0  # the UNet's ``text_embeds`` input
    time_ids: int = 0  # the UNet's ``time_ids`` input: 6 (base) or 5 (refiner)
    vae_precision: str = "float16"  # "float32" for a VAE that overflows in float16 (the original SDXL one)
    refiner_context_dim: int = 0  # an SDXL refiner shipped beside the base (its UNet's context, pooled width and
    refiner_text_embeds_dim: int = 0  # time_ids); 0: none
    refiner_time_ids: int = 0
    # the UNet's down-path outputs a ControlNet adds to, as (channels, downsampling), the mid block last
    # (:func:`workers.source.config_checks.residual_levels`): the ControlledUnet's and ControlNet's residuals
    residuals: tuple[tuple[int, int], ...] = ()
    down_factor: int = 8  # the UNet's total downsampling: latent sides are multiples of it

    @property
    def size_step(self) -> int:
        """The pixels every side of an image size must be a multiple of (64 for SD)."""
        return self.down_factor * self.vae_scale_factor

    def at_size(self, size: tuple[int, int]) -> "Geometry":
        """This geometry at another image size (width, height in pixels)."""
        return replace(self, latent_height=size[1] // self.vae_scale_factor,
                       latent_width=size[0] // self.vae_scale_factor)

    @property
    def image_size(self) -> tuple[int, int]:
        """(width, height) of the images, in pixels."""
        return self.image_width, self.image_height

    def __post_init__(self) -> None:  # read back from a report's JSON, the pairs are lists
        object.__setattr__(self, "residuals", tuple(tuple(pair) for pair in self.residuals))

    def residual_shapes(self) -> list[tuple[int, int, int, int]]:
        """The shape of each ``additional_residual_<i>``: (batch, channels, h, w) at that point of the UNet."""
        return [(self.batch_size, c, self.latent_height // f, self.latent_width // f) for c, f in self.residuals]

    @property
    def xl(self) -> bool:
        return self.time_ids > 0

    @property
    def image_height(self) -> int:
        return self.latent_height * self.vae_scale_factor

    @property
    def image_width(self) -> int:
        return self.latent_width * self.vae_scale_factor

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def read_geometry(path: Path, *, latent_size: tuple[int, int] | None = None,
                  batch_size: int = 2) -> Geometry:
    """Derive the geometry from a source folder's configs, each value checked (see :mod:`workers.source.configs`).

    Latent size defaults to ``unet.config.sample_size``; the VAE scale factor is
    ``2 ** (len(vae.config.block_out_channels) - 1)``.
    Raises OptionsError, SourceError, UnsupportedModelError.
    """
    sizes = check_configs(path)
    if batch_size not in (1, 2):
        raise OptionsError(f"--batch-size must be 1 or 2, not {batch_size}",
                           hint="Use 2 for classifier-free guidance (the default) or 1.")
    down = sizes.down_factor
    if latent_size is None:
        h, w = sizes.sample
        if h % down or w % down:
            raise SourceError(f"unet/config.json: sample_size {h}x{w} is not a multiple of {down}, the UNet's "
                              "downsampling", source=str(path),
                              hint=f"Pass --latent-size with sides divisible by {down}, or fix unet/config.json.")
    else:
        if len(latent_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in latent_size):
            raise OptionsError(f"--latent-size must be two integers, not {latent_size!r}",
                               hint=f"Pick a latent size like 64 64 (divisible by {down}).")
        h, w = latent_size
    for value in (h, w):
        if value < 1 or value % down:
            raise OptionsError(f"latent size {h}x{w} must be positive multiples of {down} for this UNet",
                               hint=f"Pick a latent size divisible by {down}.")
    needed, where = largest_activation(sizes, (h, w), batch_size)
    if needed > MAX_ACTIVATION_BYTES:  # only an override can get here: the configs' own size was checked
        raise OptionsError(f"--latent-size {h}x{w} makes one activation ({where}) of {needed / 1e9:,.0f} GB; the "
                           f"limit is {MAX_ACTIVATION_BYTES / 1e9:.0f} GB",
                           hint=f"Pick a smaller latent size (this source's own is {sizes.sample[0]}x{sizes.sample[1]}).")
    return Geometry(batch_size=batch_size, latent_height=h, latent_width=w, latent_channels=sizes.latent_channels,
                    vae_scale_factor=sizes.vae_scale_factor, context_dim=sizes.context_dim,
                    sequence_length=sizes.sequence_length, safety_image_size=sizes.safety_image_size,
                    vocab_size=sizes.vocab_size, text_encoder_dim=sizes.text_widths[0],
                    text_encoder_2_dim=sizes.text_widths[1], text_embeds_dim=sizes.text_embeds_dim,
                    time_ids=sizes.time_ids, vae_precision="float32" if sizes.vae_float32 else "float16",
                    refiner_context_dim=sizes.refiner[0], refiner_text_embeds_dim=sizes.refiner[1],
                    refiner_time_ids=sizes.refiner[2], residuals=sizes.residuals,
                    down_factor=sizes.down_factor)


def check_resolutions(resolutions: Iterable[str], *, native: tuple[int, int], step: int) -> list[tuple[int, int]]:
    """The extra image sizes (width, height) of ``--resolution`` a model whose native image is ``native``
    (width, height in pixels) can be converted at: each side a multiple of ``step`` (the UNet's downsampling
    times the VAE's factor: 64 px for SD) and at most twice the native side.  The native size itself is no extra
    size (it is always converted).  Raises OptionsError naming the size and the limit."""
    sizes = []
    for text in resolutions:
        size = parse_size(text)
        if size is None:
            raise OptionsError(f"--resolution {str(text)[:32]!r} is not an image size",
                               hint="Give width x height in pixels, like 512x768.")
        if size == native:
            continue
        for side, value, limit in (("width", size[0], native[0]), ("height", size[1], native[1])):
            if value % step:
                raise OptionsError(f"--resolution {size_name(size)}: the {side} {value} px is not a multiple of "
                                   f"{step} px, what this model's UNet and VAE downsample by",
                                   hint=f"Pick sides divisible by {step}, like {size_name(_nearest(size, step))}.")
            if value > 2 * limit:
                raise OptionsError(f"--resolution {size_name(size)}: the {side} {value} px is more than twice the "
                                   f"model's native {limit} px ({size_name(native)}), beyond what it was trained "
                                   "for", hint=f"Keep each side at most {2 * limit} px.")
        sizes.append(size)
    return sizes


def native_image(unet: dict, vae: dict, *, source: str) -> tuple[tuple[int, int], int]:
    """From a UNet's and a VAE's ``config.json``: the native image size (width, height in pixels) and the step
    its sides come in (:func:`check_resolutions`), for checks made before a source is fetched.  Raises
    SourceError for configs without the sizes."""
    try:
        sample = unet.get("sample_size", 64)
        h, w = (sample, sample) if isinstance(sample, int) else tuple(sample)
        down, factor = 2 ** (len(unet["block_out_channels"]) - 1), 2 ** (len(vae["block_out_channels"]) - 1)
        if not all(isinstance(v, int) and v > 0 for v in (h, w, down, factor)):
            raise TypeError
    except (KeyError, TypeError, ValueError, AttributeError):
        raise SourceError("unet/config.json or vae/config.json holds no usable sample_size or block_out_channels",
                          source=source, hint="Fix the configs, or convert without --resolution.") from None
    return (w * factor, h * factor), down * factor


def _nearest(size: tuple[int, int], step: int) -> tuple[int, int]:
    return tuple(max(step, round(v / step) * step) for v in size)


def size_geometry(path: Path, geometry: Geometry, size: tuple[int, int]) -> Geometry:
    """``geometry`` at another image size (width, height in pixels, checked by :func:`check_resolutions`),
    refused when one of its activations would be too large (as the native size's is)."""
    sized = geometry.at_size(size)
    needed, where = largest_activation(check_configs(path), (sized.latent_height, sized.latent_width),
                                       geometry.batch_size)
    if needed > MAX_ACTIVATION_BYTES:
        raise OptionsError(f"--resolution {size_name(size)} makes one activation ({where}) of "
                           f"{needed / 1e9:,.0f} GB; the limit is {MAX_ACTIVATION_BYTES / 1e9:.0f} GB",
                           hint="Pick a smaller size.")
    return sized
