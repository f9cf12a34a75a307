"""The conversion engine: a resolved, fetched source in; validated package trees and a report out.

``convert_pipeline`` runs load → convert (per attention layout) → validate → palettize → validate for
every component, at the native image size and then at each ``--resolution`` (``<layout>/<W>x<H>`` variants whose
weight files are hard links to the native ones'; the text encoders are placed there, not converted again) (:mod:`workers.convert.component`, one :class:`workers.convert.run.Run` for all), writes ``OUT/coreml-<name>/<variant>/packages/*.mlpackage``, the same under
``OUT/coreml-<name>-palettized/``, and ``OUT/report.json``.  With ``processes`` above one, each component (a
UNet split by layout where memory allows) is converted in a process of its own, side by side as memory allows
(:mod:`workers.convert.parts`), into the same tree.  It is a plain library function: the CLI, Celery tasks,
benchmarks and tests all call it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from workers.components import SIZE_INDEPENDENT
from workers.convert.component import convert_component, share_component, share_size_weights
from workers.convert.geometry import check_resolutions, read_geometry, size_geometry
from workers.convert.outdir import check_output_dir
from workers.convert.parts import choose_processes, clear_output, convert_parts
from workers.convert.run import Run, select_components
from workers.convert.specs import spec_for
from workers.errors import OptionsError, ValidationError
from workers.memory import release_memory
from workers.options import ConvertOptions
from workers.source.source import Source
from workers.validate.report import Event, Report


def convert_pipeline(source: Source, out: Path, options: ConvertOptions | None = None,
                     on_event: Callable[[Event], None] | None = None, *, processes: int | None = 1) -> Report:
    """Convert a fetched source into validated float16 and palettized package trees under ``out``.

    The two repo folders under ``out`` are replaced, not merged with an earlier run's.  Every package is
    validated; one that fails is deleted and the run goes on with the others, then raises
    ValidationError naming each failure (the report is written either way).  ``processes``: how many processes
    may convert at once (1: this one, as a library call does by default; None: as many as the machine has cores,
    for a source of 1 GB of weights and more, :func:`workers.convert.parts.choose_processes`).
    Raises OptionsError, SourceError, UnsupportedModelError, ConversionError, ValidationError.
    """
    options = options or ConvertOptions()
    check_output_dir(out)  # a file, or an unwritable place: say so before any work
    if source.path is None:
        raise OptionsError(f"{source.id} has not been fetched", hint="Call fetch_source first.")
    geometry = read_geometry(source.path, latent_size=options.latent_size, batch_size=options.batch_size)
    options.target(palettized=False, xl=geometry.xl)  # an override older than SDXL's is refused before any work
    components = select_components(source, options)
    if geometry.xl and "controlled_unet" in components:
        raise OptionsError("--controlled-unet is for SD 1.x / 2.x pipelines: Apple's Swift pipeline runs no SDXL "
                           "ControlNet", hint="Drop --controlled-unet for this SDXL source.")
    if "controlnet" in components and options.batch_size != 2:
        raise OptionsError("a ControlNet is converted with batch size 2: the Swift pipeline always feeds it two "
                           "samples", hint="Drop --batch-size.")
    sizes = [(size, size_geometry(source.path, geometry, size))  # every size refused before any work
             for size in check_resolutions(options.resolutions, native=geometry.image_size, step=geometry.size_step)]
    out.mkdir(parents=True, exist_ok=True)
    run = Run(source, out, options, geometry, on_event, sizes=sizes)
    clear_output(out, run)  # the repo trees are this run's output: nothing from an earlier run goes with them
    processes = choose_processes(processes, source)
    started = time.perf_counter()
    try:
        if processes > 1:
            convert_parts(run, components, processes)
        else:
            for name in components:
                convert_sizes(run, name)
    finally:
        run.report.timings["total"] = time.perf_counter() - started
        run.report.save(out)
    failures = run.report.failures()
    if failures:
        raise ValidationError(failures, report=run.report)
    return run.report


def convert_sizes(run: Run, name: str) -> None:
    """One component of ``run`` at the native image size, then at each extra size: the same weights, each program
    its own (a size-independent component's packages placed in every size's variants instead)."""
    convert_component(run, spec_for(name, run.geometry))
    release_memory()
    for size, sized_geometry in run.sizes:
        sized = run.at_size(size, sized_geometry)
        if name in SIZE_INDEPENDENT:
            share_component(sized, name)
            continue
        convert_component(sized, spec_for(name, sized_geometry))
        share_size_weights(sized)
        release_memory()
