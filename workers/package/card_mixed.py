"""The model card's mixed-bit section: what the recipe is, where its file is, and the analysis' measured figures
beside uniform widths (every figure from a run of this model's own weights)."""

from __future__ import annotations

from workers.validate.report import Report


def mixed_what(report: Report) -> str | None:
    """The heading's words for a mixed-bit repo's weights, or None for any other repo."""
    if not report.recipes:
        return None
    parts = [f"the {component.replace('_', ' ')} {recipe['bits']:.2f}" for component, recipe in report.recipes.items()]
    return f"mixed-bit palettized weights (each layer its own width; bits per weight on average: {', '.join(parts)})"


def mixed_section(report: Report) -> list[str]:
    """The recipe of every component that has one: its widths, its file, and the analysis that chose it."""
    if not report.recipes:
        return []
    lines = ["## Mixed-bit palettization", "",
             "Each layer with more than 100,000 weights has its own palette width (1, 2, 4, 6 or 8 bits, or float16), "
             f"chosen for this model's weights to reach the target `{report.options.get('bits')}`. The recipe is "
             "written in the shape of Apple's `mixed_bit_compression_pre_analysis.py` output (module name → bits, "
             "under `recipes`), so Apple's apply script reads it.", ""]
    for component, recipe in report.recipes.items():
        widths = ", ".join(f"{count} at {bits} bits" if bits != "16" else f"{count} float16"
                           for bits, count in sorted(recipe["widths"].items(), key=lambda kv: -int(kv[0])))
        lines += [f"### {component}", "",
                  f"- Recipe: [`{recipe['file'].split('/', 1)[-1]}`]({recipe['file'].split('/', 1)[-1]}), "
                  f"{recipe['layers']} layers: {widths}; {recipe['bits']:.2f} bits per weight on average (the "
                  "smaller layers count at 16)",
                  f"- Analysis: {len(recipe['passes'])} passes of the float32 {component} in {recipe['seconds']:.0f} s, "
                  "each layer's own output error at each width, the gain of each part of the network fitted on "
                  "whole recipes; predicted against measured PSNR on the passes it was not fitted on: "
                  + ", ".join(f"{p['predicted']:.1f} / {p['measured']:.1f} dB" for p in recipe["passes"]
                              if not p["fitted"]), "",
                  "Output PSNR of the torch model with its weights palettized, against float32, on the analysis' "
                  "inputs (the shipped packages' own figures are under Validation):", "",
                  "| weights | bits per weight | PSNR |", "|---|---|---|"]
        uniform = sorted((p for p in recipe["passes"] if p["recipe"].startswith("uniform_")),
                         key=lambda p: -p["bits"])
        lines += [f"| uniform {p['recipe'].split('_')[1]}-bit | {p['bits']:.2f} | {p['measured']:.1f} dB |"
                  for p in uniform]
        lines += [f"| **this recipe** | **{recipe['bits']:.2f}** | **{recipe['measured_psnr']:.1f} dB** "
                  f"(predicted {recipe['predicted_psnr']:.1f}) |", ""]
        if recipe.get("plot"):  # every recipe the analysis measured, by size
            plot = recipe["plot"].split("/", 1)[-1]
            lines += [f"![{component}: weight size against PSNR for every recipe the analysis measured]({plot})", ""]
    return lines
