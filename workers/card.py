"""The model card (README.md) of a published repo: Hub metadata, what the weights are, how to get them,
provenance, validation figures, and the upstream card carried over below ours."""

from __future__ import annotations

from datetime import date

import yaml

from workers.layout import COMPILED_NAMES, compiled_file_name, package_file_name

TAGS = ["stable-diffusion", "text-to-image", "core-ml", "coreml-publisher"]
_OS = {"iOS15": "iOS 15 / macOS 12", "macOS12": "macOS 12 / iOS 15", "iOS16": "iOS 16 / macOS 13",
       "macOS13": "macOS 13 / iOS 16", "iOS17": "iOS 17 / macOS 14", "macOS14": "macOS 14 / iOS 17",
       "iOS18": "iOS 18 / macOS 15", "macOS15": "macOS 15 / iOS 18"}
_VARIANT_USE = {
    "original": "attention as in the original model: fastest on Mac GPUs",
    "split_einsum": "attention split per head for the Apple Neural Engine",
    "split_einsum_v2": "attention split per head with chunked queries: best on the Neural Engine (iPhone, iPad, "
                       "Apple silicon Macs)",
}


def split_front_matter(text: str) -> tuple[dict, str]:
    """A card's YAML metadata and its body (empty metadata when there is none or it does not parse)."""
    if text.startswith("---"):
        end = text.find("\n---", 3)
        if end > 0:
            try:
                meta = yaml.safe_load(text[3:end]) or {}
            except yaml.YAMLError:
                meta = {}
            return (meta if isinstance(meta, dict) else {}), text[end + 4:].lstrip("\n")
    return {}, text


def zip_name(repo_name: str, variant: str) -> str:
    """``<repo-name>_<variant>_compiled.zip``: the name apps download."""
    return f"{repo_name}_{variant}_compiled.zip"


