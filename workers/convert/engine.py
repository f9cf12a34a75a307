"""The conversion engine: a resolved, fetched source in; validated package trees and a report out.

``convert_pipeline`` runs load → convert (per attention layout) → validate → palettize → validate for
every component, writes ``OUT/coreml-<name>/<variant>/packages/*.mlpackage``, the same under
``OUT/coreml-<name>-palettized/``, and ``OUT/report.json``.  It is a plain library function: the CLI,
Celery tasks, benchmarks and tests all call it.
"""

from __future__ import annotations

import ctypes
import gc
import os
import shutil
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from workers.components import CHUNKED
from workers.convert.chunk import chunk_features, chunk_unet, validate_chunks
from workers.errors import OptionsError, ValidationError
from workers.convert.program import PackageMetadata, apply_metadata, convert_lean, convert_module, save_package
from workers.convert.lean import LEAN_ABOVE_BYTES, float32_bytes
from workers.names import (
    CHECK_DATA_DIR,
    Attention,
    package_file_name,
    packages_dir,
    repo_names,
)
from workers.convert.outdir import check_output_dir
from workers.compress.palettize import palettize_package
from workers.options import ConvertOptions
from workers.progress import Counter, Steps, model_class, observe_tqdm
from workers.validate.report import Check, Event, PackageResult, Report, precision_bits, precision_label
from workers.source.source import Source
from workers.convert.geometry import Geometry, read_geometry
from workers.components import COMPONENTS
from workers.convert.specs import SPECS, ComponentSpec, resolve_outputs, spec_for
from workers.validate.readback import Accounting
from workers.validate.checks import psnr_check, run_module, validate_package
from workers.validate.compiled import save_check_data
from workers.versions import converter_id, toolchain


