"""The model card (README.md) of a published repo: Hub metadata, what the weights are, how to get them,
provenance, validation figures, and the upstream card carried over below ours.

The upstream card is someone else's text published under our name, so it is sanitised on the way in
(:func:`workers.package.sanitize.sanitize_markdown`): raw HTML is dropped (the text of ordinary elements kept, scripts, styles and
frames dropped whole), links and images may only point to http(s), mailto or relative targets, and fenced
code stays as it is.  Its YAML front matter is read with aliases refused (an alias bomb expands to
gigabytes) and a size bound; a license that is not a short license id becomes ``unknown``, with a warning.
"""

from __future__ import annotations

import logging
import re
from datetime import date

import yaml

from workers.package.card_controlnet import controlled_unet_section, controlnet_sections, residual_rows
from workers.package.card_mixed import mixed_section, mixed_what
from workers.package.manifest import Component, Figure, Manifest, build_manifest
from workers.source.provenance import recorded_loras
from workers.package.sanitize import sanitize_markdown
from workers.names import COMPILED_NAMES, compiled_file_name, package_file_name, variant_layout, variant_size
from workers.validate.report import PackageResult, Report, precision_bits
from workers.convert.targets import SPEC_VERSIONS, os_name

log = logging.getLogger(__name__)
TAGS = ["stable-diffusion", "text-to-image", "core-ml", "coreml-publisher"]
_VARIANT_USE = {
    "original": "attention as in the original model: fastest on Mac GPUs",
    "split_einsum": "attention split per head for the Apple Neural Engine",
    "split_einsum_v2": "attention split per head with chunked queries: best on the Neural Engine (iPhone, iPad, "
                       "Apple silicon Macs)",
}
MAX_FRONT_MATTER = 64 * 1024  # characters of upstream YAML metadata read at all
MAX_DEPTH = 32  # nesting of upstream YAML metadata
MAX_UPSTREAM = 100_000  # characters of the upstream card carried over
_LICENSE_ID = re.compile(r"[a-z0-9][a-z0-9.+-]{0,63}")  # apache-2.0, openrail++, cc-by-nc-sa-4.0, other, ...


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases: card metadata never needs them, and they are how YAML bombs work."""

    depth = 0

    def compose_node(self, parent, index):  # type: ignore[override]
        problem = "aliases are not allowed" if self.check_event(yaml.AliasEvent) else \
            "it nests too deeply" if self.depth >= MAX_DEPTH else None
        if problem:
            raise yaml.composer.ComposerError(None, None, f"{problem} in card metadata", self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def split_front_matter(text: str) -> tuple[dict, str]:
    """A card's YAML metadata and its body (empty metadata, with a warning, when it is absent or unusable)."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end > 0:
            meta: object = {}
            if end > MAX_FRONT_MATTER:
                log.warning("the upstream card's metadata is larger than %d characters: ignored", MAX_FRONT_MATTER)
            else:
                try:
                    meta = yaml.load(text[3:end], Loader=_NoAliasLoader) or {}
                except (yaml.YAMLError, RecursionError, ValueError) as e:
                    log.warning("the upstream card's metadata cannot be used (%s): ignored",
                                str(e).splitlines()[0][:200] if str(e) else e.__class__.__name__)
            return (meta if isinstance(meta, dict) else {}), text[end + 4:].lstrip("\n")
    return {}, text


def license_id(value: object) -> str | None:
    """``value`` when it is a short license id (what the Hub's ``license`` field holds); None, with a
    warning when something else was given, otherwise."""
    if isinstance(value, str) and _LICENSE_ID.fullmatch(value.strip().lower()):
        return value.strip().lower()
    if value not in (None, ""):
        log.warning("the source's license is not a short license id: treated as unknown")
    return None


def card_license(text: str) -> str | None:
    """The license a card's metadata names, or None when it names none usable."""
    return license_id(split_front_matter(text)[0].get("license"))


def zip_name(repo_name: str, variant: str) -> str:
    """``<repo-name>_<variant>_compiled.zip``: the name apps download (an extra size's variant
    ``<layout>/<W>x<H>`` gives ``<repo-name>_<layout>_<W>x<H>_compiled.zip``)."""
    return f"{repo_name}_{variant.replace('/', '_')}_compiled.zip"


