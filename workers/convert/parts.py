"""One conversion run as independent parts in processes of their own, side by side when memory allows.

coremltools' conversion passes run on one core, and a component's conversion leaves memory behind in its process
that later components start on.  Here each component (a UNet-like one split by attention layout when two fit in
memory at once) is converted in a fresh process by :func:`workers.convert.engine.convert_pipeline`, into a folder
of its own; up to ``processes`` run at once, the costliest first, each with its share of the cores (every thread
pool sized to it), and each started only while its estimated peak fits in what the host has free less what the
parts already running on it, of this run or any other, may still grow by (:func:`part_memory`, from the weights'
headers and the image size, before anything is loaded; :class:`workers.memory.HostLedger`, the host's claims).
The parts' trees and reports are then merged (:func:`workers.convert.merge.merge_outputs`) into the tree one
process writes: the same weight files byte for byte and the same programs (the float32 references the checks
compare against are summed by fewer threads, so a figure can move at float32 rounding).

Hand-written because the scheduling is what no pool offers: a pool sizes by count, not by each task's memory, and
its workers outlive their tasks (with the memory this module exists to give back).
"""

from __future__ import annotations

import math
import os
import pickle
import queue
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from workers.components import CHUNKED, SIZE_INDEPENDENT, depends_on_attention
from workers.convert.geometry import Geometry
from workers.convert.merge import merge_outputs
from workers.convert.run import Run
from workers.convert.specs import spec_for
from workers.errors import ConversionError
from workers.memory import HostLedger, available_memory
from workers.names import CHECK_DATA_DIR, Attention
from workers.options import ConvertOptions
from workers.progress import Progress
from workers.source.source import Source
from workers.source.weights import read_header
from workers.validate.report import Event, Report

PARTS_DIR = ".parts"  # inside the output folder while the parts run; removed once they are merged
PART_PROCESS = "workers.convert.part_process"  # the module a part's process runs (named, not imported: it imports
# the engine, which imports this module)
# below this many bytes of weights a source converts in one process: starting a process (about 5 s of imports)
# costs more than running side by side saves on a model whose components take seconds
PARALLEL_ABOVE_BYTES = 1 << 30
# a part's estimated peak (every one at or above the peak measured): the interpreter with torch and coremltools
# loaded, the float32 weights with the float16 program and the package read back beside them, and the largest
# activations of a forward pass; calibrated on the parts' peaks of bench/parallel.py (SD 1.5: estimated 2.23,
# 7.62, 4.50, 4.50 GiB for the text encoder, UNet, VAE decoder, encoder; measured 2.08, 5.1-7.25, 2.01, 1.69) and
# the stage peaks of bench/full_size.py (SDXL: UNet estimated 19.3 GiB, measured 15.39)
BASE_BYTES = 3 << 29  # 1.5 GiB
WEIGHT_FACTOR = 1.6
UNET_ACTIVATION_FACTOR = 2.0  # a UNet's largest self-attention, a sample at a time, torch and the executor
VAE_ACTIVATION_FACTOR = 20.0  # the VAE's full-resolution feature maps, many alive at once in its up blocks
MEMORY_SHARE = 0.9  # of the host's headroom: what a new part's estimate may take
# every thread pool a part's process computes with (torch's OpenMP, BLAS, the palettizer's numba), sized alike
THREAD_SETTINGS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


@dataclass(frozen=True)
class Part:
    """An independent piece of one conversion: components (and layouts) that one process converts."""

    name: str  # the folder it is converted into: a component's name, ``<component>-<layout>`` when split
    components: tuple[str, ...]
    attentions: tuple[Attention, ...]
    memory: int  # its estimated peak resident memory, bytes
    cost: float  # its relative run time (the order parts start in: costliest first)


def float32_weight_bytes(source: Source, component: str) -> int:
    """The bytes of a source component's weights in float32, from the safetensors headers (a pickled file: its
    size, as if float32)."""
    total = 0
    for name in source.weight_files.get(component, ()):
        file = source.path / name
        if not file.is_file():
            continue
        if file.suffix != ".safetensors":
            total += file.stat().st_size
            continue
        header = read_header(file, source=source.id)
        total += 4 * sum(math.prod(entry["shape"]) for key, entry in header.items() if key != "__metadata__")
    return total


