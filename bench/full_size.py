"""Benchmark: a full-size conversion, per stage and component, with wall time and peak resident memory.

    python bench/full_size.py                       # SD 1.5, then SD 2.1-base
    python bench/full_size.py --model sd15 --attention split_einsum_v2 --bits 0
    python bench/full_size.py --model sd15 --chunk-unet          # also the UNet chunks for iOS
    python bench/full_size.py --model sdxl                       # SDXL base 1.0 (2.6 B-parameter UNet)
    python bench/full_size.py --model sd15 --controlnet          # + ControlledUnet, + SD 1.5's ControlNet
    python bench/full_size.py --model sd15 --components unet --attention original --resolution 512x768

With ``--resolution`` each extra image size is converted after the native one, as a job with that option does;
the summary gives each size's time (its load, reference, convert, palettize and validate stages) as a share of
the native size's, per component, and the weight bytes it adds that are not hard links to the native packages'
(what an upload of the size sends beyond its programs).

With ``--controlnet`` the base job also converts the ControlledUnet beside the UNet (the text encoder and VAE are
left out: they are the same as without it), then SD 1.5's ControlNet (``ControlNetModel.from_unet`` of the
random UNet, 361 M parameters, its zero layers moved off zero) is converted with the random pipeline as its
``--base``; the summary gives the ControlledUnet's time and peak per variant against the plain UNet's, and the
ControlNet job's against the UNet's.

Builds, in code and with random weights, pipelines with the exact architectures of SD 1.5, SD 2.1-base and
SDXL base 1.0 (two text encoders, the float32 VAE; nothing is downloaded), saves them as diffusers folders, and runs the conversion engine on them exactly as
a worker does: both attention layouts, float16 and 6-bit palettized, every package validated against the
torch original.  The four components Apple publishes are converted (text encoder, UNet, VAE decoder and
encoder); the safety checker is left out.

Peak memory is the process's resident high-water mark (VmHWM), reset at the start of each stage, so each
stage's figure is the most the process held while that stage ran.  ``execute`` rows are the program
executor's run of one package inside its ``validate`` stage; the summary gives its share of the time and
what its peak adds to the other stages'.  Needs ~60 GB of free disk under --work
for both models and about 24 GB of RAM.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


# What differs between the two architectures; everything else (UNet blocks and widths, VAE, scheduler) is shared.
ARCHITECTURES = {
    "sd15": ("SD 1.5",
             dict(cross_attention_dim=768, attention_head_dim=8),
             dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                  hidden_act="quick_gelu", projection_dim=768)),
    "sd21-base": ("SD 2.1-base",
                  dict(cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True),
                  dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
                       hidden_act="gelu", projection_dim=512)),
}
MODELS = {name: title for name, (title, _, _) in ARCHITECTURES.items()} | {"sdxl": "SDXL base 1.0"}
XL_COMPONENTS = ("text_encoder", "text_encoder_2", "unet", "vae_decoder", "vae_encoder")


def xl_modules():
    """SDXL base 1.0's UNet, VAE, two text encoders and scheduler (stabilityai's configs), random weights."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(320, 640, 1280), transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    common = dict(vocab_size=49408, max_position_embeddings=77, bos_token_id=0, eos_token_id=2)
    text = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_attention_heads=12,
                                        num_hidden_layers=12, hidden_act="quick_gelu", projection_dim=768, **common))
    text_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=1280, intermediate_size=5120,
                                                        num_attention_heads=20, num_hidden_layers=32,
                                                        hidden_act="gelu", projection_dim=1280, **common))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), sample_size=1024, scaling_factor=0.13025, force_upcast=True,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return unet, vae, text, text_2, scheduler