def render_card(report: Report, *, kind: str, repo_id: str, sibling_id: str | None, variants: list[str],
                compiled: bool, upstream: str | None = None, today: date | None = None,
                manifest: Manifest | None = None) -> str:
    """The README.md of the float16 (``kind="float16"``) or palettized repo described by ``report``.

    ``sibling_id`` is the other repo of the pair when it is published in the same run; None (no palettized
    repo with ``--bits 0``, or its tree absent) and the card does not mention it.  The validation table is
    rendered from the repo's ``manifest`` (:mod:`workers.package.manifest`; made from the report when not given),
    so the card and ``coreml-publisher.json`` say the same.
    """
    packages = report.packages_of(report.repos[kind])
    manifest = manifest or build_manifest(report, None, kind=kind, name=report.repos[kind], repo_id=repo_id,
                                          variants=variants, compiled=compiled,
                                          zips={v: zip_name(repo_id.split("/")[-1], v) for v in variants})
    base = report.source.get("repo_id")
    label = f"[{base}](/{base})" if base else f"`{report.source['id']}`"  # Hub-relative links work on any Hub
    controlnet = report.pipeline == "controlnet"
    lines = _heading(report, kind, packages, label, sibling_id)
    lines += _variants_section(report.source["id"], packages, repo_id, variants, compiled, controlnet=controlnet)
    lines += _sizes_section(report, repo_id, variants, compiled)
    if controlnet:
        tags = split_front_matter(upstream)[0].get("tags") if upstream else None
        lines += controlnet_sections(report, tags if isinstance(tags, list) else None)
    else:
        lines += controlled_unet_section(report)
    if kind == "palettized":
        lines += mixed_section(report)
    lines += _provenance(report, kind, packages, label, today)
    lines += _validation(manifest)
    if controlnet:
        lines += residual_rows(packages)
    if upstream:
        lines += _upstream(upstream, label)
    return "\n".join(lines)


def _heading(report: Report, kind: str, packages: list[PackageResult], label: str,
             sibling_id: str | None) -> list[str]:
    """The Hub metadata, the title, what the weights are and where they run, the sibling repo."""
    source, options, geometry = report.source, report.options, report.geometry
    meta: dict = {"license": license_id(source.get("license")) or ("other" if not source.get("license") else "unknown")}
    if source.get("repo_id"):
        meta["base_model"] = source["repo_id"]
        if kind == "palettized":
            meta["base_model_relation"] = "quantized"
    meta["pipeline_tag"] = "text-to-image"
    xl = (geometry.get("time_ids") or 0) > 0
    controlnet = report.pipeline == "controlnet"
    meta["tags"] = TAGS + (["stable-diffusion-diffusers"] if geometry["context_dim"] == 768 else []) \
        + (["stable-diffusion-xl"] if xl else []) + (["controlnet"] if controlnet else []) \
        + (["palettized"] if kind == "palettized" else []) \
        + (["mixed-bit"] if kind == "palettized" and report.recipes else [])
    group = options.get("group_size") or 0
    palette = f", one palette per {group} output channels" if group else ""
    mixed = mixed_what(report) if kind == "palettized" else None
    what = (f"{mixed or str(options.get('bits')) + '-bit palettized weights'}{palette}{_kept(packages)}"
            if kind == "palettized" else f"float16 weights{_kept(packages, only='float32')}")
    title = "float16" if kind == "float16" else "mixed-bit" if mixed else "palettized"
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# Core ML {source['id'].split('/')[-1]} ({title})", "",
             f"{label}" + (" (a ControlNet)" if controlnet else "") + f" converted to Core ML with {what}, for "
             "Apple's Swift [`StableDiffusion`](https://github.com/apple/ml-stable-diffusion) package"
             + (" (`StableDiffusionXLPipeline`)" if xl else "") + " and the apps built on it"
             + (", beside a base model's `ControlledUnet`" if controlnet else "") + ". "
             f"Needs {os_name(repo_target(report, kind))} or later.", ""]
    if sibling_id:
        other = "palettized" if kind == "float16" else "float16"
        lines += [f"The {other} version is [{sibling_id}](/{sibling_id}).", ""]
    return lines


