"""The options of a conversion and of a job, each declared once.

Three groups, each a frozen dataclass validated when it is made (an inconsistent value raises OptionsError
with a one-line hint, before any work):

- :class:`ConvertOptions`: what the engine makes (attention layouts, palettization, components, sizes,
  deployment target, UNet chunks);
- :class:`SourceOptions`: what the source is combined with (``--vae``, ``--refiner``; a ControlNet's ``--base``);
- :class:`JobOptions`, both of those plus what a job adds: where it publishes, with which visibility, and
  the commits of its extra repos, pinned when the job is recorded.

Every field is declared with :func:`workers.declare.option`: its default, its help text, where users set it (``CONVERT``:
the ``convert`` command; ``JOB``: ``submit``, ``watch add``, the HTTP API and the watch list), how a command
line spells it, and whether it is part of a job's dedupe key.  The CLI's typer options
(``service/cli/options.py``), the API's request and response schemas (``service/api/schemas.py``), the job
row's stored options and the engine's options are all derived from these declarations: a new option is one
field here, plus what it does.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass
from typing import Any

from workers.components import COMPONENTS, depends_on_attention
from workers.declare import CONVERT, JOB, Options, field_default, internal, option
from workers.errors import OptionsError
from workers.source.lora import MAX_LORAS, hub_parts, parse_lora
from workers.source.provenance import lora_text
from workers.names import (
    MAX_NAMESPACE,
    MAX_REPO_ID,
    Attention,
    looks_like_repo_id,
    parse_size,
    size_name,
    valid_namespace,
)
from workers.validate.thresholds import ValidationBars

DEFAULT_ATTENTIONS: tuple[Attention, ...] = (Attention.ORIGINAL, Attention.SPLIT_EINSUM_V2)

DEFAULT_BITS = 6
MAX_RESOLUTIONS = 8  # extra image sizes a job converts


def _empty_to_none(value: Any) -> Any:
    return value or None


def _bits(value: Any) -> Any:
    """``--bits`` as users give it: a width (a number, or its text), 0 or nothing for none, or a mixed-bit target
    (``mixed:4.5``, ``mixed:psnr=40``, kept as text and checked with the other options)."""
    if isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").isdigit():
            return int(text) or None
        return text or None
    return value or None


def _pair(value: Any) -> tuple[int, int] | None:
    return tuple(value) if value is not None and any(value) else None


def _components(value: Any) -> tuple[str, ...] | None:
    return tuple(value) if value else None


def _sizes(value: Any) -> tuple[str, ...]:
    return tuple(value) if value else ()


def _layout_order(attention: Attention) -> int:
    return list(Attention).index(attention)


def _layout(value: Any) -> Attention | None:
    """The layout a name (or layout) means, or None."""
    try:
        return Attention(value)
    except (ValueError, TypeError):
        return None



def _resolutions(values: Any) -> tuple[str, ...]:
    """``--resolution``'s sizes as ``<W>x<H>`` texts, without repeats, smallest first (so equal requests key
    equal); refuses what is not a size, and more than :data:`MAX_RESOLUTIONS`.  Whether the model can take
    them is :func:`workers.convert.geometry.check_resolutions`'s to say."""
    values = (values,) if isinstance(values, str) else tuple(values or ())
    sizes = []
    for value in values:
        size = parse_size(value) if isinstance(value, str) else None
        if size is None:
            raise OptionsError(f"--resolution {str(value)[:32]!r} is not an image size",
                               hint="Give width x height in pixels, like 512x768 (several comma-separated).")
        if size not in sizes:
            sizes.append(size)
    if len(sizes) > MAX_RESOLUTIONS:
        raise OptionsError(f"--resolution lists {len(sizes)} sizes; a job converts at most {MAX_RESOLUTIONS}",
                           hint="Split them over several jobs.")
    return tuple(size_name(s) for s in sorted(sizes, key=lambda s: (s[0] * s[1], s)))


def _loras(values: Any) -> tuple[str, ...]:
    """``--lora``'s references as normalised ``REF:SCALE`` texts, in the order given, at most :data:`MAX_LORAS`."""
    values = (values,) if isinstance(values, str) else tuple(values or ())
    if len(values) > MAX_LORAS:
        raise OptionsError(f"--lora lists {len(values)} LoRAs; a conversion fuses at most {MAX_LORAS}",
                           hint="Fuse fewer LoRAs.")
    return tuple(lora_text(*parse_lora(v)) for v in values)


