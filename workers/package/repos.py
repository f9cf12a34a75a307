"""Package step: turn a conversion output into the repo trees that get published.

For each of the two repos (float16, palettized) and each variant: compiled resources (via the compile
step, macOS) next to the packages, one deterministic zip per variant, and the model card::

    OUT/<repo-name>/README.md
    OUT/<repo-name>/<repo-name>_<variant>_compiled.zip
    OUT/<repo-name>/<variant>/{compiled,packages}/...

Only complete variants are packaged and published: :func:`required_components` and the tokenizer files,
checked by :func:`missing_parts` for every caller (:func:`check_complete` on a report, :func:`check_tree`
on a tree on disk).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from workers.errors import OptionsError, SourceError
from workers.package.card import render_card, zip_name
from workers.package.compile import bundle_variant
from workers.names import COMPILED_NAMES, REPORT_FILE, compiled_file_name

ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed, so the same files always make the same bytes
STORED_SUFFIXES = (".bin",)  # weights do not compress; storing them keeps zipping fast

# What the Swift pipeline loads from every published variant.  Each requirement is met by any one of its
# alternatives, an alternative being package components that must all be there: the UNet whole, or in
# two chunks.  Other components (vae_encoder, safety_checker, an SDXL refiner UNet) are optional.
REQUIRED_COMPONENTS: dict[str, tuple[tuple[str, ...], ...]] = {
    "text_encoder": (("text_encoder",),),
    "unet": (("unet",), ("unet_chunk1", "unet_chunk2")),
    "vae_decoder": (("vae_decoder",),),
}
# Swift's StableDiffusionXLPipeline: TextEncoder2 always; TextEncoder unless the UNet is a refiner's
XL_REQUIRED_COMPONENTS = {"text_encoder": REQUIRED_COMPONENTS["text_encoder"],
                          "text_encoder_2": (("text_encoder_2",),),
                          **{k: v for k, v in REQUIRED_COMPONENTS.items() if k != "text_encoder"}}
REFINER_REQUIRED_COMPONENTS = {k: v for k, v in XL_REQUIRED_COMPONENTS.items() if k != "text_encoder"}


def required_components(pipeline: str = "sd") -> dict[str, tuple[tuple[str, ...], ...]]:
    """The requirements of a variant of an SD 1.x/2.x (``sd``), SDXL base or SDXL refiner pipeline."""
    return {"sd": REQUIRED_COMPONENTS, "sdxl": XL_REQUIRED_COMPONENTS,
            "sdxl-refiner": REFINER_REQUIRED_COMPONENTS}[pipeline]


def pipeline_of(report: dict, components: Iterable[str] = ()) -> str:
    """Which pipeline a conversion report (its geometry's ``time_ids``) describes; without a report, what the
    components say (a second text encoder without a first: a refiner)."""
    time_ids = (report.get("geometry") or {}).get("time_ids")
    if time_ids is not None:
        return {0: "sd", 6: "sdxl"}.get(time_ids, "sdxl-refiner")
    components = set(components)
    if "text_encoder_2" not in components:
        return "sd"
    return "sdxl" if "text_encoder" in components else "sdxl-refiner"


def source_tokenizer(source_dir: Path) -> Path:
    """The tokenizer folder whose vocab.json and merges.txt ship: ``tokenizer``, or a refiner's ``tokenizer_2``
    (SDXL's two share the vocabulary; the Swift pipeline pads the second with ``!`` itself)."""
    first = source_dir / "tokenizer"
    return first if first.is_dir() or not (source_dir / "tokenizer_2").is_dir() else source_dir / "tokenizer_2"
TOKENIZER_FILES = ("vocab.json", "merges.txt")  # in every compiled folder, beside the .mlmodelc resources


@dataclass(frozen=True)
class RepoTree:
    """One repo ready to publish: its local folder and what it holds."""

    kind: str  # "float16" or "palettized"
    name: str  # repo name (the part after the namespace)
    folder: Path
    variants: tuple[str, ...]
    compiled: bool


def load_report(out: Path) -> dict:
    """The conversion report in ``out``; refuses a missing or failed one."""
    path = out / REPORT_FILE
    if not path.is_file():
        raise OptionsError(f"{out} holds no {REPORT_FILE}", hint="Run `coreml-publish convert SOURCE -o OUT` first.")
    report = json.loads(path.read_text())
    if not report.get("passed"):
        raise OptionsError(f"the conversion in {out} did not pass validation; nothing is published",
                           hint="Fix the failures listed in report.json and convert again.")
    return report


def write_zip(folder: Path, target: Path, top: str) -> Path:
    """Zip ``folder``'s contents under one top-level folder ``top``; byte-identical for identical input.

    Files are streamed from disk; entries are sorted with fixed dates and permissions.
    """
    tmp = target.with_name(f".{target.name}.partial")
    entries = sorted(folder.rglob("*"), key=lambda p: p.relative_to(folder).as_posix())
    with zipfile.ZipFile(tmp, "w", allowZip64=True) as archive:
        for directory in [folder] + [p for p in entries if p.is_dir()]:
            rel = directory.relative_to(folder).as_posix()
            name = f"{top}/" if rel == "." else f"{top}/{rel}/"
            info = zipfile.ZipInfo(name, ZIP_DATE)
            info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
            archive.writestr(info, b"")
        for path in (p for p in entries if p.is_file()):
            info = zipfile.ZipInfo(f"{top}/{path.relative_to(folder).as_posix()}", ZIP_DATE)
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_STORED if path.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w", force_zip64=True) as sink:
                shutil.copyfileobj(source, sink, 1 << 20)
    os.replace(tmp, target)
    return target


def _variants(report: dict, folder: Path) -> tuple[str, ...]:
    """The attention layouts of the run that have packages in this repo folder, in the run's order."""
    return tuple(v for v in report["options"]["attentions"] if (folder / v / "packages").is_dir())


def _variant_packages(report: dict, repo: str, variant: str, out: Path) -> dict[str, Path]:
    return {p["component"]: out / p["path"] for p in report["packages"]
            if p["repo"] == repo and p["variant"] == variant}


def package_output(out: Path, *, namespace: str, compiled: bool, compiler: tuple[str, ...] | None = None,
                   source_dir: Path | None = None, on_step: Callable[[str], None] | None = None,
                   predict: Callable | None = None) -> list[RepoTree]:
    """Lay out both repo trees of a conversion output for publishing under ``namespace``.

    ``source_dir`` holds the source's tokenizer and card (default: where the conversion read the source).
    With ``compiled``, compiles every package with ``compiler`` (``xcrun coremlcompiler``), checks each
    compiled model's Core ML prediction against the float32 reference kept with the output (on macOS, or
    with ``predict``; see :func:`check_compiled`), adds the tokenizer and zips each variant; without,
    removes compiled resources and zips left from earlier runs.  A variant that lacks what the Swift
    pipeline loads is refused before anything is done (:func:`check_complete`).  A card links the other
    repo of the pair only when this output holds it too.
    Raises OptionsError (no report, a failed one, an incomplete variant), SourceError, ConversionError,
    ValidationError (a compiled model below its bar).
    """
    report = load_report(out)
    check_output(report, out, namespace=namespace)  # before any work: an incomplete variant is never packaged
    step = on_step or (lambda message: None)
    source_dir = source_dir or Path(report["source"]["path"] or "")
    tokenizer = source_tokenizer(source_dir)
    if compiled and not tokenizer.is_dir():
        raise SourceError(f"the source's tokenizer folder {tokenizer} is gone", source=report["source"]["id"],
                          hint="Convert again so the source is available, then publish.")
    # the repos this run publishes: a card links its sibling only when that one is published too
    present = {kind: (name, variants) for kind, name in report["repos"].items()
               if (variants := _variants(report, out / name))}
    trees = []
    for kind, (name, variants) in present.items():
        folder = out / name
        for variant in variants:
            compiled_dir = folder / variant / "compiled"
            archive = folder / zip_name(name, variant)
            if not compiled:
                shutil.rmtree(compiled_dir, ignore_errors=True)
                archive.unlink(missing_ok=True)
                continue
            step(f"compiling {name}/{variant}")
            bundle_variant(_variant_packages(report, name, variant, out), compiled_dir, tokenizer,
                           command=compiler or ("xcrun", "coremlcompiler"))
            check_compiled(out, report, name, variant, compiled_dir, predict=predict, on_step=step)
            check_complete(report, name, variant, out=out, compiled_dir=compiled_dir, namespace=namespace)
            step(f"zipping {archive.name}")
            write_zip(compiled_dir, archive, archive.stem)
        sibling = present.get("palettized" if kind == "float16" else "float16")
        upstream = source_dir / "README.md"
        card = render_card(report, kind=kind, repo_id=f"{namespace}/{name}",
                           sibling_id=f"{namespace}/{sibling[0]}" if sibling else None,
                           variants=list(variants), compiled=compiled,
                           upstream=upstream.read_text(errors="replace") if upstream.is_file() else None)
        (folder / "README.md").write_text(card)
        trees.append(RepoTree(kind, name, folder, variants, compiled))
    return trees


def check_compiled(out: Path, report: dict, repo: str, variant: str, compiled_dir: Path, *,
                   predict: Callable | None = None, on_step: Callable[[str], None] | None = None) -> None:
    """Core ML predictions of one variant's compiled models against the float32 reference (``psnr_coreml``).

    Every compiled model, float16 and palettized, on the GPU and, for split_einsum layouts, on the Neural
    Engine.  Needs Core ML (macOS) unless ``predict`` stands in for it; elsewhere the packages keep their
    ``psnr_coreml: skipped``.  The figures replace that check in ``report`` and report.json; a model below
    its bar fails the package, the report and this call (ValidationError).
    """
    from workers.validate.report import precision_bits, write_json
    from workers.names import compiled_file_name
    from workers.components import CHUNKED, whole_of
    from workers.convert.chunk import input_names
    from workers.validate.checks import (ValidationBars, compiled_chain_check, compiled_check, compute_units_for,
                                  coreml_available, load_check_data)

    if predict is None and not coreml_available():
        return
    bars = ValidationBars.from_dict(report["options"]["bars"])
    failures, chained = [], {}  # per chunked UNet: the chained check of its pair
    for package in report["packages"]:
        if package["repo"] != repo or package["variant"] != variant:
            continue
        component, precision = package["component"], package["precision"]
        whole = whole_of(component)
        data = load_check_data(out, whole or component)  # chunks are checked chained, as their UNet
        if data is None:
            continue  # converted before check data was kept: nothing to compare with
        (on_step or (lambda m: None))(f"predicting with {repo}/{variant} {component}")
        threshold, units = bars.shipped(precision_bits(precision)), compute_units_for(variant)
        if whole:
            if whole not in chained:
                first, second = (compiled_dir / compiled_file_name(c) for c in CHUNKED[whole])
                second_inputs = input_names(out / next(p["path"] for p in report["packages"] if p["repo"] == repo
                                                        and p["variant"] == variant and p["component"] == CHUNKED[whole][1]))
                chained[whole] = compiled_chain_check(first, second, second_inputs, data, threshold, units,
                                                      predict=predict)
            check = chained[whole]
        else:
            check = compiled_check(compiled_dir / compiled_file_name(component), data, threshold, units,
                                   predict=predict)
        package["checks"] = [c for c in package["checks"] if c["name"] != "psnr_coreml"] + [check.to_dict()]
        if check.failed:
            package["status"] = "failed"
            figure = f"{check.value} dB < {check.threshold} dB" if check.value is not None else check.detail
            failures.append(f"{package['component']} ({variant}, {precision}) compiled psnr_coreml: {figure}")
    report["passed"] = report["passed"] and not failures
    write_json(out / REPORT_FILE, report)
    if failures:
        from workers.errors import ValidationError

        raise ValidationError(failures, hint="Nothing is published; report.json has every figure.")


def load_trees(out: Path) -> list[RepoTree]:
    """The repo trees a packaged output holds (after :func:`package_output`, possibly on another host).

    Refuses (OptionsError) when any of them is incomplete (:func:`check_tree`), so none is published.
    """
    report = load_report(out)
    trees = []
    for kind, name in report["repos"].items():
        folder = out / name
        variants = _variants(report, folder)
        if variants and (folder / "README.md").is_file():
            compiled = all((folder / zip_name(name, v)).is_file() for v in variants)
            trees.append(RepoTree(kind, name, folder, variants, compiled))
    for tree in trees:
        check_tree(tree)
    return trees


# --- complete variants only -------------------------------------------------------------------------------

def missing_parts(components: Iterable[str], *, failed: Iterable[str] = (),
                  compiled: Iterable[str] | None = None, pipeline: str = "sd") -> list[str]:
    """What one variant lacks to be published: the completeness rule, for reports and trees alike.

    ``components`` are the variant's usable packages (present, not failed); ``failed`` its packages that
    failed validation (they count as missing and are named as such); ``compiled`` the names in its compiled
    folder, or None for a packages-only variant.  Returns one phrase per missing piece (empty: complete):
    every requirement of ``required_components(pipeline)``, then, compiled, each present required component's
    ``.mlmodelc`` and the tokenizer files.
    """
    have, failed = set(components), set(failed) - set(components)
    missing: list[str] = []
    wanted: list[str] = []  # the required components there, whose compiled resources must be there too
    for alternatives in required_components(pipeline).values():
        met = [alternative for alternative in alternatives if have.issuperset(alternative)]
        if met:
            wanted += [c for alternative in met for c in alternative]
        else:
            missing.append(_lacking(alternatives, have, failed))
    if compiled is not None:
        names = set(compiled)
        missing += [f"compiled/{compiled_file_name(c)}" for c in dict.fromkeys(wanted)
                    if compiled_file_name(c) not in names]
        missing += [f"compiled/{name}" for name in TOKENIZER_FILES if name not in names]
    return missing


def _lacking(alternatives: tuple[tuple[str, ...], ...], have: set[str], failed: set[str]) -> str:
    """One unmet requirement in words: ``unet (or both unet_chunk1 and unet_chunk2)``, ``unet_chunk2 to go
    with unet_chunk1 (or unet)``; a package that failed validation says so."""
    def label(component: str) -> str:
        return f"{component} (failed validation)" if component in failed else component

    def alternative_text(alternative: tuple[str, ...]) -> str:
        return label(alternative[0]) if len(alternative) == 1 else "both " + " and ".join(map(label, alternative))

    best = max(alternatives, key=lambda alternative: sum(c in have for c in alternative))  # the first on a tie
    there = [c for c in best if c in have]
    text = " and ".join(label(c) for c in best if c not in have) + (f" to go with {' and '.join(there)}"
                                                                    if there else "")
    others = [alternative for alternative in alternatives if alternative is not best]
    return text + (f" (or {' or '.join(map(alternative_text, others))})" if others else "")


def _require_complete(repo: str, variant: str, components: set[str], *, failed: set[str] = frozenset(),
                      compiled: set[str] | None = None, namespace: str | None = None, pipeline: str = "sd") -> None:
    """The one error for an incomplete variant (:func:`missing_parts`): repo, variant and every missing
    piece on one line, and what to do about it."""
    missing = missing_parts(components, failed=failed, compiled=compiled, pipeline=pipeline)
    if not missing:
        return
    required = required_components(pipeline)
    unmet = [alternatives[0][0] for alternatives in required.values()
             if not any(components.issuperset(alternative) for alternative in alternatives)]
    if failed & {c for alternatives in required.values() for a in alternatives for c in a}:
        hint = "Fix the failures report.json lists and convert again, then publish."
    elif unmet:
        hint = (f"Convert again without --components, or with --components that includes {', '.join(unmet)}, "
                "then publish.")
    else:
        hint = ("Publish again so that every package is compiled and the source's vocab.json and merges.txt "
                "are added, or publish with --packages-only.")
    raise OptionsError(f"{f'{namespace}/{repo}' if namespace else repo} (variant {variant}) lacks what the Swift "
                       f"pipeline loads, so nothing is published; missing: {'; '.join(missing)}", hint=hint)


def check_complete(report: dict, repo: str, variant: str, *, out: Path | None = None,
                   compiled_dir: Path | None = None, namespace: str | None = None) -> None:
    """Refuse (OptionsError) one variant of a conversion report that lacks what :func:`missing_parts` requires.

    Usable packages are the report's for ``repo`` (its name) and ``variant`` that did not fail validation
    and, with ``out``, are on disk; with ``compiled_dir``, its compiled resources are checked too.
    """
    packages = [p for p in report["packages"] if p["repo"] == repo and p["variant"] == variant]
    usable = {p["component"] for p in packages
              if not _failed(p) and (out is None or (out / p["path"]).is_dir())}
    failed = {p["component"] for p in packages if _failed(p)}
    compiled = None if compiled_dir is None else _compiled_names(compiled_dir)
    _require_complete(repo, variant, usable, failed=failed - usable, compiled=compiled, namespace=namespace,
                      pipeline=pipeline_of(report))


def check_output(report: dict, out: Path, *, namespace: str | None = None) -> None:
    """Refuse a conversion output with an incomplete variant in any repo it would publish (its packages)."""
    for name in report["repos"].values():
        for variant in _variants(report, out / name):
            check_complete(report, name, variant, out=out, namespace=namespace)


def check_tree(tree: RepoTree, *, namespace: str | None = None) -> None:
    """Refuse a repo tree with an incomplete variant: what is on disk is what would be published.

    Packages are the ``.mlpackage`` folders in ``<variant>/packages``, less those the conversion report
    beside the tree (if any) records as failed; compiled trees are held to their ``compiled/`` folders.
    """
    report_path = tree.folder.parent / REPORT_FILE
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    for variant in tree.variants:
        failed = {p["component"] for p in report.get("packages", ())
                  if p["repo"] == tree.name and p["variant"] == variant and _failed(p)}
        components = _package_components(tree.folder / variant / "packages")
        compiled = _compiled_names(tree.folder / variant / "compiled") if tree.compiled else None
        _require_complete(tree.name, variant, components - failed, failed=failed, compiled=compiled,
                          namespace=namespace, pipeline=pipeline_of(report, components))


def _failed(package: dict) -> bool:
    return package.get("status") == "failed" or any(c.get("status") == "failed" for c in package.get("checks", ()))


def _package_components(folder: Path) -> set[str]:
    """The components of the ``Stable_Diffusion_version_<model>_<component>.mlpackage`` folders in ``folder``."""
    by_length = sorted(COMPILED_NAMES, key=len, reverse=True)  # unet_chunk1 before unet
    found = set()
    for package in folder.glob("*.mlpackage") if folder.is_dir() else ():
        stem = package.name.removesuffix(".mlpackage")
        component = next((c for c in by_length if stem.endswith(f"_{c}")), None)
        if component and package.is_dir() and any(package.iterdir()):
            found.add(component)
    return found


def _compiled_names(folder: Path) -> set[str]:
    """The non-empty ``.mlmodelc`` folders and the files in a compiled folder."""
    if not folder.is_dir():
        return set()
    return {p.name for p in folder.iterdir()
            if (p.is_dir() and any(p.iterdir()) if p.suffix == ".mlmodelc" else p.is_file())}