def package_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def link_package(src: Path, dst: Path) -> None:
    """Place a copy of a package at ``dst``, hard-linking files where the filesystem allows."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)


RELEASE_ABOVE_BYTES = 2 << 30  # a process holding less has little to hand back (small models, tests)


def release_memory(*, above: int = RELEASE_ABOVE_BYTES) -> None:
    """Collect garbage and hand freed heap pages back to the system, so the next component starts low.

    Skipped while the process holds less than ``above`` bytes: a full collection walks every object the
    toolchain's modules keep (about 0.2 s each time) and a small model's stages leave little to free."""
    resident = _resident_bytes()
    if resident is not None and resident < above:
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed memory in its arenas otherwise
    except (OSError, AttributeError):
        pass  # not glibc (macOS): nothing to trim


def _resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc does not say."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def select_components(source: Source, wanted: tuple[str, ...] | None) -> list[str]:
    """The components to convert, in conversion order; refuses ones the source lacks."""
    available = [c for c in COMPONENTS
                 if all(need in source.components for need in SPECS[c].needs)]
    if wanted is None:
        return available
    missing = [c for c in wanted if c not in available]
    if missing:
        raise OptionsError(f"the source has no {', '.join(missing)}",
                           hint=f"Choose from {', '.join(available)}.")
    return [c for c in COMPONENTS if c in wanted]


class _Run:
    """State of one conversion run: where things go, how to report them."""

    def __init__(self, source: Source, out: Path, options: ConvertOptions, geometry: Geometry,
                 on_event: Callable[[Event], None] | None) -> None:
        self.source, self.out, self.options, self.geometry = source, out, options, geometry
        self.on_event = on_event or (lambda event: None)
        self.fp16_repo, self.palettized_repo = repo_names(source.name)
        self.converter = converter_id()
        self.accountings: dict[str, Accounting] = {}  # float16 package -> where its parameters are
        self.report = Report(
            source=source.provenance(), options=options.record(xl=geometry.xl),
            geometry=geometry.to_dict(), toolchain=toolchain(),
            repos={"float16": self.fp16_repo, "palettized": self.palettized_repo},
        )
        # the components whose UNet converts memory-lean (their weight headers read once, here)
        self.lean = {name for name in select_components(source, options.components)
                     if _is_lean(self, spec_for(name, geometry))}
        weights = sum(os.path.getsize(source.path / name) for names in source.weight_files.values()
                      for name in names if source.path and os.path.isfile(source.path / name))
        self.steps = Steps(self.planned_steps(), model_class(weights, xl=geometry.xl,
                                                             latent=(geometry.latent_height, geometry.latent_width)))

    def planned_steps(self) -> int:
        """How many top-level stages ``_convert_component`` runs for this run's components (a package that fails
        validation skips some; a stage beyond the plan raises the total, see workers.progress.Steps)."""
        total = 0
        for name in select_components(self.source, self.options.components):
            spec = spec_for(name, self.geometry)
            layouts = len(self.options.attentions) if spec.depends_on_attention else 1
            total += 2 + 2 * layouts + (name in self.lean)  # load, reference (a lean one loads again in
            # float16); convert and validate per layout
            if name in CHUNKED and self.options.chunk_unet:
                total += 2 * layouts  # chunk, validate the pair
            if self.options.bits is not None and spec.palettize:
                total += 2 * layouts  # palettize, validate
        return total

    @contextmanager
    def stage(self, stage: str, component: str, variant: str | None = None,
              precision: str | None = None) -> Iterator[None]:
        self.on_event(Event(stage, component, "start", variant, precision,
                            progress=self.steps.starting(stage, component, variant, precision)))
        self.steps.enter(stage, component, variant, precision)
        started = time.perf_counter()
        try:  # a top-level stage hands coremltools' pass counters on as progress events
            with observe_tqdm(self.progress) if self.steps.depth == 1 else nullcontext():
                yield
        except Exception as e:
            self.steps.leave()
            self.on_event(Event(stage, component, "failed", variant, precision,
                                time.perf_counter() - started, str(e), self.steps.now()))
            raise
        self.steps.leave()
        release_memory()  # a stage's temporaries (coremltools programs, read-back weights) go back now
        seconds = time.perf_counter() - started
        key = f"{stage}/{component}" + (f"/{variant}" if variant else "") + (f"/{precision}" if precision else "")
        self.report.timings[key] = seconds
        self.on_event(Event(stage, component, "done", variant, precision, seconds, progress=self.steps.now()))

    def target(self, *, palettized: bool) -> str:
        """The deployment target of this run's float16 or palettized packages."""
        return self.options.target(palettized=palettized, xl=self.geometry.xl)

    def progress(self, counter: Counter) -> None:
        """Report a coremltools counter of the running stage as a progress event."""
        now = self.steps.now(counter)
        self.on_event(Event(now.step, now.component, "progress", now.layout, now.precision, progress=now))

    def metadata(self, spec: ComponentSpec, attention: Attention | None, precision: str, *,
                 component: str | None = None) -> PackageMetadata:
        return PackageMetadata(
            source_id=self.source.id, source_sha=self.source.sha, component=component or spec.name,
            attention=attention.value if attention else None, precision=precision,
            converter=self.converter, license=self.source.license,
            description=spec.description + (f" (chunk {component[-1]} of 2)" if component else ""),
            deployment_target=self.target(palettized=precision_bits(precision) is not None))

    def package_path(self, repo: str, attention: Attention, component: str) -> Path:
        return packages_dir(self.out, repo, attention) / package_file_name(self.source.id, component)

    def rel(self, path: Path) -> str:
        return path.relative_to(self.out).as_posix()