@dataclass(frozen=True, kw_only=True)
class ConvertOptions(Options):
    """What a conversion makes.  ``bits=None`` makes float16 packages only."""

    attentions: tuple[Attention, ...] = option(
        DEFAULT_ATTENTIONS, flag="--attention", cli="comma", keyed="always", max_length=8,
        help="Attention layouts (comma-separated on a command line): original (Mac GPU), split_einsum_v2 (Neural Engine), "
             "split_einsum (Neural Engine, the layout older apps ask for).")
    bits: int | str | None = option(
        DEFAULT_BITS, keyed="always", from_user=_bits, max_length=24,
        help="Palettization bits: 1, 2, 4, 6 or 8; mixed:4.5 (each layer its own width, 4.5 bits per weight on "
             "average) or mixed:psnr=40 (the smallest such recipe predicted to reach 40 dB), into a -mixed-bit "
             "repo; 0 (or null) for float16 packages only.")
    group_size: int = option(0, surfaces={CONVERT},
                             help="One palette per this many output channels (palettized packages then need "
                                  "iOS18/macOS15); 0: one per tensor, as Apple's.")
    # keyed always: every job recorded before the option was declared has it (as null) in its key
    components: tuple[str, ...] | None = option(
        None, surfaces={CONVERT}, keyed="always", cli="comma", from_user=_components,
        help="Components (comma-separated; default: all the source has): " + ",".join(COMPONENTS) + ".")
    latent_size: tuple[int, int] | None = option(None, surfaces={CONVERT}, cli="pair", metavar="H W",
                                                 from_user=_pair,
                                                 help="Latent height and width (default: the UNet's sample_size).")
    resolutions: tuple[str, ...] = option(
        (), flag="--resolution", cli="comma", metavar="WxH", max_length=MAX_RESOLUTIONS, from_user=_sizes,
        help="Also convert at these image sizes, width x height in pixels (comma-separated on a command line, e.g. "
             "512x768,768x512; at most 8): each is a variant of its own, <layout>/<W>x<H>, its weights shared with "
             "the native size's.")
    batch_size: int = option(2, surfaces={CONVERT}, help="UNet batch: 2 for classifier-free guidance, or 1.")
    unet_batch_one: bool = option(False, cli="switch",
                                  help="UNets (and ControlledUnets) of batch one instead of two, for models run "
                                       "without classifier-free guidance (SDXL Turbo, LCM); the same as "
                                       "--batch-size 1.")
    deployment_target: str | None = option(
        None, max_length=16, from_user=_empty_to_none,
        help="Minimum OS of every package: iOS15-iOS18 or macOS12-macOS15 (default: float16 macOS13/iOS16, "
             "palettized iOS17/macOS14).")
    chunk_unet: bool = option(False, cli="switch", help="Also ship each float16 UNet cut in two "
                                                        "(UnetChunk1/UnetChunk2), for iPhone and iPad.")
    chunks_only: bool = option(False, cli="switch", help="Ship the UNet chunks instead of the whole float16 UNet "
                                                         "(implies --chunk-unet).")
    controlled_unet: bool = option(False, cli="switch", help="SD 1.x/2.x: also ship a UNet that takes ControlNet "
                                                             "residuals (ControlledUnet), for ControlNets made with --base.")
    seed: int = internal(0, keyed="set", help="Seed of the trace and check inputs")
    bars: ValidationBars = internal(ValidationBars(), load=ValidationBars.from_dict,
                                    help="The validation bars (the service's settings)")
    # Apple's PALETTIZE_MIN_SIZE (workers.compress.sensitivity.MIN_WEIGHTS); tiny test models set it lower
    mixed_min_weights: int = internal(100_000, help="Layers of at most this many weights stay float16 in a "
                                                    "mixed-bit recipe")
    # where mixed-bit analyses are kept by the weights' commits and read back (workers.compress.mixed); None: none
    analyses: str | None = internal(None, help="Folder of stored mixed-bit analyses (the service's scratch folder)")
    lean: bool | None = internal(None, help="Memory-lean UNet conversion (workers.convert.lean); None: when its "
                                            "weights are safetensors; False: the float32 path")

    def __post_init__(self) -> None:
        self._check_conversion()

    def _check_conversion(self) -> None:
        values = self.attentions if isinstance(self.attentions, (tuple, list)) else (self.attentions,)
        if not values:
            raise OptionsError("no attention layout selected", hint="Pass --attention original,split_einsum_v2.")
        layouts = [_layout(a) for a in values]
        unknown = [str(a)[:32] for a, layout in zip(values, layouts) if layout is None]
        if unknown:
            raise OptionsError(f"unknown attention layouts: {', '.join(unknown[:8])}",
                               hint=f"Use {', '.join(a.value for a in Attention)}.")
        object.__setattr__(self, "attentions", tuple(sorted(set(layouts), key=_layout_order)))
        self.target(palettized=False)
        object.__setattr__(self, "bits", _bits(self.bits))
        if isinstance(self.bits, str):
            from workers.compress.recipe import parse_target

            object.__setattr__(self, "bits", parse_target(self.bits).label)  # one spelling per target
        if self.bits is not None:
            from workers.compress.palettize import check_bits  # numpy: loaded only when options are made

            # a mixed-bit recipe's widths run where 6 bits do (iOS 17 / macOS 14 and up)
            check_bits(self.uniform_bits or 6, self.target(palettized=True), self.group_size)
        elif self.group_size:
            raise OptionsError("--group-size needs palettized packages, and --bits 0 makes none",
                               hint="Pass --bits 6 (or another width), or drop --group-size.")
        if self.chunks_only and not self.chunk_unet:
            raise OptionsError("--chunks-only needs --chunk-unet", hint="Pass --chunk-unet --chunks-only.")
        if self.components is not None:
            unknown = sorted(set(self.components) - set(COMPONENTS))
            if unknown:
                raise OptionsError(f"unknown components: {', '.join(unknown)}",
                                   hint=f"Choose from {', '.join(COMPONENTS)}.")
            object.__setattr__(self, "components", tuple(c for c in COMPONENTS if c in self.components))
            if self.chunk_unet and "unet" not in self.components:
                raise OptionsError("--chunk-unet needs the unet component", hint="Add unet to --components.")
            if "controlled_unet" in self.components:
                object.__setattr__(self, "controlled_unet", True)
        if self.latent_size is not None:
            object.__setattr__(self, "latent_size", tuple(self.latent_size))
        object.__setattr__(self, "resolutions", _resolutions(self.resolutions))
        if self.batch_size not in (1, 2):
            raise OptionsError(f"--batch-size must be 1 or 2, not {self.batch_size}",
                               hint="Use 2 for classifier-free guidance (the default) or 1.")
        if self.unet_batch_one or self.batch_size == 1:  # one choice, two spellings: both say it
            object.__setattr__(self, "batch_size", 1)
            object.__setattr__(self, "unet_batch_one", True)

    @property
    def uniform_bits(self) -> int | None:
        """The one width every palettized weight gets; None for float16 only or a mixed-bit target."""
        return self.bits if isinstance(self.bits, int) else None

    @property
    def mixed(self):
        """The mixed-bit target (:class:`workers.compress.recipe.Target`), or None."""
        if not isinstance(self.bits, str):
            return None
        from workers.compress.recipe import parse_target

        return parse_target(self.bits)

    def target(self, *, palettized: bool, xl: bool = False) -> str:
        """The deployment target of float16 or palettized packages (of an SDXL pipeline with ``xl``);
        raises OptionsError for unknown ones, or ones older than the packages need."""
        from workers.convert.targets import target_for

        return target_for(self.deployment_target, palettized=palettized, group_size=self.group_size, xl=xl)

    def record(self, *, xl: bool = False) -> dict[str, Any]:
        """The options as a conversion report records them, with the targets they give."""
        recorded = ConvertOptions.to_dict(self, [f.name for f, _ in ConvertOptions.declared()])
        recorded["targets"] = {"float16": self.target(palettized=False, xl=xl),
                               "palettized": self.target(palettized=True, xl=xl)}
        return recorded


