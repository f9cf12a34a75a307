"""Size against quality of one component's mixed-bit analysis, drawn as a standalone SVG: every recipe the
analysis measured (uniform widths, labelled; random ones, grey), the chosen recipe, and the float16 weights'
size as a line.  The card shows it (a file beside the recipe in ``recipes/``) and so does the status page.

Drawn by hand: it is a few dozen shapes, and a plotting library would be a large install for it.  Every text is
escaped and colours are attributes (no style element), so the status page's Content-Security-Policy allows it
inline and the Hub renders the file as an image.
"""

from __future__ import annotations

import math
from html import escape

WIDTH, HEIGHT = 640, 360
LEFT, RIGHT, TOP, BOTTOM = 64, 24, 34, 60
CHOSEN, UNIFORM, RANDOM, FLOAT16 = "#c8382c", "#2f6fd0", "#a3a9b1", "#2f8f46"


def plot_file_name(recipe_file: str) -> str:
    """The plot's file beside a recipe file: ``…_palettization_recipe.json`` → ``…_size_psnr.svg``."""
    return recipe_file.removesuffix("_palettization_recipe.json") + "_size_psnr.svg"


def _step(top: float) -> float:
    """A round axis step (1, 2 or 5 × a power of ten) giving at most 8 ticks up to ``top``."""
    for power in range(-3, 12):
        for mantissa in (1, 2, 5):
            if top / (mantissa * 10 ** power) <= 8:
                return mantissa * 10 ** power
    return top


def _megabytes(bits: float, weights: int) -> float:
    return bits * weights / 8 / 1e6


def size_psnr_svg(component: str, recipe: dict) -> str:
    """The plot of one component's recipe summary (:meth:`workers.compress.mixed.MixedRecipe.summary`): x is the
    component's weight size in MB (bits per weight × its weights), y the measured PSNR in dB against float32."""
    weights = int(recipe["weights"])
    points = [(_megabytes(p["bits"], weights), p["measured"], p["recipe"]) for p in recipe["passes"]
              if isinstance(p.get("measured"), (int, float)) and math.isfinite(p["measured"])]
    chosen = (_megabytes(recipe["bits"], weights), recipe["measured_psnr"], "this recipe")
    float16 = _megabytes(16, weights)
    ys = [y for _, y, _ in points] + [chosen[1]]
    x_top = float16 * 1.06
    y_low, y_high = math.floor(min(ys) / 10) * 10, math.ceil(max(ys) / 10) * 10 + 5
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(mb: float) -> float:
        return LEFT + plot_w * max(0.0, min(mb, x_top)) / x_top

    def y(db: float) -> float:
        return TOP + plot_h * (1 - (max(y_low, min(db, y_high)) - y_low) / max(y_high - y_low, 1e-9))

    def text(px: float, py: float, words: str, *, anchor: str = "start", size: int = 11, fill: str = "#24292f",
             weight: str = "normal") -> str:
        return (f'<text x="{px:.1f}" y="{py:.1f}" text-anchor="{anchor}" font-size="{size}" fill="{fill}" '
                f'font-weight="{weight}" font-family="sans-serif">{escape(words)}</text>')

    body = [f'<rect x="0" y="0" width="{WIDTH}" height="{HEIGHT}" fill="#ffffff"/>',
            text(LEFT, 20, f"{component}: weight size against output PSNR (float32 reference)", size=13,
                 weight="bold")]
    step = 5 if y_high - y_low <= 40 else 10
    for db in range(int(y_low), int(y_high) + 1, step):
        body.append(f'<line x1="{LEFT}" y1="{y(db):.1f}" x2="{WIDTH - RIGHT}" y2="{y(db):.1f}" stroke="#e4e7eb"/>')
        body.append(text(LEFT - 6, y(db) + 4, f"{db} dB", anchor="end", size=10, fill="#57606a"))
    tick = _step(x_top)
    n = 0
    while n * tick <= x_top:
        body.append(f'<line x1="{x(n * tick):.1f}" y1="{TOP}" x2="{x(n * tick):.1f}" y2="{HEIGHT - BOTTOM}" '
                    f'stroke="#f0f2f4"/>')
        body.append(text(x(n * tick), HEIGHT - BOTTOM + 16, f"{n * tick:g}", anchor="middle", size=10,
                         fill="#57606a"))
        n += 1
    body.append(text(LEFT + plot_w / 2, HEIGHT - BOTTOM + 32, "weights, MB", anchor="middle", size=11,
                     fill="#57606a"))
    body.append(f'<line x1="{x(float16):.1f}" y1="{TOP}" x2="{x(float16):.1f}" y2="{HEIGHT - BOTTOM}" '
                f'stroke="{FLOAT16}" stroke-dasharray="4 3"/>')
    body.append(text(x(float16) - 4, TOP + 12, f"float16 {float16:.0f} MB", anchor="end", fill=FLOAT16))
    for px, py, name in points:
        if name.startswith("uniform_"):
            label = f"{name.split('_')[1]}-bit"
            body.append(f'<rect x="{x(px) - 4:.1f}" y="{y(py) - 4:.1f}" width="8" height="8" fill="{UNIFORM}">'
                        f'<title>{escape(f"uniform {label}: {px:.0f} MB, {py:.1f} dB")}</title></rect>')
            body.append(text(x(px) + 7, y(py) + 4, label, fill=UNIFORM))
        else:
            body.append(f'<circle cx="{x(px):.1f}" cy="{y(py):.1f}" r="3" fill="{RANDOM}">'
                        f'<title>{escape(f"{name}: {px:.0f} MB, {py:.1f} dB")}</title></circle>')
    cx, cy, _ = chosen
    body.append(f'<circle cx="{x(cx):.1f}" cy="{y(cy):.1f}" r="6" fill="{CHOSEN}">'
                f'<title>{escape(f"this recipe: {cx:.0f} MB, {cy:.1f} dB")}</title></circle>')
    body.append(text(x(cx) + 9, y(cy) - 6, f"this recipe, {recipe['bits']:.2f} bits: {cy:.1f} dB", fill=CHOSEN,
                     weight="bold"))
    legend = f"squares: uniform widths; grey: random recipes the analysis measured; {len(points)} passes"
    body.append(text(LEFT, HEIGHT - 8, legend, size=10, fill="#57606a"))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
            f'height="{HEIGHT}" role="img" aria-label="{escape(component)} size against PSNR">'
            + "".join(body) + "</svg>\n")
