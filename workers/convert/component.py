"""One component of a run converted: load → reference and layout checks → float16 program per layout → validate
→ chunks → palettize → validate, the checks in the shared order of :mod:`workers.validate.sequence`.

Every layout is converted before any is validated: validation reads each package's weights into the shared
torch module, so the float32 originals must have served every conversion first.  A package that fails is
deleted and recorded as failed; a layout-independent component's packages are placed in every layout's folder.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from workers.components import CHUNKED, SIZE_INDEPENDENT
from workers.convert.chunk import chunk_features, chunk_unet
from workers.convert.program import apply_metadata, convert_lean, convert_module, save_package
from workers.convert.run import Run
from workers.convert.specs import ComponentSpec
from workers.compress.palettize import palettize_package
from workers.memory import release_memory
from workers.names import Attention, check_data_name, variant_layout
from workers.package.files import link_package, package_size, share_weights
from workers.validate.checks import run_module
from workers.validate.compiled import save_check_data
from workers.validate.report import PackageResult, precision_label
from workers.validate.sequence import ComponentChecks


def convert_component(run: Run, spec: ComponentSpec) -> None:
    """Every package of one component, validated and recorded in ``run``'s report."""
    g, options, source = run.geometry, run.options, run.source
    lean = spec.name in run.lean
    with run.stage("load", spec.name, run.size_label):
        modules = spec.load(source.path, source.weight_variant, source.use_safetensors)
    layouts = options.attentions if spec.depends_on_attention else options.attentions[:1]
    with run.stage("reference", spec.name, run.size_label):
        # a lean component keeps one layout's module at a time, and runs its batch one sample at a time
        checks = ComponentChecks.start(spec, g, options.bars, modules, options.seed, per_sample=lean)
        # kept beside the output: a macOS worker checks the compiled models with the same inputs
        save_check_data(run.out, check_data_name(spec.name, run.variant(layouts[0])), checks.io.check, checks.io.inputs, checks.io.reference, checks.compared)
        exports = checks.check_layouts(modules, layouts, keep=not lean, per_sample=lean)
    if options.mixed is not None and spec.palettize and spec.name not in run.recipes:
        _analysed(run, spec, checks, modules)  # while the float32 weights are loaded
    meta = None
    if lean:  # the float32 weights go; the conversion reads them again as float16, without a float32 trace
        del modules
        release_memory()
        with run.stage("load", spec.name, run.size_label, precision="float16"):
            modules = spec.load_lean(source.path, source.weight_variant, meta=False)
            meta = spec.load_lean(source.path, source.weight_variant, meta=True)
            exports = {attention: _float16(spec.export_module(modules, attention)) for attention in layouts}
    results = {attention: _converted(run, spec, checks, attention, exports[attention], meta) for attention in layouts}
    for attention, result in results.items():  # every float16 package before any palettized one
        _validated(run, spec, checks, result, exports[attention], bits=None)
        if spec.name in CHUNKED and options.chunk_unet and result.status == "passed":
            _chunks(run, spec, checks, attention, result)
    for attention, result in results.items():
        if result.status == "passed" and options.bits is not None:
            _palettized(run, spec, checks, attention, result, exports[attention], modules)
    if spec.name in CHUNKED and options.chunks_only:  # the palettized UNets are made: the chunks replace it
        for result in results.values():
            chunked = all(p.status == "passed" for p in run.report.packages
                          if p.variant == result.variant and p.component in CHUNKED[spec.name])
            if result.status == "passed" and chunked:
                shutil.rmtree(run.out / result.path, ignore_errors=True)
                run.report.packages.remove(result)


def _analysed(run: Run, spec: ComponentSpec, checks: ComponentChecks, modules: dict) -> None:
    """The mixed-bit recipe of one component (:mod:`workers.compress.mixed`), analysed on its float32 module and
    written to the mixed-bit repo's ``recipes/``; every size and layout uses it."""
    from workers.compress.mixed import analyse_component, save_recipe
    from workers.package.plot_mixed import plot_file_name, size_psnr_svg

    names = [t.name for t in checks.io.outputs]
    # two timesteps: the first sample of the check inputs and of the trace inputs, as one batch
    inputs = {k: torch.cat([v[:1], checks.io.trace[k][:1]]) if v.ndim else v for k, v in checks.io.check.items()}
    reference = spec.reference(modules)

    def forward() -> torch.Tensor:  # every output (a ControlNet's residuals), flattened into one
        # an SDXL UNet's attention holds gigabytes per sample: one at a time
        outputs = run_module(reference, inputs, names, per_sample=run.geometry.xl)
        return torch.cat([torch.from_numpy(outputs[name]).reshape(-1) for name in names])

    with run.stage("analyse", spec.name, run.size_label), _stored_analysis(run, spec.name) as (analysed, store):
        recipe = analyse_component(spec.name, reference, forward, run.options.mixed, seed=run.options.seed,
                                   min_weights=run.options.mixed_min_weights, analysed=analysed)
        if recipe is not None and not recipe.reused:
            store(recipe.sensitivity)
        if recipe is not None:
            file = save_recipe(run.out / run.palettized_repo, run.source.id, recipe, run.source.sha)
            summary = recipe.summary(run.rel(file))
            plot = file.with_name(plot_file_name(file.name))  # beside it: the card shows it
            plot.write_text(size_psnr_svg(spec.name, summary))
            run.report.recipes[spec.name] = {**summary, "plot": run.rel(plot)}
    run.recipes[spec.name] = recipe  # None: no layer large enough, the component ships float16