def convert_pipeline(source: Source, out: Path, options: ConvertOptions | None = None,
                     on_event: Callable[[Event], None] | None = None) -> Report:
    """Convert a fetched source into validated float16 and palettized package trees under ``out``.

    The two repo folders under ``out`` are replaced, not merged with an earlier run's.  Every package is
    validated; one that fails is deleted and the run goes on with the others, then raises
    ValidationError naming each failure (the report is written either way).
    Raises OptionsError, SourceError, UnsupportedModelError, ConversionError, ValidationError.
    """
    options = options or ConvertOptions()
    check_output_dir(out)  # a file, or an unwritable place: say so before any work
    if source.path is None:
        raise OptionsError(f"{source.id} has not been fetched", hint="Call fetch_source first.")
    geometry = read_geometry(source.path, latent_size=options.latent_size, batch_size=options.batch_size)
    options.target(palettized=False, xl=geometry.xl)  # an override older than SDXL's is refused before any work
    components = select_components(source, options.components)
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(source, out, options, geometry, on_event)
    # the two repo trees are this run's output: nothing from an earlier run may be published with them
    for folder in (run.fp16_repo, run.palettized_repo, CHECK_DATA_DIR):
        shutil.rmtree(out / folder, ignore_errors=True)
    started = time.perf_counter()
    try:
        for name in components:
            _convert_component(run, spec_for(name, geometry))
            release_memory()
    finally:
        run.report.timings["total"] = time.perf_counter() - started
        run.report.save(out)
    failures = run.report.failures()
    if failures:
        raise ValidationError(failures, report=run.report)
    return run.report


@dataclass
class _Inputs:
    """What every package of one component is converted and validated with."""

    inputs: list
    outputs: list
    trace: dict
    check: dict
    reference: dict


def _convert_component(run: _Run, spec: ComponentSpec) -> None:
    g, options, source = run.geometry, run.options, run.source
    lean = spec.name in run.lean
    with run.stage("load", spec.name):
        modules = spec.load(source.path, source.weight_variant, source.use_safetensors)
    layouts = options.attentions if spec.depends_on_attention else options.attentions[:1]
    exports, results, layout_checks = {}, {}, {}
    with run.stage("reference", spec.name):
        io = component_inputs(spec, g, modules, options.seed, per_sample=lean)
        # kept beside the output: a macOS worker checks the compiled models with the same inputs
        save_check_data(run.out, spec.name, io.check, io.inputs, io.reference, spec.compared(g))
        # every layout's torch module against the library's, with the pristine float32 weights
        # (a lean component keeps one layout's module at a time, and runs its batch one sample at a time)
        for attention in layouts:
            export = spec.export_module(modules, attention)
            if spec.depends_on_attention:
                ours = run_module(export, io.check, [t.name for t in io.outputs], per_sample=lean)
                layout_checks[attention] = psnr_check("psnr_layout", "torch", io.reference, ours,
                                                      spec.compared(g), options.bars.layout)
            if not lean:
                exports[attention] = export
            del export
    outputs = io.outputs
    if lean:  # the float32 weights go; the conversion reads them again as float16, without a float32 trace
        del modules
        release_memory()
        with run.stage("load", spec.name, precision="float16"):
            modules, meta = spec.load_lean(source.path, source.weight_variant, meta=False), \
                spec.load_lean(source.path, source.weight_variant, meta=True)
            exports = {attention: _float16(spec.export_module(modules, attention)) for attention in layouts}

    # convert every layout before validating any: validation overwrites the shared weights with the package's
    for attention in layouts:
        label = attention.value if spec.depends_on_attention else None  # None: shared by all layouts
        export = exports[attention]
        precision = spec.precision(g)  # float16, or float32 for a VAE that overflows in float16
        result = PackageResult(run.fp16_repo, attention.value, spec.name, precision,
                               run.rel(run.package_path(run.fp16_repo, attention, spec.name)),
                               target=run.target(palettized=False))
        if attention in layout_checks:
            result.checks.append(layout_checks[attention])
        started = time.perf_counter()
        with run.stage("convert", spec.name, label, precision):
            target = run.target(palettized=False)
            if lean:
                model = convert_lean(spec.export_module(meta, attention), export, io.trace, io.inputs, outputs,
                                     component=spec.name, target=target, variant=label)
            else:
                model = convert_module(export, io.trace, io.inputs, outputs, component=spec.name, target=target,
                                       variant=label, precision=precision)
            apply_metadata(model, run.metadata(spec, attention if label else None, precision), io.inputs, outputs)
            save_package(model, run.out / result.path)
            del model
        result.seconds = time.perf_counter() - started
        results[attention] = result

    # Validation loads each package's weights into the (shared) torch weights in place: from here on the
    # float32 originals are gone, so every float16 package is validated (and its weights matched to the
    # parameters, partly by content) before any palettized one overwrites them with palettized values.
    for attention in layouts:
        label = attention.value if spec.depends_on_attention else None
        result = results[attention]
        path = run.out / result.path
        with run.stage("validate", spec.name, label, result.precision):
            result.checks += _validate(run, spec, path, exports[attention], io, bits=None, float16=result.path)
        _record(run, result, path, spec, layouts)
        if spec.name in CHUNKED and options.chunk_unet and result.status == "passed":
            _chunks(run, spec, attention, result, io)
    for attention in layouts:
        result = results[attention]
        if result.status == "passed" and options.bits is not None:
            label = attention.value if spec.depends_on_attention else None
            _palettized(run, spec, attention, label, result, exports[attention], io, layouts)
    if spec.name in CHUNKED and options.chunks_only:  # the palettized UNets are made: the chunks replace it
        for result in results.values():
            chunked = all(p.status == "passed" for p in run.report.packages
                          if p.variant == result.variant and p.component in CHUNKED[spec.name])
            if result.status == "passed" and chunked:
                shutil.rmtree(run.out / result.path, ignore_errors=True)
                run.report.packages.remove(result)