@dataclass(frozen=True, kw_only=True)
class SourceOptions(Options):
    """What the source is combined with: another VAE, an SDXL refiner's UNet, a ControlNet's base pipeline (a Hub
    repo or a folder each)."""

    vae: str | None = option(None, metavar="REPO", max_length=MAX_REPO_ID, too_long="is not a Hub repo id",
                             from_user=_empty_to_none,
                             help="Convert this VAE (a Hub repo or folder with an AutoencoderKL at its root or in "
                                  "vae/) instead of the source's, e.g. a float16-safe SDXL VAE (then converted in "
                                  "float16).")
    refiner: str | None = option(None, metavar="REPO", max_length=MAX_REPO_ID, too_long="is not a Hub repo id",
                                 from_user=_empty_to_none,
                                 help="SDXL: also ship this refiner's UNet (UnetRefiner) in the base's repos.")

    base: str | None = option(None, metavar="REPO", max_length=MAX_REPO_ID, too_long="is not a Hub repo id",
                              from_user=_empty_to_none,
                              help="A ControlNet source: the SD 1.x/2.x pipeline (Hub repo or folder) it is used "
                                   "with; its configs give the sizes, and must match the ControlNet's.")

    checkpoint: str | None = option(None, metavar="FILE", max_length=MAX_REPO_ID, too_long="is not a file name",
                                    from_user=_empty_to_none,
                                    help="A repo or folder of single-file checkpoints: the one to convert "
                                         "(needed when it holds several).")
    config: str | None = option(None, metavar="REPO", max_length=MAX_REPO_ID, too_long="is not a Hub repo id",
                                from_user=_empty_to_none,
                                help="A single-file checkpoint: unpack it with this diffusers pipeline's configs "
                                     "(Hub repo or folder) instead of its architecture's canonical ones.")

    loras: tuple[str, ...] = option((), flag="--lora", cli="repeat", metavar="REF[:SCALE]", max_length=MAX_LORAS,
                                    from_user=_loras,
                                    help="Fuse this LoRA into the weights before converting (the flag once per LoRA, "
                                         "at most 8): a Hub repo (org/name, or org/name/FILE for one "
                                         "of its files), a folder or a file, each with its scale (default 1), in the "
                                         "kohya / A1111 or diffusers / PEFT format.")

    EXTRAS: typing.ClassVar[tuple[str, ...]] = ("vae", "refiner", "base", "config")

    def __post_init__(self) -> None:
        self._check_sources()

    def _check_sources(self) -> None:
        for name in self.EXTRAS:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise OptionsError(f"--{name} must name a Hub repo or a folder", hint=f"Pass --{name} org/name.")
        if self.base is not None and (self.vae is not None or self.refiner is not None):
            raise OptionsError("--base is for a ControlNet source, which takes no --vae or --refiner",
                               hint="Drop --vae and --refiner, or drop --base for a pipeline source.")
        object.__setattr__(self, "loras", _loras(self.loras))
        if self.base is not None and self.loras:
            raise OptionsError("--lora is for pipeline sources, and --base makes this a ControlNet one",
                               hint="Drop --lora, or drop --base.")
        if self.base is not None and (self.checkpoint is not None or self.config is not None):
            raise OptionsError("--base is for a ControlNet source, and --checkpoint and --config for a single-file "
                               "one", hint="Drop --base, or drop --checkpoint and --config.")
        if self.checkpoint is not None and (not isinstance(self.checkpoint, str) or "/" in self.checkpoint
                                            or self.checkpoint.startswith(".") or not self.checkpoint.strip()):
            raise OptionsError(f"--checkpoint {str(self.checkpoint)[:100]!r} is not a file at the top of the source",
                               hint="Pass the checkpoint's file name, e.g. --checkpoint model.safetensors.")


