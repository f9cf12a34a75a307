"""Benchmark: where a full-size UNet conversion's memory goes, phase by phase and pass by pass.

    python bench/convert_memory.py                              # SD 1.5 UNet, both layouts
    python bench/convert_memory.py --attention split_einsum_v2 --model sd21-base

Builds the UNet of ``--model`` in code with random weights, then for each attention layout traces it and
converts it with coremltools exactly as the convert step does, sampling the process's resident memory
every 50 ms.  Prints, for each phase (tracing, coremltools' torch frontend, every graph pass, the
ML program backend, saving), its time and the most memory the process held during it, plus the size of
the traced graph and of the converted program.  Needs about 12 GB of RAM.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).parent))

from full_size import MODELS, Memory, modules  # noqa: E402  (a sibling script)


class Phases(logging.Handler):
    """Names the current phase (coremltools logs every graph pass it runs) and samples memory."""

    def __init__(self, memory: Memory) -> None:
        super().__init__(level=logging.DEBUG)
        self.memory = memory
        self.current = "start"
        self.order: list[str] = []
        self.peak: dict[str, int] = {}
        self.seconds: dict[str, float] = {}
        self.since = time.perf_counter()
        self.sampling = threading.Lock()  # not "lock": logging.Handler has its own
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def enter(self, phase: str) -> None:
        with self.sampling:
            now = time.perf_counter()
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + now - self.since
            self.since = now
            self.current = phase
            if phase not in self.order:
                self.order.append(phase)
            self._record()

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Performing pass: "):
            self.enter("pass " + message.split('"')[1])

    def _record(self) -> None:
        rss = self.memory.current()
        self.peak[self.current] = max(self.peak.get(self.current, 0), rss)

    def _sample(self) -> None:
        while not self.done.wait(0.05):
            with self.sampling:
                self._record()

    def __enter__(self) -> "Phases":
        from coremltools.converters.mil import converter

        backend = converter.MILProtoBackend.__call__

        def call(backend_self, *args, **kwargs):
            self.enter("backend: ML program proto and weight file")
            return backend(backend_self, *args, **kwargs)

        self._restore = lambda: setattr(converter.MILProtoBackend, "__call__", backend)
        converter.MILProtoBackend.__call__ = call
        logger = logging.getLogger("coremltools")
        self._level = logger.level
        logger.setLevel(logging.DEBUG)
        logger.addHandler(self)
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.enter("end")
        self.done.set()
        self.thread.join()
        logger = logging.getLogger("coremltools")
        logger.removeHandler(self)
        logger.setLevel(self._level)
        self._restore()


def measure(model: str, attention: str, work: Path) -> None:
    import coremltools as ct
    import torch

    from workers.convert.program import _DTYPES, save_package, trace
    from workers.names import Attention
    from workers.convert.geometry import Geometry
    from workers.convert.specs import SPECS

    torch.manual_seed(0)
    unet = modules(model)[0].eval()
    spec = SPECS["unet"]
    g = Geometry(batch_size=2, latent_height=64, latent_width=64, latent_channels=4, vae_scale_factor=8,
                 context_dim=unet.config.cross_attention_dim, sequence_length=77, safety_image_size=224,
                 vocab_size=49408)
    memory = Memory()
    base = memory.current()
    export = spec.export_module({"unet": unet}, Attention(attention))
    example = spec.sample_inputs(g, 0)
    inputs = spec.inputs(g)
    with Phases(memory) as phases:
        phases.enter("trace")
        traced = trace(export, tuple(example.values()), "unet")
        nodes = sum(1 for _ in traced.inlined_graph.nodes())
        phases.enter("frontend: torch ops -> MIL")
        mlmodel = ct.convert(
            traced, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
            inputs=[ct.TensorType(name=t.name, shape=t.shape, dtype=_DTYPES[t.dtype]) for t in inputs],
            outputs=[ct.TensorType(name=t.name, dtype=_DTYPES[t.dtype]) for t in spec.outputs(g)],
            compute_precision=ct.precision.FLOAT16, skip_model_load=True)
        phases.enter("save")
        save_package(mlmodel, work / f"unet-{attention}.mlpackage")
    spec_proto = mlmodel.get_spec()
    ops = sum(len(b.operations) for f in spec_proto.mlProgram.functions.values()
              for b in f.block_specializations.values())
    weights = sum(p.numel() for p in unet.parameters())
    print(f"\n{MODELS[model]} UNet, {attention}: {weights / 1e6:.0f} M weights "
          f"({weights * 4 / 2**30:.2f} GB float32) resident before tracing, process at {base / 2**30:.2f} GB; "
          f"traced graph {nodes} nodes; converted program {ops} operations")
    print(f"{'phase':<58} {'seconds':>8} {'peak RSS GB':>12}")
    shown = [p for p in phases.order if p != "end"]
    top = sorted(shown, key=lambda p: -phases.peak.get(p, 0))[:8]
    for phase in shown:
        if phase.startswith("pass ") and phase not in top and phases.seconds.get(phase, 0) < 2:
            continue
        print(f"{phase:<58} {phases.seconds.get(phase, 0):>8.1f} {phases.peak.get(phase, 0) / 2**30:>12.2f}")
    passes = [p for p in shown if p.startswith("pass ")]
    print(f"({len(passes)} graph passes in all; those under 2 s and outside the 8 highest peaks not shown)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sd15", choices=list(MODELS))
    parser.add_argument("--attention", default="original,split_einsum_v2")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="convert-memory-") as work:
        for attention in args.attention.split(","):
            measure(args.model, attention.strip(), Path(work))


if __name__ == "__main__":
    main()