def part_memory(component: str, geometry: Geometry, weights: int) -> int:
    """The estimated peak resident memory of converting and validating one component (at ``geometry``'s size),
    from its float32 weights' bytes (:func:`float32_weight_bytes`) and its largest activations: what the
    scheduler keeps within the free memory."""
    latent = geometry.latent_height * geometry.latent_width
    if component.startswith("vae"):
        channels = 128  # the widest full-resolution feature map of every Stable Diffusion VAE
        activation = VAE_ACTIVATION_FACTOR * channels * latent * geometry.vae_scale_factor ** 2 * 4
    elif depends_on_attention(component):  # the first level's self-attention over every latent position
        heads = 20 if geometry.xl else 8
        tokens = latent if not geometry.xl else latent // 4  # SDXL's first level has no attention
        activation = UNET_ACTIVATION_FACTOR * heads * tokens * tokens * 4
    else:
        activation = 0.0
    return int(BASE_BYTES + WEIGHT_FACTOR * weights + activation)


def plan_parts(run: Run, components: list[str], processes: int, budget: int) -> list[Part]:
    """The parts of ``run``'s conversion, costliest first: one per component; a component converted per attention
    layout split into one part per layout when two of them fit in ``budget`` at once (each then computes its own
    float32 reference, which costs less than the layouts waiting on one another)."""
    source, options, geometry = run.source, run.options, run.geometry
    sizes = [geometry] + [g for _, g in run.sizes]
    parts = []
    for name in components:
        at = sizes if name not in SIZE_INDEPENDENT else [geometry]
        weights = float32_weight_bytes(source, spec_for(name, geometry).needs[0])  # its headers, read once
        memory = max(part_memory(name, g, weights) for g in at)
        # the float32 weights and every image size's pixels, converted once per layout when it depends on one
        cost = (weights + 1e6) * sum(g.latent_height * g.latent_width for g in at)
        layouts = options.attentions if depends_on_attention(name) else options.attentions[:1]
        # a mixed-bit recipe is analysed once per component, so its layouts stay together
        if depends_on_attention(name) and len(layouts) > 1 and processes > 1 and 2 * memory <= budget and \
                options.mixed is None:
            parts += [Part(f"{name}-{a.value}", (name,), (a,), memory, cost) for a in layouts]
        else:
            parts.append(Part(name, (name,), options.attentions, memory, cost * len(layouts)))
    return sorted(parts, key=lambda p: -p.cost)


def part_options(options: ConvertOptions, part: Part) -> ConvertOptions:
    """The options one part converts with: its components and layouts, the UNet chunks only where it has a UNet."""
    chunk = options.chunk_unet and any(c in CHUNKED for c in part.components)
    return replace(options, components=part.components, attentions=part.attentions, chunk_unet=chunk,
                   chunks_only=chunk and options.chunks_only)


def choose_processes(processes: int | None, source: Source) -> int:
    """How many processes a run may use: ``processes`` as given (1: in this process), or, for None (auto), as
    many as the machine has cores, for a source whose weights are large enough to gain from it."""
    if processes is not None:
        return max(1, processes)
    weights = sum((source.path / name).stat().st_size for names in source.weight_files.values()
                  for name in names if (source.path / name).is_file())
    return max(1, os.cpu_count() or 1) if weights >= PARALLEL_ABOVE_BYTES else 1