def _variants_section(source_id: str, packages: list[PackageResult], repo_id: str, variants: list[str],
                      compiled: bool, *, controlnet: bool = False) -> list[str]:
    """The repo's tree, what each variant is for, and how to download one."""
    repo_name = repo_id.split("/")[-1]
    lines = ["## Variants", "", "```", "README.md", "coreml-publisher.json"]
    if compiled:
        lines += [zip_name(repo_name, v) for v in variants]
    components = sorted({p.component for p in packages}, key=list(COMPILED_NAMES).index)
    for v in variants:
        lines.append(f"{v}/")
        if compiled:
            lines.append("  compiled/   " + "  ".join([compiled_file_name(c, source_id) for c in components]
                                                    + ([] if controlnet else ["merges.txt", "vocab.json"])))
        lines.append("  packages/   " + "  ".join(package_file_name(source_id, c) for c in components))
    lines += ["```", ""]
    lines += [f"- `{v}`: {_variant_use(v)}." for v in variants]
    lines.append("- `coreml-publisher.json` says all of this machine-readably: every variant and file, input and "
                 "output shapes, OS versions, validation figures, source and toolchain (`coreml-publish download` "
                 "reads it).")
    lines += [("- `compiled/` holds the compiled ControlNet, to go beside a base model's resources; " if controlnet
               else "- `compiled/` holds `.mlmodelc` resources and the tokenizer, ready for the Swift pipeline; ")
              + "`packages/` holds `.mlpackage` files for Xcode and coremltools." if compiled else
              "- `packages/` holds `.mlpackage` files for Xcode and coremltools. **Compiled resources are absent** "
              "from this repo (no macOS worker compiled them): compile with "
              "`xcrun coremlcompiler compile <package> <outdir>` on a Mac.", ""]
    if compiled and controlnet:
        lines += ["Each zip holds `controlnet/<Name>.mlmodelc` of one variant at its top, to unzip into a base "
                  "model's unzipped folder of the same variant.", ""]
    elif compiled:
        lines += ["Each zip holds one folder named like the zip, with the compiled resources of one variant: "
                  "what apps such as swift-coreml-diffusers download and unzip.", ""]
    lines += ["## Download one variant", "", "```python", "from huggingface_hub import snapshot_download, hf_hub_download", ""]
    for v in variants:
        what_dir = "compiled" if compiled else "packages"
        lines.append(f'snapshot_download("{repo_id}", allow_patterns="{v}/{what_dir}/*", local_dir="{repo_name}")')
    if compiled:
        lines.append(f'hf_hub_download("{repo_id}", "{zip_name(repo_name, variants[-1])}", local_dir="{repo_name}")')
    return lines + ["```", ""]


def _variant_use(variant: str) -> str:
    """What a variant is for: its layout's use, and its image size when it is not the native one."""
    use = _VARIANT_USE.get(variant_layout(variant).value, variant)
    size = variant_size(variant)
    return use if size is None else f"{use}; {size[0]}×{size[1]} px images (width × height)"


def _sizes_section(report: Report, repo_id: str, variants: list[str], compiled: bool) -> list[str]:
    """Every image size the repo holds, with its variants and zips (none for a repo at its native size only)."""
    sized = [v for v in variants if variant_size(v)]
    if not sized:
        return []
    g, repo_name = report.geometry, repo_id.split("/")[-1]
    native = f"{g['latent_width'] * g['vae_scale_factor']}×{g['latent_height'] * g['vae_scale_factor']}"
    lines = ["## Image sizes", "",
             "A Core ML model takes one input size, so each image size is a variant of its own: the native "
             f"{native} px in each layout's folder (Apple's paths), every other size in `<layout>/<W>x<H>/`. "
             "The weight files of a model are the same at every size (one object on the Hub, one download "
             "cache entry); only the programs differ. Pick the folder (or zip) of the size to generate at.", "",
             "| size (width × height) | variant | " + ("zip |" if compiled else "folder |"), "|---|---|---|"]
    for v in variants:
        size = variant_size(v)
        label = f"{size[0]}×{size[1]}" if size else f"{native} (native)"
        where = zip_name(repo_name, v) if compiled else f"{v}/packages/"
        lines.append(f"| {label} | `{v}` | `{where}` |")
    return lines + [""]


