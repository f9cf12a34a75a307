"""Download one variant of a published repo: compiled resources, packages, or the zip apps use."""

from __future__ import annotations

from pathlib import Path

from workers.errors import OptionsError, SourceNotFoundError
from workers.hub.client import hub_errors
from workers.package.card import zip_name
from workers.package.manifest import MANIFEST_FILE, Manifest, read_manifest, variant_names
from workers.names import Attention, parse_size, variant_name

KINDS = ("compiled", "packages", "zip")
VARIANTS = tuple(a.value for a in Attention)  # the variant folders (and zips) a published repo may hold


def download_variant(repo_id: str, out: Path, *, variant: str = Attention.SPLIT_EINSUM_V2.value,
                     kind: str = "compiled", revision: str | None = None, endpoint: str | None = None,
                     token: str | None = None, resolution: str | None = None) -> Path:
    """Fetch only ``<variant>/<kind>/*`` (or the variant's zip) of ``repo_id`` into ``out``; returns the path.
    ``resolution`` (``<W>x<H>``) picks the variant at that image size (``<variant>/<W>x<H>/``) instead of the
    native one.

    Raises OptionsError for unknown variants or kinds, SourceNotFoundError when the repo or the files are
    not there, and the other errors of :func:`workers.hub.client.read_error`.
    """
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    if variant not in VARIANTS:
        raise OptionsError(f"unknown variant {variant!r}", hint=f"Use one of {', '.join(VARIANTS)}.")
    if kind not in KINDS:
        raise OptionsError(f"unknown kind {kind!r}", hint="Use compiled, packages or zip.")
    if resolution is not None:
        size = parse_size(resolution)
        if size is None:
            raise OptionsError(f"--resolution {resolution[:32]!r} is not an image size",
                               hint="Give width x height in pixels, like 512x768 (the repo card lists its sizes).")
        variant = variant_name(variant, size)
    with hub_errors(repo_id, revision, missing_file=f"{repo_id} has no {kind} zip for {variant}"):
        # ask first: snapshot_download falls back to local files when the Hub says no
        sha = HfApi(endpoint=endpoint, token=token).model_info(repo_id, revision=revision).sha
    manifest = published_manifest(repo_id, sha, endpoint=endpoint, token=token)
    if manifest is not None:
        _check_holds(manifest, variant, kind)
    with hub_errors(repo_id, revision, missing_file=f"{repo_id} has no {kind} zip for {variant}"):
        if kind == "zip":
            name = zip_name(repo_id.split("/")[-1], variant)
            return Path(hf_hub_download(repo_id, name, revision=sha, local_dir=str(out), endpoint=endpoint,
                                        token=token))
        folder = Path(snapshot_download(repo_id, revision=sha, allow_patterns=f"{variant}/{kind}/*",
                                        local_dir=str(out), endpoint=endpoint, token=token))
    target = folder / variant / kind
    if not target.is_dir() or not any(target.iterdir()):
        raise SourceNotFoundError(f"{repo_id} has no {variant}/{kind}/ files", source=repo_id,
                                  hint="The repo may hold packages only; try --packages." if kind == "compiled"
                                  else "Check the variant name (and the size: the repo card lists them).")
    return target


def published_manifest(repo_id: str, revision: str | None = None, *, endpoint: str | None = None,
                       token: str | None = None) -> Manifest | None:
    """The manifest (``coreml-publisher.json``) of a published repo; None for a repo without one (published before
    manifests, or by another tool).  Raises OutputError for one this version cannot read, and what the Hub
    answered as :func:`workers.hub.client.read_error` says (a missing repo: SourceNotFoundError)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    with hub_errors(repo_id, revision):
        try:
            path = hf_hub_download(repo_id, MANIFEST_FILE, revision=revision, endpoint=endpoint, token=token)
        except EntryNotFoundError:
            return None
    return read_manifest(Path(path).read_text(), where=f"{repo_id}'s {MANIFEST_FILE}")


def _check_holds(manifest: Manifest, variant: str, kind: str) -> None:
    """Refuse, naming what the repo holds, a variant or kind its manifest says it does not."""
    held = variant_names(manifest)
    if variant not in held:
        raise SourceNotFoundError(f"{manifest.repo_id} has no {variant} variant; it holds {', '.join(held)}",
                                  source=manifest.repo_id,
                                  hint="Pass --variant LAYOUT, and --resolution WxH for a size folder (LAYOUT/WxH).")
    found = next(v for v in manifest.variants if v.name == variant)
    if kind != "packages" and found.zip is None:
        raise SourceNotFoundError(f"{manifest.repo_id} holds packages only (no compiled resources or zips)",
                                  source=manifest.repo_id,
                                  hint="Pass --packages, or compile the packages on a Mac with xcrun coremlcompiler.")
