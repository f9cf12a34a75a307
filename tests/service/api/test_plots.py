"""The status page's mixed-bit plots, from what a job's convert stages recorded."""

from __future__ import annotations

from service.api.plots import mixed_plots
from service.models import StageResult
from tests.workers.package.test_plot_mixed import summary


def test_each_analysed_component_is_plotted_once_and_a_bad_record_is_left_out() -> None:
    stages = [StageResult(stage="convert", part="unet-original", figures={"recipes": {"unet": summary()}}),
              StageResult(stage="convert", part="unet-split_einsum_v2", figures={"recipes": {"unet": summary()}}),
              StageResult(stage="convert", part="shared",
                          figures={"recipes": {"text_encoder": {"bits": "x"}}, "text_encoder/original/float16": {}}),
              StageResult(stage="publish", part="", figures={"recipes": {"vae": summary()}})]
    plots = mixed_plots(stages)
    assert len(plots) == 1 and "unet: weight size against output PSNR" in str(plots[0])
    assert mixed_plots([StageResult(stage="convert", part="shared", figures={"a/b/c": {"status": "passed"}})]) == []