def _is_lean(run: _Run, spec: ComponentSpec) -> bool:
    """Whether ``spec`` converts memory-lean: as the options say, else when its float32 weights are that large."""
    if not spec.lean or run.options.lean is False:
        return False
    if run.options.lean:
        return True
    folder = run.source.path / spec.needs[0]
    return float32_bytes(folder, run.source.weight_variant.get(spec.needs[0]), source=run.source.id) \
        > LEAN_ABOVE_BYTES


def _float16(module):
    """``module`` with every float32 parameter made float16 (the query weights, once the scale is folded in)."""
    for p in module.parameters():
        if p.dtype == torch.float32:
            p.data = p.data.half()
    return module


def _chunks(run: _Run, spec: ComponentSpec, attention: Attention, whole: PackageResult, io: _Inputs) -> None:
    """UnetChunk1 and UnetChunk2 (a refiner's: UnetRefinerChunk1/2) of one validated float16 UNet package,
    saved and validated together."""
    label, paths = attention.value, []
    started = time.perf_counter()
    with run.stage("chunk", spec.name, label, "float16"):
        chunks = chunk_unet(run.out / whole.path, component=spec.name)
        for component, model in zip(CHUNKED[spec.name], (chunks.first, chunks.second)):
            paths.append(run.package_path(run.fp16_repo, attention, component))
            apply_metadata(model, run.metadata(spec, attention, "float16", component=component),
                           *chunk_features(model, io.inputs, io.outputs))
            save_package(model, paths[-1])
        del chunks, model
    seconds = (time.perf_counter() - started) / 2
    g = run.geometry
    with run.stage("validate", f"{spec.name}_chunks", label, "float16"):
        checks = validate_chunks(run.out / whole.path, *paths, io.check, io.reference, spec.compared(g),
                                 run.options.bars.shipped(None))
    for component, path, chunk_checks in zip(CHUNKED[spec.name], paths, checks):
        result = PackageResult(run.fp16_repo, label, component, "float16", run.rel(path), seconds=seconds,
                               target=whole.target, checks=chunk_checks)
        if result.status == "failed":
            shutil.rmtree(path, ignore_errors=True)
        else:
            result.size_bytes = package_size(path)
        run.report.packages.append(result)


