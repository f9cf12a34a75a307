"""A source's config files read with every value checked, before any module is built from them.

Each value the conversion uses is checked for its type (a clear error instead of a traceback deep in
diffusers) and a sane range; :mod:`workers.source.config_checks` checks the configs as a whole and estimates
the sizes they describe (parameters per component, the largest activation), refused far beyond any Stable
Diffusion model instead of letting torch try to allocate terabytes.  The limits are generous: several times
SDXL, the largest model of this family.
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
# the real-valued fields the models compute with, wherever they appear in a component's config (a safety
# checker nests its text and vision configs): (lowest, highest, whether the lowest is allowed)
FLOAT_RANGES = {
    "norm_eps": (0.0, 0.1, False),  # SD: 1e-5 (UNet), 1e-6 (VAE)
    "layer_norm_eps": (0.0, 0.1, False),  # CLIP: 1e-5
    "scaling_factor": (0.0, 100.0, False),  # SD 1.x/2.x: 0.18215, SDXL: 0.13025
    "shift_factor": (-100.0, 100.0, True),
    "mid_block_scale_factor": (0.0, 100.0, False),  # SD: 1
    "dropout": (0.0, 1.0, True),
    "attention_dropout": (0.0, 1.0, True),
}


def shown(value: object) -> str:
    """A value as an error repeats it: its repr, cut to 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def is_number(value: object) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def entries(data: object) -> list[tuple[str, object, object]]:
    """Every (path, key, value) below a parsed JSON document, ``a.b[2]`` style (the key is the dict key, or
    the list index), walked without recursion: a config may nest deeply."""
    found: list[tuple[str, object, object]] = []
    stack: list[tuple[str, object]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            items = [(f"{path}.{k}" if path else str(k), k, v) for k, v in value.items()]
        elif isinstance(value, list):
            items = [(f"{path}[{i}]", i, v) for i, v in enumerate(value)]
        else:
            continue
        found.extend(items)
        stack.extend((where, item) for where, _, item in items)
    return found


def check_finite(data: object, *, label: str, source: str, hint: str) -> None:
    """Refuse a NaN or an infinity anywhere in a config (JSON's ``NaN``, ``Infinity``, or a literal like
    ``1e999`` that overflows to one): a model built from it computes NaNs, and so would the reference it
    is checked against."""
    for path, _, value in sorted(entries(data), key=lambda entry: entry[0]):
        if isinstance(value, float) and not math.isfinite(value):
            raise SourceError(f"{label}: {path} is {shown(value)}; every number in a config must be finite",
                              source=source, hint=hint)


class Config:
    """One JSON config of a source folder; its values read with a type and range check each."""

    def __init__(self, data: dict, file: str, source: str) -> None:
        self.data, self.file, self.source = data, file, source
        self.check_floats()

    def check_floats(self) -> None:
        """The fields of FLOAT_RANGES, wherever they are in the config: numbers within their range."""
        for path, value in sorted(self.fields(FLOAT_RANGES), key=lambda field: field[0]):
            low, high, low_allowed = FLOAT_RANGES[path.rsplit(".", 1)[-1]]
            if value is None:
                continue
            if not is_number(value):
                raise self.wrong(path, value, "a number")
            if value > high or value < low or (value == low and not low_allowed):
                span = f"{'from' if low_allowed else 'above'} {low:g} {'to' if low_allowed else 'up to'} {high:g}"
                raise UnsupportedModelError(
                    f"{self.file}: {path} {shown(value)} is outside the range a Stable Diffusion model uses "
                    f"({span})", source=self.source,
                    hint=f"{self.file} is damaged or not a Stable Diffusion model's; fix it or pick another source.")

    def fields(self, names: dict | set) -> list[tuple[str, object]]:
        """(path, value) of every key in ``names`` at any depth of the config."""
        return [(path, value) for path, key, value in entries(self.data) if isinstance(key, str) and key in names]

    @classmethod
    def read(cls, root: Path, component: str, name: str = "config.json") -> "Config":
        file = f"{component}/{name}"
        return cls(read_json(root / component / name, label=file, source=str(root)), file, str(root))

    def get(self, key: str, default: object = None) -> object:
        value = self.data.get(key)
        return default if value is None else value

    def wrong(self, key: str, value: object, want: str) -> SourceError:
        return SourceError(f"{self.file}: {key} must be {want}, not {shown(value)}", source=self.source,
                           hint=f"Fix {self.file} in the source: diffusers cannot build a model from it.")

    def too_large(self, key: str, value: object, high: float) -> UnsupportedModelError:
        return UnsupportedModelError(
            f"{self.file}: {key} {shown(value)} is far beyond any Stable Diffusion model (the limit is {high:,})",
            source=self.source,
            hint=f"{self.file} is damaged or not a Stable Diffusion model's; fix it or pick another source.")

    def check(self, key: str, value: object, high: float, low: int = 1) -> int:
        """``value`` (read from ``key``) as an integer from ``low`` to ``high``."""
        if is_number(value) and value > high:
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
            f"{self.file}: {key} {shown(value)} makes one activation ({where}) of {needed / 1e9:,.0f} GB; "
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
    check_finite(data, label=label, source=source, hint=hint)
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
    # the UNet's down-path outputs a ControlNet's residuals are added to: (channels, downsampling), mid block last
    residuals: tuple[tuple[int, int], ...] = ()

    @property
    def xl(self) -> bool:
        return self.time_ids > 0