@contextlib.contextmanager
def _stored_analysis(run: Run, component: str) -> Iterator[tuple[Any, Callable[[Any], None]]]:
    """The component's analysis stored by an earlier conversion of the same weights (in the options' ``analyses``
    folder, the service's scratch folder; :func:`workers.compress.mixed.stored_analysis`), or None and a function
    storing this one.  Nothing is read or kept without a folder, or for a source without a commit (a local folder)."""
    from workers.compress.mixed import analysis_key, stored_analysis

    source, g = run.source, run.geometry
    commits = [source.sha] + [extra.sha for _, extra in source.extras]
    if run.options.analyses is None or any(sha is None for sha in commits):
        yield None, lambda sensitivity: None
        return
    identity = {"source": source.id, "sha": source.sha, "checkpoint": source.checkpoint_sha256,
                "lora_scale": source.lora_scale, "extras": [[role, extra.id, extra.sha] for role, extra in source.extras],
                "component": component, "seed": run.options.seed, "min_weights": run.options.mixed_min_weights,
                "latent": [g.latent_height, g.latent_width], "batch": g.batch_size}
    with stored_analysis(Path(run.options.analyses), analysis_key(identity)) as found:
        yield found


def _converted(run: Run, spec: ComponentSpec, checks: ComponentChecks, attention: Attention, export,
               meta: dict | None) -> PackageResult:
    """The float16 package of one layout, converted and saved (not yet validated)."""
    io, label = checks.io, run.label(spec, attention)
    precision = spec.precision(run.geometry)  # float16, or float32 for a VAE that overflows in float16
    result = PackageResult(run.fp16_repo, run.variant(attention), spec.name, precision,
                           run.rel(run.package_path(run.fp16_repo, attention, spec.name)),
                           target=run.target(palettized=False))
    started = time.perf_counter()
    with run.stage("convert", spec.name, label, precision):
        if meta is not None:
            model = convert_lean(spec.export_module(meta, attention), export, io.trace, io.inputs, io.outputs,
                                 component=spec.name, target=result.target, variant=label)
        else:
            model = convert_module(export, io.trace, io.inputs, io.outputs, component=spec.name,
                                   target=result.target, variant=label, precision=precision)
        apply_metadata(model, run.metadata(spec, attention if spec.depends_on_attention else None, precision),
                       io.inputs, io.outputs)
        save_package(model, run.out / result.path)
        del model
    result.seconds = time.perf_counter() - started
    return result


def _validated(run: Run, spec: ComponentSpec, checks: ComponentChecks, result: PackageResult, export, *,
               bits: int | float | None, widths: dict[str, int] | None = None) -> None:
    """Every check of one saved package (float16, or palettized to ``bits``; a mixed-bit one to ``widths`` per
    constant, ``bits`` their average), then recorded."""
    path, attention = run.out / result.path, variant_layout(result.variant)
    label = run.label(spec, attention)
    with run.stage("validate", spec.name, label, result.precision):
        result.checks += checks.check_package(path, export, attention.value, bits=bits, widths=widths,
                                              stage=lambda name: run.stage(name, spec.name, label, result.precision))
    _record(run, result, path, spec)


def _float16(module):
    """``module`` with every float32 parameter made float16 (the query weights, once the scale is folded in)."""
    for p in module.parameters():
        if p.dtype == torch.float32:
            p.data = p.data.half()
    return module


def _chunks(run: Run, spec: ComponentSpec, checks: ComponentChecks, attention: Attention,
            whole: PackageResult) -> None:
    """UnetChunk1 and UnetChunk2 (a refiner's: UnetRefinerChunk1/2) of one validated float16 UNet package,
    saved and validated together."""
    label, paths = run.label(spec, attention), []
    started = time.perf_counter()
    with run.stage("chunk", spec.name, label, "float16"):
        chunks = chunk_unet(run.out / whole.path, component=spec.name)
        for component, model in zip(CHUNKED[spec.name], (chunks.first, chunks.second)):
            paths.append(run.package_path(run.fp16_repo, attention, component))
            apply_metadata(model, run.metadata(spec, attention, "float16", component=component),
                           *chunk_features(model, checks.io.inputs, checks.io.outputs))
            save_package(model, paths[-1])
        del chunks, model
    seconds = (time.perf_counter() - started) / 2
    with run.stage("validate", f"{spec.name}_chunks", label, "float16"):
        found = checks.check_chunks(run.out / whole.path, *paths)
    for component, path, chunk_checks in zip(CHUNKED[spec.name], paths, found):
        result = PackageResult(run.fp16_repo, run.variant(attention), component, "float16", run.rel(path),
                               seconds=seconds,
                               target=whole.target, checks=chunk_checks)
        if result.status == "failed":
            shutil.rmtree(path, ignore_errors=True)
        else:
            result.size_bytes = package_size(path)
        run.report.packages.append(result)