def modules(model: str):
    """UNet, VAE, text encoder and scheduler of ``model``'s architecture, with random weights."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    _, unet_config, text_config = ARCHITECTURES[model]
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, **unet_config)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=0,
                                        eos_token_id=2, **text_config))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
        block_out_channels=(128, 256, 512, 512), sample_size=512,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return unet, vae, text, scheduler


class Memory:
    """The process's resident memory: current, and the high-water mark since the last reset."""

    def __init__(self) -> None:
        self.can_reset = True

    def _status(self, key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        return 0

    def peak(self) -> int:
        return self._status("VmHWM")

    def current(self) -> int:
        return self._status("VmRSS")

    def reset(self) -> None:
        if not self.can_reset:
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
        except OSError:
            self.can_reset = False  # figures become "peak so far", still an upper bound


@dataclass
class Row:
    stage: str
    component: str
    variant: str
    precision: str
    seconds: float
    peak: int


@dataclass
class Run:
    model: str
    rows: list[Row] = field(default_factory=list)
    peak: int = 0
    total: float = 0.0
    sizes: dict[str, int] = field(default_factory=dict)
    ops: dict[str, int] = field(default_factory=dict)  # float16 package -> operations in its program
    psnr: dict[str, dict[str, float]] = field(default_factory=dict)  # package -> its checks' figures (dB)
    source_bytes: int = 0
    build_seconds: float = 0.0
    passed: bool = False
    failures: list[str] = field(default_factory=list)
    controlnet_total: float = 0.0  # the ControlNet job's wall time (--controlnet)
    new_weight_bytes: dict[str, int] = field(default_factory=dict)  # extra size -> weight bytes not shared


def build(model: str, folder: Path, seed: int = 0) -> None:
    """Write a full-size random pipeline with ``model``'s architecture to ``folder``."""
    import torch

    from workers.devtools.tiny import randomize_norms, save_pipeline, save_xl_pipeline

    torch.manual_seed(seed)
    title = MODELS[model]
    if model == "sdxl":
        unet, vae, text, text_2, scheduler = xl_modules()
        randomize_norms(unet, vae, text, text_2)
        save_xl_pipeline(folder, unet=unet, vae=vae, text_encoder=text, text_encoder_2=text_2, scheduler=scheduler,
                         title=f"Random {title} pipeline")
        return
    unet, vae, text, scheduler = modules(model)
    randomize_norms(unet, vae, text)
    save_pipeline(folder, unet=unet, vae=vae, text_encoder=text, scheduler=scheduler,
                  title=f"Random {title} pipeline", license="creativeml-openrail-m")


def build_controlnet(base: Path, folder: Path, seed: int = 1) -> None:
    """SD 1.5's ControlNet for the random pipeline at ``base``: diffusers' ``from_unet`` (its default conditioning
    embedding, as the published SD 1.5 ControlNets), with the zero-initialised layers given random weights."""
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from workers.devtools.tiny import wake_controlnet

    torch.manual_seed(seed)
    controlnet = ControlNetModel.from_unet(UNet2DConditionModel.from_pretrained(str(base), subfolder="unet"))
    wake_controlnet(controlnet, weight_std=0.02, bias=0.01).save_pretrained(folder, safe_serialization=True)


def run_model(model: str, work: Path, attentions: tuple, bits: int | None, memory: Memory,
              chunk_unet: bool = False, controlnet: bool = False, components: tuple[str, ...] | None = None,
              resolutions: tuple[str, ...] = ()) -> Run:
    from workers.convert.engine import convert_pipeline
    from workers.validate.report import Event
    from workers.options import ConvertOptions
    from workers.source.resolve import resolve_local

    run = Run(model)
    source_dir, out = work / f"{model}-source", work / f"{model}-out"
    shutil.rmtree(source_dir, ignore_errors=True)
    memory.reset()
    started = time.perf_counter()
    build(model, source_dir)
    run.build_seconds = time.perf_counter() - started
    run.rows.append(Row("build", "pipeline", "", "float32", run.build_seconds, memory.peak()))
    run.source_bytes = sum(p.stat().st_size for p in source_dir.rglob("*") if p.is_file())
    gc.collect()

    def on_event(event: Event) -> None:
        if event.status == "start":
            memory.reset()
        elif event.status == "done":
            run.rows.append(Row(event.stage, event.component, event.variant or "(shared)",
                                event.precision or "float32", event.seconds or 0.0, memory.peak()))
            print(f"  {event.stage:<10} {event.component:<13} {event.variant or '(shared)':<16} "
                  f"{event.precision or 'float32':<17} {event.seconds:8.1f} s {memory.peak() / 2**30:6.2f} GiB",
                  flush=True)

    source = resolve_local(source_dir, source_id=f"bench/{model}")
    components = components or (("unet", "controlled_unet") if controlnet else
                                XL_COMPONENTS if model == "sdxl" else COMPONENTS)
    options = ConvertOptions(attentions=attentions, bits=bits, chunk_unet=chunk_unet, components=components,
                             resolutions=resolutions)
    started = time.perf_counter()
    report, run.passed, run.failures = _convert(convert_pipeline, source, out, options, on_event)
    run.total = time.perf_counter() - started
    if controlnet:
        from workers.source.fetch import fetched
        from workers.source.resolve import resolve_source

        folder = work / "sd-controlnet"
        shutil.rmtree(folder, ignore_errors=True)
        memory.reset()
        started = time.perf_counter()
        build_controlnet(source_dir, folder)
        run.rows.append(Row("build", "controlnet", "", "float32", time.perf_counter() - started, memory.peak()))
        run.source_bytes += sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        gc.collect()
        started = time.perf_counter()
        with fetched(resolve_source(str(folder), source_id="bench/sd-controlnet", base=str(source_dir))) as found:
            cn_report, passed, failures = _convert(convert_pipeline, found, work / "controlnet-out",
                                                   ConvertOptions(attentions=attentions, bits=bits), on_event)
        run.controlnet_total = time.perf_counter() - started
        run.passed, run.failures = run.passed and passed, run.failures + failures
        report.packages.extend(cn_report.packages)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(work / "controlnet-out", ignore_errors=True)
    run.peak = max(r.peak for r in run.rows if r.stage != "build")  # the conversion's (building is the bench's)
    run.new_weight_bytes = _new_weight_bytes(out, report.options.get("resolutions", []))
    for package in report.packages:
        key = f"{package.repo.split('/')[-1]} {package.variant}"
        run.sizes[key] = run.sizes.get(key, 0) + package.size_bytes
        if package.precision in ("float16", "float32") and not package.shared_from and (out / package.path).exists():
            run.ops[f"{package.component} {package.variant}"] = _op_count(out / package.path)
        if not package.shared_from:
            run.psnr[f"{package.component} {package.variant or ''} {package.precision}"] = {
                c.name: c.value for c in package.checks if c.name.startswith("psnr") and c.value is not None}
    shutil.rmtree(source_dir, ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    return run


def _new_weight_bytes(out: Path, sizes: list[str]) -> dict[str, int]:
    """Per extra size: the bytes of its packages' weight files that are not the native packages' files."""
    def weights(pattern: str) -> list[Path]:
        return list(out.glob(f"*/{pattern}/packages/*.mlpackage/Data/com.apple.CoreML/weights/weight.bin"))

    native = {(p.stat().st_dev, p.stat().st_ino) for p in weights("*")}
    return {size: sum(p.stat().st_size for p in weights(f"*/{size}")
                      if (p.stat().st_dev, p.stat().st_ino) not in native) for size in sizes}


def print_sizes(run: Run) -> None:
    """Each extra size's cost against the native size's, per component (its chunks included)."""
    from workers.names import parse_size

    print("extra image sizes against the native size (load, reference, convert, palettize, validate):")
    components = sorted({r.component.removesuffix("_chunks") for r in run.rows if r.stage != "build"})
    for size, new_bytes in run.new_weight_bytes.items():
        for component in components:
            rows = [r for r in run.rows if r.component.removesuffix("_chunks") == component and r.stage != "execute"]
            sized = sum(r.seconds for r in rows if r.variant == size or r.variant.endswith(f"/{size}"))
            native = sum(r.seconds for r in rows if parse_size(r.variant.split("/")[-1]) is None)
            if sized and native:
                print(f"  {size:<10} {component:<16} {sized:7.1f} s vs native {native:7.1f} s = "
                      f"{sized / native:.2f}x")
        print(f"  {size:<10} weight bytes not shared with the native packages: {new_bytes}")


def _convert(convert_pipeline, source, out: Path, options, on_event):
    """The engine's run: (report, passed, failures), a failed validation's report kept."""
    from service.errors import ValidationError

    try:
        return convert_pipeline(source, out, options, on_event=on_event), True, []
    except ValidationError as e:
        return e.report, False, list(e.failures)


def _op_count(package: Path) -> int:
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    return sum(len(block.operations) for f in spec.mlProgram.functions.values()
               for block in f.block_specializations.values())


def print_run(run: Run, reference: dict | None) -> None:
    title = MODELS[run.model]
    print(f"\n{title}: {'passed' if run.passed else 'FAILED'}; conversion {run.total / 60:.1f} min "
          f"(+{run.build_seconds / 60:.1f} min to build the random source, {run.source_bytes / 1e9:.2f} GB); "
          f"peak RSS {run.peak / 2**30:.2f} GiB (building the source: "
          f"{next((r.peak for r in run.rows if r.stage == 'build'), 0) / 2**30:.2f} GiB)")
    for failure in run.failures:
        print(f"  failed: {failure}")
    print(f"{'stage':<10} {'component':<13} {'variant':<16} {'precision':<17} {'seconds':>8} {'peak RSS GiB':>12}")
    for r in run.rows:
        print(f"{r.stage:<10} {r.component:<13} {r.variant:<16} {r.precision:<17} {r.seconds:>8.1f} "
              f"{r.peak / 2**30:>12.2f}")
    print("per component (all its stages):")
    for component in ("pipeline",) + XL_COMPONENTS + ("controlled_unet", "controlnet"):
        rows = [r for r in run.rows if r.component == component]
        if rows:
            print(f"  {component:<13} {sum(r.seconds for r in rows):>8.1f} s  peak {max(r.peak for r in rows) / 2**30:.2f} GiB")
    executed = [r for r in run.rows if r.stage == "execute"]
    if executed:
        # validate rows include their execute row's time and (being the peak since it started) its memory
        rest = [r for r in run.rows if r.stage not in ("execute", "validate", "build")]
        seconds = sum(r.seconds for r in executed)
        others = max((r.peak for r in rest), default=0)
        top = max(r.peak for r in executed)
        print(f"program executor: {len(executed)} packages, {seconds:.1f} s = {100 * seconds / run.total:.1f} % of "
              f"the conversion; peak while executing {top / 2**30:.2f} GiB, the other stages' (load, reference, "
              f"convert, palettize) {others / 2**30:.2f} GiB: {'+' if top > others else ''}"
              f"{(top - others) / 2**30:.2f} GiB")
    print("output sizes:")
    for key, size in sorted(run.sizes.items()):
        print(f"  {key:<60} {size / 1e9:6.2f} GB")
    print("validation figures (dB; the bars are the service's defaults):")
    for key, figures in run.psnr.items():
        print(f"  {key:<48} " + "  ".join(f"{name} {value:.1f}" for name, value in figures.items()))
    print("operations in each float16 program:")
    for key, count in sorted(run.ops.items()):
        print(f"  {key:<60} {count:>6}")
    if run.controlnet_total:
        print_controlnet(run)
    if run.new_weight_bytes:
        print_sizes(run)
    if reference:
        print(f"against the reference ({reference['what']}):")
        for label, (seconds, peak) in reference["figures"].items():
            for validated in (False, True):
                ours = _ours(run, label, validated)
                if ours is None:
                    continue
                ratio = f"{ours[0] / seconds:.2f}x time" if seconds else "reference did not finish"
                print(f"  {label:<24} {'with validation' if validated else 'conversion only':<16} ours "
                      f"{ours[0] / 60:5.1f} min, {ours[1] / 2**30:5.1f} GB; reference "
                      f"{'-' if not seconds else f'{seconds / 60:.1f} min'}, {peak:.1f} GB -> {ratio}, "
                      f"{ours[1] / 2**30 / peak:.2f}x memory")


def print_controlnet(run: Run) -> None:
    """The ControlledUnet against the plain UNet, per variant and precision (its convert or palettize, reference
    and validate stages), and the ControlNet job against the UNet's share of the base job."""
    def cost(component: str, variant: str | None = None, precision: str | None = None) -> tuple[float, int]:
        rows = [r for r in run.rows if r.component == component and r.stage not in ("build", "execute")
                and (variant is None or r.variant in (variant, "(shared)"))
                and (precision is None or r.precision == precision or r.variant == "(shared)")]
        return sum(r.seconds for r in rows), max((r.peak for r in rows), default=0)

    print("ControlledUnet against the UNet (convert or palettize, validate; the shared load and reference in each):")
    variants = sorted({(r.variant, r.precision) for r in run.rows
                       if r.component == "unet" and r.variant != "(shared)" and r.stage in ("convert", "palettize")})
    for variant, precision in variants:
        (ours, ours_peak), (unet, unet_peak) = cost("controlled_unet", variant, precision), cost("unet", variant, precision)
        print(f"  {variant:<16} {precision:<17} {ours:7.1f} s vs {unet:7.1f} s = {ours / unet:.2f}x time; "
              f"peak {ours_peak / 2**30:5.2f} vs {unet_peak / 2**30:5.2f} GiB = {ours_peak / unet_peak:.2f}x")
    (ours, ours_peak), (unet, unet_peak) = cost("controlled_unet"), cost("unet")
    print(f"  {'all variants':<34} {ours:7.1f} s vs {unet:7.1f} s = {ours / unet:.2f}x time; "
          f"peak {ours_peak / 2**30:5.2f} vs {unet_peak / 2**30:5.2f} GiB = {ours_peak / unet_peak:.2f}x")
    cn, cn_peak = cost("controlnet")
    print(f"ControlNet (SD 1.5's, every layout and precision) {cn:.1f} s of stages, {run.controlnet_total:.1f} s job "
          f"vs the UNet's {unet:.1f} s = {cn / unet:.2f}x time; peak {cn_peak / 2**30:.2f} vs "
          f"{unet_peak / 2**30:.2f} GiB = {cn_peak / unet_peak:.2f}x")


# Apple's converter (python_coreml_stable_diffusion.torch2coreml) on this machine, SD 1.5 architecture,
# random weights, text encoder + UNet + VAE decoder + encoder: (seconds, peak GB); 0 s = killed (out of memory)
REFERENCE = {"what": "Apple's torch2coreml, same machine, 4 components",
             "figures": {"ORIGINAL float16": (234.0, 8.8), "ORIGINAL 6-bit": (448.0, 8.8),
                         "SPLIT_EINSUM_V2 float16": (0.0, 24.3)}}


def _ours(run: Run, label: str, validated: bool) -> tuple[float, int] | None:
    """Our time and peak for the work the reference label covers (shared components counted once).

    Without validation: loading, converting and palettizing only, which is what the reference did.
    """
    layout, precision = label.split()
    variant = layout.lower()
    stages = {"load", "convert", "palettize"} | ({"reference", "validate"} if validated else set())
    rows = [r for r in run.rows if r.variant in (variant, "(shared)") and r.stage in stages]
    if precision == "float16":
        rows = [r for r in rows if r.precision in ("float16", "float32")]
    if not rows or not any(r.variant == variant for r in rows):
        return None
    return sum(r.seconds for r in rows), max(r.peak for r in rows)


def main() -> None:
    from workers.names import Attention

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd15,sd21-base", help="comma-separated: sd15, sd21-base, sdxl")
    parser.add_argument("--attention", default="original,split_einsum_v2", help="comma-separated layouts")
    parser.add_argument("--bits", type=int, default=6, help="palettization bits; 0 for float16 only")
    parser.add_argument("--chunk-unet", action="store_true", help="also cut each float16 UNet into two chunks")
    parser.add_argument("--controlnet", action="store_true",
                        help="SD 1.x/2.x: the UNet and the ControlledUnet only, then the model's ControlNet")
    parser.add_argument("--components", default=None, help="comma-separated components (default: Apple's four)")
    parser.add_argument("--resolution", default="", help="comma-separated extra image sizes, WxH in pixels")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        sys.exit(f"error: unknown model {', '.join(unknown)}; choose from {', '.join(MODELS)}")
    attentions = tuple(Attention(a.strip().lower()) for a in args.attention.split(","))
    work = args.work or Path(tempfile.mkdtemp(prefix="full-size-"))
    work.mkdir(parents=True, exist_ok=True)
    memory = Memory()
    runs = []
    for model in models:
        print(f"{MODELS[model]}: building and converting in {work}", flush=True)
        if args.controlnet and model == "sdxl":
            sys.exit("error: --controlnet: SDXL ControlNets are not converted; pick sd15 or sd21-base")
        run = run_model(model, work, attentions, args.bits or None, memory, chunk_unet=args.chunk_unet,
                        controlnet=args.controlnet, resolutions=tuple(filter(None, args.resolution.split(","))),
                        components=tuple(filter(None, (args.components or "").split(","))) or None)
        runs.append(run)
        print_run(run, REFERENCE if model == "sd15" else None)
    if not memory.can_reset:
        print("note: this kernel cannot reset the peak counter; per-stage peaks are peaks so far")
    if args.json:
        args.json.write_text(json.dumps([{**r.__dict__, "rows": [x.__dict__ for x in r.rows]} for r in runs],
                                        indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
