"""Re-validation of an output tree (``coreml-publish validate``): every check again, against the source its
report names.

What a user runs before trusting packages that were moved, edited or downloaded: the tree is a folder
written by ``convert`` (or a repo downloaded with ``snapshot_download``, with the conversion's
``report.json`` placed beside it).  Every package the report lists is checked again as the conversion
checked it (structure, weights, the executed program, the torch read-back, Core ML on macOS) with the
inputs and geometry the report records, in the conversion's own order (:mod:`workers.validate.sequence`);
the report is rewritten with the new figures.  Nothing is deleted:
the files are the user's.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from workers.components import CHUNKED, COMPONENTS, whole_of
from workers.convert.geometry import Geometry
from workers.convert.specs import spec_for
from workers.errors import OptionsError, OutputError
from workers.memory import release_memory
from workers.names import REPORT_FILE, variant_layout, variant_size
from workers.source.source import Source
from workers.validate.report import Check, Event, PackageResult, Report, precision_bits
from workers.validate.sequence import ComponentChecks
from workers.validate.thresholds import ValidationBars


def read_report(out: Path) -> Report:
    """The report.json of an output tree (OutputError when there is none or it is unreadable)."""
    return Report.load(out, hint="Point at a folder written by convert, or put the conversion's report.json next "
                                 "to the downloaded repo.")


def package_location(out: Path, package: PackageResult) -> Path:
    """Where a reported package is: at its recorded path, or inside a downloaded repo (no repo folder)."""
    path = out / package.path
    if path.exists() or (out / package.repo).is_dir():
        return path
    return out / Path(package.path).relative_to(package.repo)


def in_tree(out: Path, package: PackageResult) -> bool:
    """Whether the tree holds this package.

    A conversion folder holds every package it reported.  A downloaded repo holds one repo's packages, and
    both repos use the same file names, so a package there is the reported one when its metadata says
    the same precision (the float16 VAE of a palettized repo is both repos' VAE).
    """
    if (out / package.repo).is_dir():
        return True
    path = package_location(out, package)
    if not path.exists():
        return False
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    try:
        spec.ParseFromString((path / "Data" / "com.apple.CoreML" / "model.mlmodel").read_bytes())
    except Exception:  # a damaged package: it is checked, and fails, rather than passed over
        return True
    return spec.description.metadata.userDefined.get("precision") == package.precision


def verify_output(out: Path, source: Source, bars: ValidationBars | None = None,
                  on_event: Callable[[Event], None] | None = None) -> Report:
    """Check every package of the tree at ``out`` again; rewrite and return its report.

    ``source`` is the fetched source the report names (its sha is compared).  ``bars`` default to the
    report's own.  Raises OptionsError for a tree without a usable report or a source that does not match.
    """
    report = read_report(out)
    if source.path is None:
        raise OptionsError(f"{source.id} has not been fetched", hint="Call fetch_source first.")
    if report.source.get("sha") and source.sha and report.source["sha"] != source.sha:
        raise OptionsError(f"the report was made from commit {report.source['sha']}, not {source.sha}",
                           hint="Check against the source commit the report names.")
    bars = bars or ValidationBars.from_dict(report.options["bars"])
    geometry = Geometry(**report.geometry)
    seed = int(report.options.get("seed", 0))
    notify = on_event or (lambda event: None)
    conversion = any((out / repo).is_dir() for repo in report.repos.values())
    present = [p for p in report.packages if conversion or in_tree(out, p)]
    if not present:
        raise OutputError(f"{out} holds none of the packages its {REPORT_FILE} lists",
                           hint="Point at the folder convert wrote, or at a downloaded repo with its report.json.")
    for component in COMPONENTS:  # UNet chunks are checked with their UNet, chained
        packages = [p for p in present if p.component == component or whole_of(p.component) == component]
        for size in dict.fromkeys(variant_size(p.variant) for p in packages):  # the native size first
            sized = geometry if size is None else geometry.at_size(size)
            _verify_component(out, source, spec_for(component, sized), sized, bars, seed,
                              [p for p in packages if variant_size(p.variant) == size], notify)
            release_memory()
    report.save(out)
    report.packages = present  # what was checked; the file keeps every package
    return report


def _verify_component(out: Path, source: Source, spec, geometry: Geometry, bars: ValidationBars, seed: int,
                      packages: list[PackageResult], notify: Callable[[Event], None]) -> None:
    """Every package of one component checked again, in the conversion's order (workers.validate.sequence)."""
    modules = spec.load(source.path, source.weight_variant, source.use_safetensors)
    checks = ComponentChecks.start(spec, geometry, bars, modules, seed)
    layouts = tuple(dict.fromkeys(variant_layout(p.variant) for p in packages))
    exports = {a.value: module for a, module in checks.check_layouts(modules, layouts).items()}
    chunks = [p for p in packages if whole_of(p.component)]
    packages = [p for p in packages if not whole_of(p.component)]
    float16 = [p for p in packages if precision_bits(p.precision) is None]
    for package in float16 + [p for p in packages if p not in float16]:
        label = dict(variant=package.variant, precision=package.precision)
        notify(Event("validate", spec.name, "start", **label))
        path, layout = package_location(out, package), variant_layout(package.variant).value
        if not path.exists():
            package.checks = checks.layout_check(layout) + [
                Check("structure", "failed", "package", detail=f"{package.path} is missing")]
        else:
            package.checks = checks.check_package(path, exports[layout], layout,
                                                  bits=precision_bits(package.precision))
        notify(Event("validate", spec.name, "failed" if package.status == "failed" else "done", **label,
                     detail="; ".join(package.failures())))
    _verify_chunks(out, spec, checks, chunks, packages, notify)


def _verify_chunks(out: Path, spec, checks: ComponentChecks, chunks: list[PackageResult],
                   unets: list[PackageResult], notify: Callable[[Event], None]) -> None:
    """Both chunks of each variant, chained; against the whole float16 UNet's program when the tree has it."""
    io = checks.io
    for variant in dict.fromkeys(p.variant for p in chunks):
        pair = {p.component: p for p in chunks if p.variant == variant}
        label = dict(variant=variant, precision="float16")
        notify(Event("validate", f"{spec.name}_chunks", "start", **label))
        paths = [package_location(out, pair[c]) if c in pair else None for c in CHUNKED[spec.name]]
        whole = next((package_location(out, p) for p in unets if p.variant == variant and p.precision == "float16"
                      and package_location(out, p).exists()), None)
        if all(path is not None and path.exists() for path in paths):
            features = ([(t.name, tuple(t.shape), t.dtype) for t in io.inputs],
                        [(t.name, tuple(t.shape), t.dtype) for t in io.outputs])
            found = checks.check_chunks(whole, *paths, features=features)
        else:
            missing = Check("structure", "failed", "package", detail="the other chunk of the pair is missing")
            found = ([missing], [missing])
        for component, chunk_checks in zip(CHUNKED[spec.name], found):
            if component in pair:
                pair[component].checks = chunk_checks
        failed = any(p.status == "failed" for p in pair.values())
        notify(Event("validate", f"{spec.name}_chunks", "failed" if failed else "done", **label))