def _palettized(run: _Run, spec: ComponentSpec, attention: Attention, label: str | None,
                float16: PackageResult, export, io: _Inputs, layouts: tuple[Attention, ...]) -> None:
    """The palettized repo's package for one float16 package: palettized, or a float16 copy (VAE)."""
    path = run.package_path(run.palettized_repo, attention, spec.name)
    if not spec.palettize:  # Apple keeps these float16 in palettized repos
        link_package(run.out / float16.path, path)
        copy = PackageResult(run.palettized_repo, attention.value, spec.name, float16.precision, run.rel(path),
                             float16.size_bytes, 0.0, float16.path, float16.target, list(float16.checks))
        _record(run, copy, path, spec, layouts)
        return
    precision = precision_label(run.options.bits, run.options.group_size)
    result = PackageResult(run.palettized_repo, attention.value, spec.name, precision, run.rel(path),
                           target=run.target(palettized=True),
                           checks=[c for c in float16.checks if c.name == "psnr_layout"])
    started = time.perf_counter()
    with run.stage("palettize", spec.name, label, precision):
        model = palettize_package(run.out / float16.path, bits=run.options.bits, component=spec.name,
                                  group_size=run.options.group_size, target=run.target(palettized=True))
        apply_metadata(model, run.metadata(spec, attention if label else None, precision), io.inputs, io.outputs)
        save_package(model, path)
        del model
    result.seconds = time.perf_counter() - started
    with run.stage("validate", spec.name, label, precision):
        result.checks += _validate(run, spec, path, export, io, bits=run.options.bits, float16=float16.path)
    _record(run, result, path, spec, layouts)


def _record(run: _Run, result: PackageResult, path: Path, spec: ComponentSpec,
            layouts: tuple[Attention, ...]) -> None:
    """Add a result to the report; delete a failed package; copy a shared one to the other layouts."""
    if result.status == "failed":
        shutil.rmtree(path, ignore_errors=True)
        run.report.packages.append(result)
        return
    result.size_bytes = result.size_bytes or package_size(path)
    run.report.packages.append(result)
    if spec.depends_on_attention:
        return
    for other in run.options.attentions:
        if other in layouts:
            continue
        repo = run.fp16_repo if result.repo == run.fp16_repo else run.palettized_repo
        copy = run.package_path(repo, other, spec.name)
        link_package(path, copy)
        run.report.packages.append(PackageResult(
            repo, other.value, spec.name, result.precision, run.rel(copy), result.size_bytes, 0.0,
            result.path, result.target, list(result.checks)))


def _validate(run: _Run, spec: ComponentSpec, path: Path, export, io: _Inputs, *, bits: int | None,
              float16: str) -> list[Check]:
    """Every check of one saved package; ``float16`` names the float16 package it was made from."""
    variant = path.parent.parent.name if spec.depends_on_attention else None
    precision = precision_label(bits, run.options.group_size)
    checks, accounting = validate_package(spec, run.geometry, run.options.bars, path, export, io, bits=bits,
                                          float16=None if bits is None else run.accountings[float16],
                                          stage=lambda name: run.stage(name, spec.name, variant, precision))
    if bits is None:  # parameters are found in the float16 package; the palettized one is held to those names
        run.accountings[float16] = accounting
    return checks


def component_inputs(spec: ComponentSpec, geometry: Geometry, modules: dict, seed: int, *,
                     per_sample: bool = False) -> _Inputs:
    """The features, trace inputs (``seed``), check inputs (``seed + 1``) and float32 reference of a component
    (computed one sample at a time with ``per_sample``: see :func:`run_module`)."""
    outputs = resolve_outputs(spec, geometry, modules)
    io = _Inputs(spec.inputs(geometry), outputs, spec.sample_inputs(geometry, seed),
                 spec.sample_inputs(geometry, seed + 1), {})
    io.reference = run_module(spec.reference(modules), io.check, [t.name for t in outputs], per_sample=per_sample)
    return io