def _sha(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 40 and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True, kw_only=True)
class JobOptions(SourceOptions, ConvertOptions):
    """What a job produces and where it publishes; normalised so that equal requests compare (and key) equal."""

    namespace: str = option(surfaces={JOB}, keyed="always", user_default=None, max_length=MAX_NAMESPACE,
                            too_long="is not a valid Hub namespace",
                            help="Where to publish (default: the service's, COREML_PUBLISH_DEFAULT_NAMESPACE).")
    private: bool | None = option(None, surfaces={JOB}, keyed="always", flag="--private/--public", cli="either",
                                  help="Publish private or public repos (default: as the source repo is).")
    packages_only: bool = option(False, surfaces={JOB}, keyed="always", cli="switch",
                                 help="Publish .mlpackage files only (no macOS worker needed).")
    vae_sha: str | None = internal(None, keyed="set", help="The --vae repo's commit (pinned when recorded)")
    refiner_sha: str | None = internal(None, keyed="set", help="The --refiner repo's commit (pinned when recorded)")
    base_sha: str | None = internal(None, keyed="set", help="The --base repo's commit (pinned when recorded)")
    config_sha: str | None = internal(None, keyed="set", help="The --config repo's commit (pinned when recorded)")
    lora_shas: tuple[str | None, ...] = internal((), keyed="set", load=tuple,
                                                 help="The --lora repos' commits, in their order (pinned when "
                                                      "recorded)")

    def __post_init__(self) -> None:
        if not self.namespace:
            raise OptionsError("no namespace to publish under",
                               hint="Pass --namespace, or set COREML_PUBLISH_DEFAULT_NAMESPACE.")
        if not valid_namespace(self.namespace):
            name = str(self.namespace)
            raise OptionsError(f"{name[:40] + '…' if len(name) > 40 else name!r} is not a valid Hub namespace",
                               hint="Use 1-96 ASCII letters, digits, '-', '_' or '.', not starting or ending "
                                    "with '-' or '.', without '--' or '..' (e.g. your user or org name).")
        self._check_conversion()
        self._check_sources()
        if self.base is not None and self.controlled_unet:
            raise OptionsError("--controlled-unet is for a pipeline source, and --base makes this a ControlNet one",
                               hint="Submit the base pipeline with --controlled-unet, and the ControlNet with --base.")
        for name in self.EXTRAS:
            value = getattr(self, name)
            if value is not None and (not looks_like_repo_id(value) or "/" not in value):
                raise OptionsError(f"--{name} {str(value)[:100]!r} is not a Hub repo id",
                                   hint=f"Jobs take --{name} as org/name (convert takes local folders too).")
            sha = getattr(self, f"{name}_sha")
            if sha is not None and (value is None or not _sha(sha)):
                raise OptionsError(f"{name}_sha {str(sha)[:60]!r} is not the commit sha of a --{name} repo",
                                   hint=f"Leave {name}_sha out: it is pinned when the job is recorded.")
        for lora in self.loras:
            if hub_parts(lora.rpartition(":")[0]) is None or lora.startswith((".", "/", "~")):
                raise OptionsError(f"--lora {lora[:100]!r} is not a Hub repo",
                                   hint="Jobs take --lora as org/name[/FILE][:SCALE] (convert takes local ones too).")
        if self.lora_shas and (len(self.lora_shas) != len(self.loras) or not all(map(_sha, self.lora_shas))):
            raise OptionsError("lora_shas must be the commit shas of the --lora repos, one each",
                               hint="Leave lora_shas out: they are pinned when the job is recorded.")

    def pinned(self, shas: dict[str, str | None]) -> "JobOptions":
        """These options with the ``--vae``/``--refiner``/``--base`` commits (by kind: ``{"vae": sha}``) filled in, so the
        job converts, and is deduplicated by, exactly those commits."""
        pins = {f"{kind}_sha": shas.get(kind) for kind in self.EXTRAS if getattr(self, kind) is not None}
        if self.loras:
            pins["lora_shas"] = tuple(shas.get(f"lora{i}") for i in range(len(self.loras)))
        return dataclasses.replace(self, **pins)

    def stored(self) -> dict[str, Any]:
        """The options as a job row and the API show them: every option of a job (those users set, and the pinned
        commits), the ones always keyed, and any other that is set."""
        own = set(JobOptions.__annotations__)
        names = [f.name for f, declared in self.declared()
                 if JOB in declared.surfaces or f.name in own or declared.keyed == "always"
                 or (declared.keyed == "set" and getattr(self, f.name) != field_default(f))]
        return self.to_dict(names)

    def conversion(self, **changes: Any) -> ConvertOptions:
        """The engine's options of this job (``changes`` applied: a part's layouts and components)."""
        values = {f.name: getattr(self, f.name) for f, _ in ConvertOptions.declared()}
        return ConvertOptions(**(values | changes))

    def parts(self) -> list[str]:
        """Independent conversion parts, fanned out to workers: the shared components, then one per layout (a
        ControlNet, ``--base``, has only the latter)."""
        wanted = set(self.components) if self.components else None
        parts = []
        if self.base is None and (wanted is None or any(not depends_on_attention(c) for c in wanted)):
            parts.append("shared")
        if wanted is None or any(depends_on_attention(c) for c in wanted):
            parts += [f"unet-{a.value}" for a in self.attentions]
        return parts
