"""Progress inside a conversion: coremltools' tqdm observed and always given back; steps counted against the plan
in a real tiny conversion."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from workers.progress import TQDM_USERS, Counter, Steps, model_class, observe_tqdm


def _originals() -> dict[tuple[str, str], object]:
    return {(name, attribute): getattr(importlib.import_module(name), attribute) for name, attribute in TQDM_USERS}


def test_observe_tqdm_counts_coremltools_loops_and_restores_everything_even_on_exceptions() -> None:
    originals = _originals()
    seen: list[Counter] = []
    with pytest.raises(RuntimeError, match="inside"):
        with observe_tqdm(seen.append, interval=0):
            for (name, attribute), original in originals.items():
                assert getattr(importlib.import_module(name), attribute) is not original
            bar = importlib.import_module("coremltools.converters.mil.mil.passes.pass_pipeline").tqdm
            assert list(bar(["a", "b", "c"], desc="Running MIL default pipeline", unit=" passes")) == ["a", "b", "c"]
            raise RuntimeError("inside")
    assert _originals() == originals
    assert [(c.label, c.done, c.total) for c in seen] == [("Running MIL default pipeline", n, 3) for n in
                                                          (0, 1, 2, 3, 3)]


def test_observe_tqdm_restores_when_a_loop_body_or_the_report_raises_and_when_nested() -> None:
    originals = _originals()
    ops = importlib.import_module("coremltools.converters.mil.frontend.torch.ops")

    def broken(counter: Counter) -> None:
        if counter.done == 2:
            raise ValueError("report failed")

    with pytest.raises(ValueError, match="report failed"):
        with observe_tqdm(broken, interval=0):
            for _ in ops._tqdm(range(5), desc="Converting PyTorch Frontend ==> MIL Ops"):
                pass
    assert _originals() == originals
    outer: list[Counter] = []
    inner: list[Counter] = []
    with observe_tqdm(outer.append, interval=0):
        with pytest.raises(KeyError):
            with observe_tqdm(inner.append, interval=0):
                for item in ops._tqdm(range(2), desc="inner"):
                    raise KeyError(item)
        list(ops._tqdm(range(2), desc="outer"))
    assert _originals() == originals
    # an outer observer sees the inner block's loops too; the inner one only its own
    assert {c.label for c in inner} == {"inner"} and {c.label for c in outer} == {"inner", "outer"}
    assert inner[-1].done == 0  # the body raised before the first item was done


def test_observe_tqdm_counts_updates_of_a_bar_used_as_a_context_manager() -> None:
    seen: list[Counter] = []
    quantization = importlib.import_module("coremltools.optimize.coreml._post_training_quantization")
    with observe_tqdm(seen.append, interval=0):
        with quantization.tqdm(total=4, desc="weights") as bar:
            bar.update(3)
            bar.update()
    assert [(c.done, c.total) for c in seen] == [(3, 4), (4, 4), (4, 4)]


def test_steps_count_top_level_steps_and_never_pass_the_plan() -> None:
    steps = Steps(2, model="SD 8x8, ~4 MB")
    assert steps.starting("load", "unet", None).fraction == 0.0
    steps.enter("validate", "unet", "original", "float16")
    steps.enter("execute", "unet", "original", "float16")  # nested: says where, counts nothing
    assert (steps.now().step, steps.now().done) == ("execute", 0)
    steps.leave()
    assert steps.now(Counter("x", 1, 2)).counter == Counter("x", 1, 2) and steps.now().step == "validate"
    steps.leave()
    assert (steps.now().step, steps.now().done, steps.now().fraction) == ("validate", 1, 0.5)
    for _ in range(2):  # one more than planned: the total follows
        steps.enter("convert", "vae_decoder", None)
        steps.leave()
    assert (steps.done, steps.total, steps.now().fraction) == (3, 3, 1.0)
    assert steps.now().to_dict() == {"component": "vae_decoder", "layout": None, "precision": None,
                                     "step": "convert", "done": 3, "total": 3, "fraction": 1.0,
                                     "model": "SD 8x8, ~4 MB"}


def test_model_class_groups_sizes_by_powers_of_two() -> None:
    assert model_class(3_438_000_000, xl=False, latent=(64, 64)) == "SD 64x64, ~4096 MB"
    assert model_class(3_000_000_000, xl=False, latent=(64, 64)) == model_class(3_400_000_000, xl=False,
                                                                                 latent=(64, 64))
    assert model_class(10, xl=True, latent=(128, 128)) == "SDXL 128x128, ~1 MB"


def test_convert_pipeline_progress_is_monotonic_and_reaches_the_plan(sd2_pipeline: Path, tmp_path: Path) -> None:
    """A real tiny conversion (text encoder and UNet, one layout, float16 and 6-bit, UNet chunks): every event
    carries progress, steps done never go back, coremltools' pass counters show up inside convert and palettize,
    and the run ends with every planned step done."""
    from workers.convert.engine import convert_pipeline
    from workers.options import ConvertOptions
    from workers.names import Attention
    from workers.source.resolve import resolve_source

    before = _originals()
    events = []
    options = ConvertOptions(components=("text_encoder", "unet"), attentions=(Attention.ORIGINAL,), bits=6,
                             chunk_unet=True)
    convert_pipeline(resolve_source(str(sd2_pipeline)), tmp_path / "out", options, on_event=events.append)
    progress = [e.progress for e in events]
    assert all(p is not None for p in progress)
    # text encoder: load, reference, convert, validate, palettize, validate; UNet: the same, a load in float16
    # (memory-lean) and chunk, validate
    assert {p.total for p in progress} == {15}
    done = [p.done for p in progress]
    assert done == sorted(done) and done[-1] == 15 and progress[-1].fraction == 1.0
    assert sum(1 for e in events if e.status == "done" and e.stage != "execute") == 15
    assert progress[-1].model.startswith("SD ") and progress[-1].model.endswith(" MB")
    counters = [(e.stage, e.component, e.progress.counter) for e in events if e.status == "progress"]
    labels = {(stage, counter.label) for stage, _, counter in counters}
    assert ("convert", "Converting PyTorch Frontend ==> MIL Ops") in labels
    assert ("convert", "Running MIL default pipeline") in labels
    assert any(stage == "palettize" for stage, _ in labels)
    for stage, component, counter in counters:  # each bar's count stays within its total
        assert counter.total is None or 0 <= counter.done <= counter.total
    finished = [c for _, _, c in counters if c.label == "Running MIL default pipeline"]
    assert any(c.done == c.total and c.total > 50 for c in finished)
    assert _originals() == before and not any("_observed" in getattr(f, "__qualname__", "") for f in before.values())