def convert_parts(run: Run, components: list[str], processes: int, *, ledger: HostLedger | None = None) -> Report:
    """Convert ``components`` of ``run`` part by part in processes of their own (up to ``processes`` at once, as
    memory allows: ``ledger``, the host's claims, shared with every other conversion on it), merge the parts into
    ``run.out`` and return the merged report (``run.report``).

    A failed package is recorded and the other parts go on, as in one process; any other error in a part stops
    the rest and is raised as the part raised it (a process that died is a ConversionError naming it).
    """
    ledger = ledger or HostLedger()
    budget = int(MEMORY_SHARE * ledger.headroom(ledger.claims(), available_memory()))
    parts = plan_parts(run, components, processes, budget)
    root = run.out / PARTS_DIR
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    messages: queue.Queue = queue.Queue()
    # the steps every part plans (an attention-split UNet loads and checks its float32 module in each part)
    run.steps.total = sum(Run(run.source, run.out, part_options(run.options, p), run.geometry, None,
                              sizes=run.sizes).planned_steps() for p in parts)
    pending, running, progress, finished, started = list(parts), {}, {}, set(), {}
    key = f"{os.getpid()}-{id(run)}-{{}}".format

    def claim(part: Part, alone: bool) -> bool:
        return ledger.claim(key(part.name), part.memory, available_memory(), share=MEMORY_SHARE, alone=alone)

    try:
        while pending or running:
            chosen = _startable(pending, len(running), processes, claim)
            threads = max(1, (os.cpu_count() or 1) // (len(running) + len(chosen) or 1))  # one alone: every core
            for part in chosen:
                pending.remove(part)
                process = _start(run.source, root / part.name, part_options(run.options, part), part.name, threads,
                                 messages)
                ledger.assign(key(part.name), process.pid)
                running[part.name], started[part.name] = (part, process), time.perf_counter()
            try:  # parts waiting for memory another conversion holds: look again every few seconds
                kind, name, payload = messages.get(timeout=2.0 if pending else None)
            except queue.Empty:
                continue
            if kind == "event":
                _forward(run, payload, name, progress)
            elif kind == "error":
                raise rebuilt(payload)
            elif kind == "done":
                finished.add(name)
                if payload is not None:
                    run.report.peaks[name] = payload
            else:  # "exit": its process ended; after "done", its report is in its folder
                part, process = running.pop(name)
                ledger.release(key(name))
                if name not in finished:
                    raise _died(part, payload)
                run.report.timings[f"part/{name}"] = time.perf_counter() - started[name]
        order = {name: i for i, name in enumerate(components)}  # the report in a single run's order
        merged = sorted(parts, key=lambda p: (order[p.components[0]], run.options.attentions.index(p.attentions[0])))
        merge_outputs([root / p.name for p in merged], run.out, base=run.report)
    finally:
        for name, (_, process) in running.items():  # an error stops the others: their work would be thrown away
            process.kill()
            process.wait()
        for part in parts:
            ledger.release(key(part.name))
        shutil.rmtree(root, ignore_errors=True)
    return run.report


def _start(source: Source, out: Path, options: ConvertOptions, name: str, threads: int,
           messages: queue.Queue) -> subprocess.Popen:
    """A part's process: a fresh interpreter running :mod:`workers.convert.part_process`, its work on standard input, its messages on a
    pipe of their own (its standard output and error are this process's, for the toolchain's own logs).  However
    it ends, an ``exit`` message with its exit code follows its last message."""
    work = pickle.dumps((source, out, options, name, threads))
    read, write = os.pipe()
    process = subprocess.Popen([sys.executable, "-m", PART_PROCESS, str(write), str(os.getpid())], stdin=subprocess.PIPE,
                               pass_fds=(write,), env=os.environ | {name: str(threads) for name in THREAD_SETTINGS})
    os.close(write)

    def listen() -> None:
        try:
            with os.fdopen(read, "rb") as pipe:
                while True:
                    try:
                        kind, payload = pickle.load(pipe)
                    except (EOFError, pickle.UnpicklingError):
                        break
                    messages.put((kind, name, payload))
        finally:  # whatever stopped the reading, the loop hears how the process ended
            messages.put(("exit", name, process.wait()))

    threading.Thread(target=listen, name=f"part {name}", daemon=True).start()
    try:
        process.stdin.write(work)
        process.stdin.close()
    except BrokenPipeError:
        pass  # it died before reading its work: its exit code says how
    return process


def _startable(pending: list[Part], running: int, processes: int, claim: Callable[[Part, bool], bool]) -> list[Part]:
    """The parts to start now, costliest first, while a process slot is free: each whose estimated peak ``claim``
    finds room for (a part with nothing running beside it is claimed ``alone``: it starts whatever its estimate
    when nothing else on the host holds a claim)."""
    chosen: list[Part] = []
    for part in pending:
        if running + len(chosen) >= processes:
            break
        if claim(part, not running and not chosen):
            chosen.append(part)
    return chosen


def _died(part: Part, code: int) -> ConversionError:
    """A part whose process ended without saying how (killed: most often for want of memory)."""
    how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return ConversionError(f"the process converting {part.name} {how} (its estimated peak: "
                           f"{part.memory / 2**30:.1f} GiB; the machine may have run out of memory)",
                           component=part.components[0],
                           hint="Convert with --processes 1, or on a machine with more memory.")


def _forward(run: Run, event: Event, part: str, progress: dict[str, Progress]) -> None:
    """A part's event, told as the whole run's: its progress counts the steps every part has done."""
    if event.progress is not None:
        progress[part] = event.progress
        done = sum(p.done for p in progress.values())
        total = max(run.steps.total, done)
        event = replace(event, progress=replace(event.progress, done=done, total=total, model=run.steps.model))
    run.on_event(event)


def rebuilt(parts: tuple) -> BaseException:
    """An exception from a part's process (:func:`workers.convert.part_process.portable`), as it was raised there."""
    kind, args, state = parts
    error = kind.__new__(kind)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


def clear_output(out: Path, run: Run) -> None:
    """Remove what an earlier run left of this run's output (its repo trees, check data, parts)."""
    for folder in (run.fp16_repo, run.palettized_repo, CHECK_DATA_DIR, PARTS_DIR):
        shutil.rmtree(out / folder, ignore_errors=True)

