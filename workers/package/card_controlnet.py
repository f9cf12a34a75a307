"""The ControlNet parts of model cards: a ControlNet repo's (what it fits, its condition, how apps load it) and the
ControlledUnet section of a base repo's (which ControlNet repos fit it).

What fits is said by architecture, as the conversion judges it (:mod:`workers.source.controlnet`): the text
encoder width, the UNet's channels, the image size, and the attention layout (apps match a ControlNet's
``controlnet_cond`` size and attention layout with the model's).
"""

from __future__ import annotations

import re

from workers.names import compiled_file_name, controlnet_name
from workers.validate.report import Report

# the conditions ControlNets are trained on, as their repo names and cards spell them
CONDITIONS = ("canny", "depth", "openpose", "pose", "scribble", "seg", "mlsd", "normal", "normalbae", "hed",
              "softedge", "lineart", "lineart_anime", "tile", "inpaint", "shuffle", "ip2p", "qrcode", "brightness")


def condition_type(source_id: str, tags: list | None) -> str | None:
    """The condition a ControlNet takes, from its card's tags, else from its repo name (None: not said)."""
    words = [str(t).lower() for t in tags or [] if isinstance(t, str)]
    words += re.split(r"[_\-/.]", source_id.lower())
    return next((c for c in sorted(CONDITIONS, key=len, reverse=True) if c in words), None)


def _sizes(report: Report) -> tuple[int, int, int, int]:
    g = report.geometry
    h, w, f = g["latent_height"], g["latent_width"], g["vae_scale_factor"]
    return h * f, w * f, g["context_dim"], len(g.get("residuals") or [])


def _architecture(report: Report) -> str:
    height, width, context, residuals = _sizes(report)
    return (f"text encoder width {context}, {residuals} residuals of the UNet's down path, images "
            f"{width}×{height} px")


def controlnet_sections(report: Report, tags: list | None) -> list[str]:
    """A ControlNet repo's own section: the base it was converted with, what else fits, its condition, and how
    the Swift package and apps load it."""
    source = report.source
    base = source.get("base") or {}
    base_label = f"[{base['repo_id']}](/{base['repo_id']})" if base.get("repo_id") else f"`{base.get('id')}`"
    height, width, _, residuals = _sizes(report)
    name = controlnet_name(source["id"])
    condition = condition_type(source["id"], tags)
    return ["## Using this ControlNet", "",
            f"- Condition: {condition or 'not stated by the source card'}; the conditioning image "
            f"(`controlnet_cond`, (2, 3, {height}, {width}), RGB in [0, 1]) is the generated image's size, "
            f"{width}×{height} px.",
            f"- Converted for {base_label}" + (f" at commit `{base['sha']}`" if base.get("sha") else "") +
            f"; it fits any Core ML Stable Diffusion repo of the same architecture ({_architecture(report)}) that "
            "ships `ControlledUnet.mlmodelc` (converted with `--controlled-unet`), in the same attention layout.",
            f"- Outputs `additional_residual_0` … `additional_residual_{residuals - 1}`: exactly the ControlledUnet's "
            "extra inputs.",
            f"- Each zip holds `{compiled_file_name('controlnet', source['id'])}` at its top: unzip it into a base "
            "repo's unzipped variant folder (the one with `ControlledUnet.mlmodelc`) and the Swift "
            f"`StableDiffusionPipeline(resourcesAt:controlNet: [\"{name}\"], …)` finds it; Mochi Diffusion takes "
            f"the `{name}.mlmodelc` folder alone in its ControlNet folder and offers it with models of the same "
            "image size and attention layout.", ""]


def controlled_unet_section(report: Report) -> list[str]:
    """A base repo's section about its ControlledUnet (empty when it has none)."""
    if not any(p.component.startswith("controlled_unet") for p in report.packages):
        return []
    height, width, _, _ = _sizes(report)
    source = report.source.get("repo_id") or report.source["id"]
    return ["## ControlNet", "",
            "`ControlledUnet.mlmodelc` is the UNet that also takes a ControlNet's residuals; the Swift pipeline "
            "uses it (instead of `Unet.mlmodelc`) when a ControlNet is given, so it cannot run without one.  "
            f"ControlNets fit when they have this model's architecture ({_architecture(report)}) and attention "
            "layout: ControlNet repos converted with "
            f"`coreml-publish convert CONTROLNET --base {source}` (any ControlNet trained for this base or its "
            f"fine-tunes), whose `controlnet_cond` is (2, 3, {height}, {width}).  Unzip a ControlNet repo's zip of "
            "the same layout into this repo's unzipped folder: it adds `controlnet/<Name>.mlmodelc`.  "
            "`VAEEncoder.mlmodelc` is included: apps read the image size from it to match ControlNets.", ""]


def residual_rows(packages: list) -> list[str]:
    """Every residual's own program PSNR per package (the validation table shows each package's worst)."""
    lines = ["Every residual of every package (program PSNR in dB against the float32 ControlNet):", "",
             "| variant | precision | residual | program PSNR |", "|---|---|---|---|"]
    for p in sorted(packages, key=lambda p: (p.variant, p.precision)):
        check = next((c for c in p.checks if c.name == "psnr_program"), None)
        for name, value in re.findall(r"(additional_residual_\d+) (-?[\d.]+|nan) dB", check.detail if check else ""):
            lines.append(f"| {p.variant} | {p.precision} | {name} | {value} (bar {check.threshold:g}) |")
    return lines + [""]