def _palettized(run: Run, spec: ComponentSpec, checks: ComponentChecks, attention: Attention,
                float16: PackageResult, export, modules: dict) -> None:
    """The palettized repo's package for one float16 package: palettized (uniformly, or to the component's
    mixed-bit recipe: ``modules`` are what ``export`` was built from), or a float16 copy (VAE)."""
    path = run.package_path(run.palettized_repo, attention, spec.name)
    mixed = run.options.mixed is not None
    if not spec.palettize or (mixed and run.recipes.get(spec.name) is None):
        # Apple keeps these float16 in palettized repos; so is a component a mixed-bit recipe found nothing in
        link_package(run.out / float16.path, path)
        copy = PackageResult(run.palettized_repo, run.variant(attention), spec.name, float16.precision, run.rel(path),
                             float16.size_bytes, 0.0, float16.path, float16.target, list(float16.checks))
        _record(run, copy, path, spec)
        return
    label = run.label(spec, attention)
    recipe = run.recipes.get(spec.name) if mixed else None
    widths = None if recipe is None else recipe.constant_widths(checks.accountings[float16.variant],
                                                                           spec.reference(modules), export)
    precision = precision_label(float(recipe.average) if recipe else run.options.bits, run.options.group_size)
    result = PackageResult(run.palettized_repo, run.variant(attention), spec.name, precision, run.rel(path),
                           target=run.target(palettized=True))
    started = time.perf_counter()
    with run.stage("palettize", spec.name, label, precision):
        model = palettize_package(run.out / float16.path, bits=run.options.uniform_bits or 6, component=spec.name,
                                  group_size=run.options.group_size, target=result.target, widths=widths)
        apply_metadata(model, run.metadata(spec, attention if spec.depends_on_attention else None, precision),
                       checks.io.inputs, checks.io.outputs)
        save_package(model, path)
        del model
    result.seconds = time.perf_counter() - started
    _validated(run, spec, checks, result, export, bits=recipe.average if recipe else run.options.bits, widths=widths)


def _record(run: Run, result: PackageResult, path: Path, spec: ComponentSpec) -> None:
    """Add a result to the report; delete a failed package; copy a shared one to the other layouts."""
    if result.status == "failed":
        shutil.rmtree(path, ignore_errors=True)
        run.report.packages.append(result)
        return
    result.size_bytes = result.size_bytes or package_size(path)
    run.report.packages.append(result)
    if spec.depends_on_attention:
        return
    for other in run.options.attentions[1:]:  # a shared component is converted in the first layout only
        repo = run.fp16_repo if result.repo == run.fp16_repo else run.palettized_repo
        copy = run.package_path(repo, other, spec.name)
        link_package(path, copy)
        run.report.packages.append(PackageResult(
            repo, run.variant(other), spec.name, result.precision, run.rel(copy), result.size_bytes, 0.0,
            result.path, result.target, list(result.checks)))


def share_component(run: Run, name: str) -> None:
    """A component whose program does not depend on the image size (a text encoder), at an extra size: its native
    packages placed in that size's variants (hard links), recorded as copies."""
    native = [p for p in run.report.packages if p.component == name and "/" not in p.variant and p.status == "passed"]
    for package in native:
        path = run.package_path(package.repo, variant_layout(package.variant), name)
        link_package(run.out / package.path, path)
        run.report.packages.append(PackageResult(
            package.repo, run.variant(variant_layout(package.variant)), name, package.precision, run.rel(path),
            package.size_bytes, 0.0, package.shared_from or package.path, package.target, list(package.checks)))


def share_size_weights(run: Run) -> int:
    """Every package of an extra size's run (copies in other layouts and the palettized repo too) given the weight
    file of its native counterpart (same repo, layout, component and precision) where the bytes are the same, as they are for one model's weights at any size
    (:func:`workers.package.files.share_weights`); returns the bytes shared."""
    native = {(p.repo, p.variant, p.component, p.precision): p for p in run.report.packages
              if "/" not in p.variant and p.status == "passed"}
    shared = 0
    for package in run.report.packages:
        if package.weights_from or package.status != "passed" or package.component in SIZE_INDEPENDENT or \
                package.variant not in {run.variant(a) for a in run.options.attentions}:
            continue
        twin = native.get((package.repo, variant_layout(package.variant).value, package.component, package.precision))
        if twin is None or not (run.out / package.path).is_dir():
            continue
        found = share_weights(run.out / twin.path, run.out / package.path)
        if found:
            package.weights_from = twin.path
            shared += found
    return shared