def render_card(report: dict, *, kind: str, repo_id: str, sibling_id: str, variants: list[str], compiled: bool,
                upstream: str | None = None, today: date | None = None) -> str:
    """The README.md of the float16 (``kind="float16"``) or palettized repo described by ``report``."""
    source = report["source"]
    options = report["options"]
    toolchain = report["toolchain"]
    repo_name = repo_id.split("/")[-1]
    base = source.get("repo_id")
    sd1 = report["geometry"]["context_dim"] == 768
    meta: dict = {"license": source.get("license") or "other"}
    if base:
        meta["base_model"] = base
        if kind == "palettized":
            meta["base_model_relation"] = "quantized"
    meta["pipeline_tag"] = "text-to-image"
    meta["tags"] = TAGS + (["stable-diffusion-diffusers"] if sd1 else []) + (["palettized"] if kind == "palettized" else [])
    packages = [p for p in report["packages"] if p["repo"] == report["repos"][kind]]
    bits = options.get("bits")
    os_text = _OS.get(options["deployment_target"], options["deployment_target"])
    source_label = f"[{base}](/{base})" if base else f"`{source['id']}`"  # Hub-relative links work on any Hub
    group = options.get("group_size") or 0
    palette = f", one palette per {group} output channels" if group else ""
    what = (f"{bits}-bit palettized weights{palette} (the VAE stays float16)" if kind == "palettized"
            else "float16 weights")
    lines = ["---", yaml.safe_dump(meta, sort_keys=False).strip(), "---", "",
             f"# Core ML {source['id'].split('/')[-1]} ({'palettized' if kind == 'palettized' else 'float16'})", "",
             f"{source_label} converted to Core ML with {what}, for Apple's Swift "
             "[`StableDiffusion`](https://github.com/apple/ml-stable-diffusion) package and the apps built on it. "
             f"Needs {os_text} or later.", ""]
    other = "palettized" if kind == "float16" else "float16"
    lines += [f"The {other} version is [{sibling_id}](/{sibling_id}).", ""]
    lines += ["## Variants", "", "```", "README.md"]
    if compiled:
        lines += [zip_name(repo_name, v) for v in variants]
    components = sorted({p["component"] for p in packages}, key=list(COMPILED_NAMES).index)
    for v in variants:
        lines.append(f"{v}/")
        if compiled:
            lines.append("  compiled/   " + "  ".join([compiled_file_name(c) for c in components]
                                                    + ["merges.txt", "vocab.json"]))
        lines.append("  packages/   " + "  ".join(
            package_file_name(source['id'], c) for c in components))
    lines += ["```", ""]
    lines += [f"- `{v}`: {_VARIANT_USE.get(v, v)}." for v in variants]
    lines += ["- `compiled/` holds `.mlmodelc` resources and the tokenizer, ready for the Swift pipeline; "
              "`packages/` holds `.mlpackage` files for Xcode and coremltools." if compiled else
              "- `packages/` holds `.mlpackage` files for Xcode and coremltools. **Compiled resources are absent** "
              "from this repo (no macOS worker compiled them): compile with "
              "`xcrun coremlcompiler compile <package> <outdir>` on a Mac.", ""]
    if compiled:
        lines += ["Each zip holds one folder named like the zip, with the compiled resources of one variant: "
                  "what apps such as swift-coreml-diffusers download and unzip.", ""]
    lines += ["## Download one variant", "", "```python", "from huggingface_hub import snapshot_download, hf_hub_download", ""]
    for v in variants:
        what_dir = "compiled" if compiled else "packages"
        lines.append(f'snapshot_download("{repo_id}", allow_patterns="{v}/{what_dir}/*", local_dir="{repo_name}")')
    if compiled:
        lines.append(f'hf_hub_download("{repo_id}", "{zip_name(repo_name, variants[-1])}", local_dir="{repo_name}")')
    lines += ["```", "", "## Provenance", "",
              f"- Source: {source_label}" + (f" at commit `{source['sha']}`" if source.get("sha") else ""),
              f"- Converter: {toolchain['converter']}; coremltools {toolchain['coremltools']}, torch "
              f"{toolchain['torch']}, diffusers {toolchain['diffusers']}, transformers {toolchain['transformers']}",
              f"- Deployment target: {options['deployment_target']}; UNet batch {options['batch_size']}, latent "
              f"{report['geometry']['latent_height']}×{report['geometry']['latent_width']} "
              f"({report['geometry']['latent_height'] * report['geometry']['vae_scale_factor']}×"
              f"{report['geometry']['latent_width'] * report['geometry']['vae_scale_factor']} px)",
              f"- Converted: {(today.isoformat() if today else report.get('started_at', '')[:10]) or date.today().isoformat()}",
              "",
              "## Validation", "",
              "PSNR in dB against the torch float32 original (Apple's definition) on random inputs, with the bar "
              "each had to pass. *program*: the saved ML program itself, every operation executed with float16 "
              "activations by the converter's program executor (any OS); *torch*: the exported model with the "
              "weights read back from the package; *Core ML*: Core ML's own prediction, which only macOS can "
              "make. Every weight of the source was found in the package or shown folded as an identity.", "",
              _where_measured(packages), "",
              "| variant | component | precision | size | program PSNR | torch PSNR | Core ML PSNR |",
              "|---|---|---|---|---|---|---|"]
    for p in sorted(packages, key=lambda p: (p["variant"], list(COMPILED_NAMES).index(p["component"]))):
        checks = {c["name"]: c for c in p["checks"]}
        lines.append(f"| {p['variant']} | {p['component']} | {p['precision']} | {p['size_bytes'] / 1e6:.1f} MB | "
                     f"{_figure(checks.get('psnr_program'))} | {_figure(checks.get('psnr_torch'))} | "
                     f"{_figure(checks.get('psnr_coreml'))} |")
    lines.append("")
    if upstream:
        _, body = split_front_matter(upstream)
        if body.strip():
            lines += ["## Original model card", "", f"Carried over from {source_label}.", "",
                      _demote_headings(body.strip()), ""]
    return "\n".join(lines)


def _where_measured(packages: list[dict]) -> str:
    """One sentence naming where the checks ran, and which did not run."""
    coreml = [c for p in packages for c in p["checks"] if c["name"] == "psnr_coreml"]
    ran = sum(1 for c in coreml if c["status"] != "skipped")
    if coreml and ran == len(coreml):
        return "Program, torch and Core ML checks ran for every package (Core ML on macOS)."
    if ran:
        return (f"Program and torch checks ran for every package; Core ML predictions for {ran} of "
                f"{len(coreml)} (the rest were not measured: they need macOS).")
    return ("Program and torch checks ran for every package on Linux; Core ML predictions were not made "
            "(they need macOS), so no figure here comes from Core ML itself.")


def _figure(check: dict | None) -> str:
    if not check:
        return "n/a"
    if check["value"] is None:
        return "not measured (needs macOS)" if check["status"] == "skipped" else check["status"]
    return f"{check['value']:.1f} (bar {check['threshold']:g})"


def _demote_headings(body: str) -> str:
    # the upstream card's headings sit below ours
    out, fenced = [], False
    for line in body.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        out.append("##" + line if not fenced and line.startswith("#") else line)
    return "\n".join(out)
