"""Complete variants only: what the Swift pipeline loads from every published variant, checked for a
conversion report (:func:`check_complete`, :func:`check_output`) and for a repo tree on disk (:func:`check_tree`)
by one rule (:func:`missing_parts`).  An incomplete variant is refused (OutputError) before anything of it is
compiled, zipped or published."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Protocol

from workers.components import pipeline_of
from workers.errors import OutputError
from workers.names import CONTROLNET_FOLDER, REPORT_FILE, compiled_file_name, package_component
from workers.validate.report import Report


class Tree(Protocol):
    """A repo tree on disk (:class:`workers.package.repos.RepoTree`), as the completeness check reads it."""

    name: str
    folder: Path
    variants: tuple[str, ...]
    compiled: bool

TOKENIZER_FILES = ("vocab.json", "merges.txt")  # in every compiled folder, beside the .mlmodelc resources

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
# a ControlNet repo's variant: the ControlNet alone (unpacked into a base's variant, it joins what is there)
CONTROLNET_REQUIRED_COMPONENTS = {"controlnet": (("controlnet",),)}
# a variant with a ControlledUnet also ships the VAE encoder: apps read the image size from it and match
# ControlNets by it (Mochi Diffusion offers no ControlNet without it)
CONTROLLED = ("controlled_unet", "controlled_unet_chunk1", "controlled_unet_chunk2")


def required_components(pipeline: str = "sd") -> dict[str, tuple[tuple[str, ...], ...]]:
    """The requirements of a variant of an SD 1.x/2.x (``sd``), SDXL base or SDXL refiner pipeline."""
    return {"sd": REQUIRED_COMPONENTS, "sdxl": XL_REQUIRED_COMPONENTS,
            "sdxl-refiner": REFINER_REQUIRED_COMPONENTS, "controlnet": CONTROLNET_REQUIRED_COMPONENTS}[pipeline]


def missing_parts(components: Iterable[str], *, failed: Iterable[str] = (),
                  compiled: Iterable[str] | None = None, pipeline: str = "sd", source_id: str | None = None) -> list[str]:
    """What one variant lacks to be published: the completeness rule, for reports and trees alike.

    ``components`` are the variant's usable packages (present, not failed); ``failed`` its packages that
    failed validation (they count as missing and are named as such); ``compiled`` the names in its compiled
    folder, or None for a packages-only variant.  Returns one phrase per missing piece (empty: complete):
    every requirement of ``required_components(pipeline)`` (with a ControlledUnet, the VAE encoder too), then,
    compiled, each present required component's ``.mlmodelc`` (a ControlNet's, of ``source_id``, in
    ``controlnet/``) and the tokenizer files (a ControlNet repo's variant has none).
    """
    have, failed = set(components), set(failed) - set(components)
    missing: list[str] = []
    wanted: list[str] = []  # the required components there, whose compiled resources must be there too
    required = dict(required_components(pipeline))
    if have & set(CONTROLLED):
        required["vae_encoder"] = (("vae_encoder",),)
    for alternatives in required.values():
        met = [alternative for alternative in alternatives if have.issuperset(alternative)]
        if met:
            wanted += [c for alternative in met for c in alternative]
        else:
            missing.append(_lacking(alternatives, have, failed))
    if compiled is not None:
        names = set(compiled)
        missing += [f"compiled/{compiled_file_name(c, source_id)}" for c in dict.fromkeys(wanted)
                    if compiled_file_name(c, source_id) not in names]
        missing += [f"compiled/{name}" for name in TOKENIZER_FILES if name not in names and pipeline != "controlnet"]
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
                      compiled: set[str] | None = None, namespace: str | None = None, pipeline: str = "sd",
                      source_id: str | None = None) -> None:
    """The one error for an incomplete variant (:func:`missing_parts`): repo, variant and every missing
    piece on one line, and what to do about it."""
    missing = missing_parts(components, failed=failed, compiled=compiled, pipeline=pipeline, source_id=source_id)
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
    raise OutputError(f"{f'{namespace}/{repo}' if namespace else repo} (variant {variant}) lacks what the Swift "
                       f"pipeline loads, so nothing is published; missing: {'; '.join(missing)}", hint=hint)


def check_complete(report: Report, repo: str, variant: str, *, out: Path | None = None,
                   compiled_dir: Path | None = None, namespace: str | None = None) -> None:
    """Refuse (OutputError) one variant of a conversion report that lacks what :func:`missing_parts` requires.

    Usable packages are the report's for ``repo`` (its name) and ``variant`` that did not fail validation
    and, with ``out``, are on disk; with ``compiled_dir``, its compiled resources are checked too.
    """
    packages = report.packages_of(repo, variant)
    usable = {p.component for p in packages
              if p.status == "passed" and (out is None or (out / p.path).is_dir())}
    failed = {p.component for p in packages if p.status == "failed"}
    compiled = None if compiled_dir is None else _compiled_names(compiled_dir)
    _require_complete(repo, variant, usable, failed=failed - usable, compiled=compiled, namespace=namespace,
                      pipeline=report.pipeline, source_id=report.source.get("id"))


def repo_variants(report: Report, folder: Path) -> tuple[str, ...]:
    """The variants of the run (attention layouts, and each at its extra sizes) that have packages in this repo
    folder, in the run's order."""
    return tuple(v for v in report.variants if (folder / v / "packages").is_dir())


def check_output(report: Report, out: Path, *, namespace: str | None = None) -> None:
    """Refuse a conversion output with an incomplete variant in any repo it would publish (its packages)."""
    for name in report.repos.values():
        for variant in repo_variants(report, out / name):
            check_complete(report, name, variant, out=out, namespace=namespace)


def check_tree(tree: Tree, *, namespace: str | None = None) -> None:
    """Refuse a repo tree with an incomplete variant: what is on disk is what would be published.

    Packages are the ``.mlpackage`` folders in ``<variant>/packages``, less those the conversion report
    beside the tree (if any) records as failed; compiled trees are held to their ``compiled/`` folders.
    """
    report = Report.load(tree.folder.parent) if (tree.folder.parent / REPORT_FILE).is_file() else None
    for variant in tree.variants:
        failed = {p.component for p in report.packages_of(tree.name, variant) if p.status == "failed"} \
            if report else set()
        packages = _package_components(tree.folder / variant / "packages")
        components = set(packages)
        compiled = _compiled_names(tree.folder / variant / "compiled") if tree.compiled else None
        pipeline = report.pipeline if report else pipeline_of(components)
        source_id = report.source.get("id") if report else packages.get("controlnet")
        _require_complete(tree.name, variant, components - failed, failed=failed, compiled=compiled,
                          namespace=namespace, pipeline=pipeline, source_id=source_id)


def _package_components(folder: Path) -> dict[str, str | None]:
    """The components of the ``.mlpackage`` folders in ``folder`` (:func:`workers.names.package_component`), each
    with the model it names where that is known from the name alone (a ControlNet's: the ``<org>_<name>`` part,
    its compiled name's source)."""
    found: dict[str, str | None] = {}
    for package in folder.glob("*.mlpackage") if folder.is_dir() else ():
        component = package_component(package.name)
        if component and package.is_dir() and any(package.iterdir()):
            found[component] = package.name.removeprefix("ControlNet_").removesuffix(".mlpackage") \
                if component == "controlnet" else None
    return found


def _compiled_names(folder: Path) -> set[str]:
    """The non-empty ``.mlmodelc`` folders and the files in a compiled folder."""
    if not folder.is_dir():
        return set()
    found = {p.name for p in folder.iterdir()
             if (p.is_dir() and any(p.iterdir()) if p.suffix == ".mlmodelc" else p.is_file())}
    nested = folder / CONTROLNET_FOLDER  # a ControlNet repo's variant: controlnet/<Name>.mlmodelc
    return found | ({f"{CONTROLNET_FOLDER}/{name}" for name in _compiled_names(nested)} if nested.is_dir() else set())
