"""Download one variant of a published repo: compiled resources, packages, or the zip apps use."""

from __future__ import annotations

from pathlib import Path

from workers.errors import OptionsError, SourceNotFoundError
from workers.hub.client import hub_errors
from workers.package.card import zip_name
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