def _batch(options: dict) -> str:
    batch = options.get("batch_size", 2)
    return f"UNet batch {batch}" + (" (for models run without classifier-free guidance, as SDXL Turbo or LCM: "
                                    "the Swift pipeline calls it once per branch)" if batch == 1 else "")


def _provenance(report: Report, kind: str, packages: list[PackageResult], label: str,
                today: date | None) -> list[str]:
    """Where the weights come from, what converted them, for which OS and sizes, and when."""
    source, toolchain, geometry = report.source, report.toolchain, report.geometry
    target = repo_target(report, kind)
    height, width, factor = geometry["latent_height"], geometry["latent_width"], geometry["vae_scale_factor"]
    return ["## Provenance", "",
            f"- Source: {label}" + (f" at commit `{source['sha']}`" if source.get("sha") else ""),
            *_extra_sources(source),
            f"- Converter: {toolchain['converter']}; coremltools {toolchain['coremltools']}, torch "
            f"{toolchain['torch']}, diffusers {toolchain['diffusers']}, transformers {toolchain['transformers']}",
            f"- Deployment target: {target}, {os_name(target)}{_older_copies(packages, target)}; "
            f"{_batch(report.options)}, latent {height}×{width} ({width * factor}×{height * factor} px, width × "
            "height)" + (f"; also at {', '.join(report.options['resolutions'])} px" if report.options.get(
                "resolutions") else ""),
            f"- Converted: {(today.isoformat() if today else report.started_at[:10]) or date.today().isoformat()}",
            ""]


def _validation(manifest: Manifest) -> list[str]:
    """Every package's figures against its bars, and where they were measured (from the repo's manifest)."""
    rows = sorted(((v.name, c) for v in manifest.variants for c in v.components),
                  key=lambda row: (row[0], list(COMPILED_NAMES).index(row[1].component)
                                   if row[1].component in COMPILED_NAMES else len(COMPILED_NAMES)))
    lines = ["## Validation", "",
             "PSNR in dB against the torch float32 original (Apple's definition) on random inputs, with the bar "
             "each had to pass. *program*: the saved ML program itself, every operation executed with float16 "
             "activations by the converter's program executor (any OS); *torch*: the exported model with the "
             "weights read back from the package; *Core ML*: Core ML's own prediction, which only macOS can "
             "make. Every weight of the source was found in the package or shown folded as an identity.", "",
             _where_measured([c for _, c in rows]), "",
             "| variant | component | precision | size | program PSNR | torch PSNR | Core ML PSNR |",
             "|---|---|---|---|---|---|---|"]
    for variant, c in rows:
        figures = {f.check: f for f in c.figures}
        lines.append(f"| {variant} | {c.component} | {c.precision} | {c.size_bytes / 1e6:.1f} MB | "
                     f"{_figure(figures.get('psnr_program'))} | {_figure(figures.get('psnr_torch'))} | "
                     f"{_figure(figures.get('psnr_coreml'))} |")
    return lines + [""]


def _upstream(upstream: str, label: str) -> list[str]:
    """The source's own card, shortened to MAX_UPSTREAM characters and sanitised."""
    _, body = split_front_matter(upstream)
    body = body.strip()
    if len(body) > MAX_UPSTREAM:
        body = body[:body.rfind("\n", 0, MAX_UPSTREAM) if "\n" in body[:MAX_UPSTREAM] else MAX_UPSTREAM]
        body += f"\n\n*(shortened: the rest is on {label})*"
    if not body:
        return []
    return ["## Original model card", "", f"Carried over from {label}.", "",
            sanitize_markdown(body, demote_headings=True), ""]


