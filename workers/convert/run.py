"""One conversion run: the components it converts, which of them convert memory-lean, where its packages go,
its report, and its steps as timed, followed events (:meth:`Run.stage`)."""

from __future__ import annotations

import copy
import os
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Callable, Iterator

from workers.components import CHUNKED, COMPONENTS, ON_REQUEST, SIZE_INDEPENDENT
from workers.convert.geometry import Geometry
from workers.convert.program import PackageMetadata
from workers.convert.specs import SPECS, ComponentSpec, spec_for
from workers.errors import OptionsError
from workers.memory import release_memory
from workers.names import (Attention, mixed_repo_name, package_file_name, packages_dir, repo_names, size_name,
                           variant_name)
from workers.options import ConvertOptions
from workers.progress import Counter, Steps, model_class, observe_tqdm
from workers.source.source import Source
from workers.source.weights import loaded_files
from workers.validate.report import Event, Report, precision_bits
from workers.versions import converter_id, toolchain


def select_components(source: Source, options: ConvertOptions) -> list[str]:
    """The components to convert, in conversion order: ``options.components``, or every one the source has (those
    converted on request, the ControlledUnet, when their option asks); refuses ones the source lacks."""
    wanted = options.components
    available = [c for c in COMPONENTS
                 if all(need in source.components for need in SPECS[c].needs)]
    if wanted is None:
        return [c for c in available if c not in ON_REQUEST or getattr(options, ON_REQUEST[c])]
    missing = [c for c in wanted if c not in available]
    if missing:
        raise OptionsError(f"the source has no {', '.join(missing)}",
                           hint=f"Choose from {', '.join(available)}.")
    return [c for c in COMPONENTS if c in wanted]


def converts_lean(spec: ComponentSpec, source: Source, options: ConvertOptions) -> bool:
    """Whether ``spec`` converts memory-lean (:mod:`workers.convert.lean`): as the options say, else whenever its
    weights are safetensors (the lean loader reads them tensor by tensor; pickled weights take the float32 path).

    Lean is the default for every UNet, not only those too large to hold twice: on the SD 1.5 architecture it
    converts in 0.36x (``original``) and 0.48x (``split_einsum_v2``) the float32 path's time, and a UNet's whole
    conversion and validation take 0.81x the time at 0.81x the peak (``bench/full_size.py``, one run), for the
    same program."""
    if not spec.lean or options.lean is False:
        return False
    if options.lean:
        return True
    folder = source.path / spec.needs[0]
    return bool(loaded_files(folder, source.weight_variant.get(spec.needs[0])))


class Run:
    """One conversion run: what it converts, where its packages go, how it reports them."""

    def __init__(self, source: Source, out: Path, options: ConvertOptions, geometry: Geometry,
                 on_event: Callable[[Event], None] | None, *,
                 sizes: list[tuple[tuple[int, int], Geometry]] = ()) -> None:
        self.source, self.out, self.options, self.geometry = source, out, options, geometry
        self.sizes = list(sizes)  # the extra image sizes, each with its geometry
        self.size: tuple[int, int] | None = None  # an extra image size's run (:meth:`at_size`); None: the native
        self.on_event = on_event or (lambda event: None)
        self.fp16_repo, self.palettized_repo = repo_names(source.name)
        if options.mixed is not None:  # a mixed-bit target's palettized packages make the -mixed-bit repo
            self.palettized_repo = mixed_repo_name(source.name)
        self.recipes: dict = {}  # component -> its mixed-bit recipe (workers.compress.mixed), shared by every size
        self.converter = converter_id()
        self.report = Report(
            source=source.provenance(), options=options.record(xl=geometry.xl),
            geometry=geometry.to_dict(), toolchain=toolchain(),
            repos={"float16": self.fp16_repo, "palettized": self.palettized_repo},
        )
        # the sizes made beside the native one (a requested native size is that one, not an extra)
        self.report.options["resolutions"] = [size_name(size) for size, _ in self.sizes]
        # the components whose UNet converts memory-lean (their weight headers read once, here)
        self.lean = {name for name in select_components(source, options)
                     if converts_lean(spec_for(name, geometry), source, options)}
        weights = sum(os.path.getsize(source.path / name) for names in source.weight_files.values()
                      for name in names if source.path and os.path.isfile(source.path / name))
        self.steps = Steps(self.planned_steps(), model_class(weights, xl=geometry.xl,
                                                             latent=(geometry.latent_height, geometry.latent_width)))

    def planned_steps(self) -> int:
        """How many top-level stages :func:`workers.convert.component.convert_component` runs for this run's components (a package that fails
        validation skips some; a stage beyond the plan raises the total, see workers.progress.Steps)."""
        total = 0
        names = select_components(self.source, self.options)
        sized = [name for name in names if name not in SIZE_INDEPENDENT] * len(self.sizes)
        if self.options.mixed is not None:  # a mixed-bit recipe's analysis, once per component (native size)
            total += sum(1 for name in names if spec_for(name, self.geometry).palettize)
        for name in names + sized:
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
        """One step of the run: its start, end (timed, in the report) or failure as events, with progress."""
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
        """What a package of this run says about itself (``component``: a chunk's name)."""
        return PackageMetadata(
            source_id=self.source.id, source_sha=self.source.sha, component=component or spec.name,
            attention=attention.value if attention else None, precision=precision,
            converter=self.converter, license=self.source.license,
            description=spec.description + (f" (chunk {component[-1]} of 2)" if component else ""),
            deployment_target=self.target(palettized=precision_bits(precision) is not None))

    def at_size(self, size: tuple[int, int], geometry: Geometry) -> "Run":
        """This run at an extra image size (width, height): the same report, steps and events; its packages go to
        the ``<layout>/<W>x<H>`` variants."""
        sized = copy.copy(self)
        sized.size, sized.geometry = size, geometry
        return sized

    @property
    def size_label(self) -> str | None:
        """What the stages shared by every layout (load, reference) are labelled with: the extra size's
        ``<W>x<H>``, or None at the native size."""
        return size_name(self.size) if self.size else None

    def variant(self, attention: Attention) -> str:
        """The variant a package of this run in ``attention``'s layout belongs to (:func:`workers.names.variant_name`)."""
        return variant_name(attention, self.size)

    def label(self, spec: ComponentSpec, attention: Attention) -> str | None:
        """The variant a package is named by in events and timings: its variant, for a component converted per
        layout; the size (or None, at the native size) for one shared by every layout."""
        return self.variant(attention) if spec.depends_on_attention else self.size_label

    def package_path(self, repo: str, attention: Attention, component: str) -> Path:
        """Where a package of this run goes."""
        return packages_dir(self.out, repo, self.variant(attention)) / package_file_name(self.source.id, component)

    def rel(self, path: Path) -> str:
        """A path as the report records it (relative to the output folder)."""
        return path.relative_to(self.out).as_posix()
