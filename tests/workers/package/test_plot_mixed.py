"""The size-against-PSNR plot of a mixed-bit analysis: every measured recipe placed by size and PSNR, the chosen
one marked, the float16 size drawn, every text escaped, nothing a Content-Security-Policy or the Hub refuses."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from workers.package.plot_mixed import plot_file_name, size_psnr_svg

NS = {"svg": "http://www.w3.org/2000/svg"}


def summary(weights: int = 859_520_964) -> dict:
    passes = [{"recipe": f"uniform_{b}", "bits": b - 0.01, "measured": m, "predicted": m, "fitted": True}
              for b, m in ((8, 52.0), (6, 41.5), (4, 30.2), (2, 12.1), (1, 5.0))]
    passes += [{"recipe": f"random_{i}", "bits": 3.0 + i / 2, "measured": 25.0 + 3 * i, "predicted": 24.0 + 3 * i,
                "fitted": i < 3} for i in range(5)]
    return {"target": "mixed:4.5", "bits": 4.5, "measured_psnr": 36.4, "predicted_psnr": 35.9, "weights": weights,
            "passes": passes}


def test_the_plot_places_every_measured_recipe_and_marks_the_chosen_one() -> None:
    svg = size_psnr_svg("unet", summary())
    root = ET.fromstring(svg)
    titles = [t.text for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert len(titles) == 11  # 5 uniform widths, 5 random recipes, the chosen one
    assert "this recipe: 483 MB, 36.4 dB" in titles  # 4.5 bits × 859.5 M weights / 8
    assert "uniform 6-bit: 644 MB, 41.5 dB" in titles
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "float16 1719 MB" in texts and "this recipe, 4.50 bits: 36.4 dB" in texts
    chosen = [c for c in root.iter("{http://www.w3.org/2000/svg}circle") if c.get("r") == "6"]
    uniform6 = next(r for r in root.iter("{http://www.w3.org/2000/svg}rect") if r.find("svg:title", NS) is not None
                    and r.find("svg:title", NS).text.startswith("uniform 6-bit"))
    assert float(chosen[0].get("cx")) < float(uniform6.get("x"))  # smaller than 6-bit
    assert float(chosen[0].get("cy")) > float(uniform6.get("y"))  # and lower in PSNR: drawn below it


def test_the_plot_escapes_its_text_and_holds_no_style_or_script() -> None:
    svg = size_psnr_svg('<script>alert("x")</script>', summary())
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert "<style" not in svg and "style=" not in svg and "href" not in svg
    ET.fromstring(svg)


def test_the_plot_sits_beside_its_recipe_file() -> None:
    assert plot_file_name("tiny-sd1_palettization_recipe.json") == "tiny-sd1_size_psnr.svg"