def _extra_sources(source: dict) -> list[str]:
    """Provenance lines of the sources a conversion took components from besides its own (--vae, --refiner, a
    ControlNet's --base)."""
    lines = []
    checkpoint = source.get("checkpoint")
    if checkpoint:
        configs = checkpoint.get("configs")
        lines.append(f"- Single-file checkpoint: `{checkpoint['file']}` (sha256 `{checkpoint['sha256']}`), "
                     "unpacked by diffusers' single-file loader"
                     + (f" with the configs of [{configs}](/{configs}) (shipped with the converter)" if configs else ""))
    for kind, text in (("vae", "VAE (instead of the source's)"), ("refiner", "Refiner UNet (`UnetRefiner`)"),
                       ("base", "Base pipeline (its configs: the sizes)"),
                       ("config", "Configs (`--config`, for the single-file checkpoint)")):
        extra = source.get(kind)
        if extra:
            label = f"[{extra['repo_id']}](/{extra['repo_id']})" if extra.get("repo_id") else f"`{extra['id']}`"
            lines.append(f"- {text}: {label}" + (f" at commit `{extra['sha']}`" if extra.get("sha") else ""))
    for lora in recorded_loras(source):
        label = f"[{lora['repo_id']}](/{lora['repo_id']})" if lora.get("repo_id") else f"`{lora['id']}`"
        lines.append(f"- LoRA fused into the weights at scale {lora['scale']:g}: {label}, `{lora['file']}`"
                     + (f" at commit `{lora['sha']}`" if lora.get("sha") else ""))
    return lines


def _kept(packages: list[PackageResult], only: str | None = None) -> str:
    """`` (the VAE and the safety checker stay float16)``: the packages a repo keeps unpalettized, by precision
    (an SDXL VAE stays float32: it overflows in float16); with ``only``, those of that precision alone."""
    kept: dict[str, list[str]] = {}
    for c in COMPILED_NAMES:
        found = next((p.precision for p in packages if p.component == c), None)
        if found and precision_bits(found) is None and c.startswith(("vae", "safety")) \
                and only in (None, found):
            label = "the VAE" if c.startswith("vae") else "the safety checker"
            if label not in kept.setdefault(found, []):
                kept[found].append(label)
    parts = [f"{' and '.join(labels)} {'stays' if len(labels) == 1 else 'stay'} {precision}"
             + (": it overflows in float16" if precision == "float32" else "")
             for precision, labels in kept.items()]
    return f" ({'; '.join(parts)})" if parts else ""


def repo_target(report: Report, kind: str) -> str:
    """The deployment target a repo's packages need: the newest among them (float16 or palettized)."""
    targets = report.options.get("targets") or {}
    return targets.get(kind) or report.options.get("deployment_target") or "iOS17"  # reports before targets


def _older_copies(packages: list[PackageResult], target: str) -> str:
    """A note naming the float16 copies (VAE, safety checker) in a repo whose other packages need a newer OS."""
    older = {p.component: p.target for p in packages
             if p.target and SPEC_VERSIONS[p.target] < SPEC_VERSIONS[target]}
    if not older:
        return ""
    names = sorted(older, key=list(COMPILED_NAMES).index)
    oldest = min(older.values(), key=SPEC_VERSIONS.__getitem__)
    return f" ({', '.join(names)}: float16 copies written for {os_name(oldest)}, which load there too)"


def _where_measured(components: list[Component]) -> str:
    """One sentence naming where the checks ran, and which did not run."""
    coreml = [f for c in components for f in c.figures if f.check == "psnr_coreml"]
    ran = sum(1 for f in coreml if f.status != "skipped")
    if coreml and ran == len(coreml):
        return "Program, torch and Core ML checks ran for every package (Core ML on macOS)."
    if ran:
        return (f"Program and torch checks ran for every package; Core ML predictions for {ran} of "
                f"{len(coreml)} (the rest were not measured: they need macOS).")
    return ("Program and torch checks ran for every package on Linux; Core ML predictions were not made "
            "(they need macOS), so no figure here comes from Core ML itself.")


def _figure(figure: Figure | None) -> str:
    if not figure:
        return "n/a"
    if figure.value is None:
        return "not measured (needs macOS)" if figure.status == "skipped" else figure.status
    return f"{figure.value:.1f} (bar {figure.bar:g})"
