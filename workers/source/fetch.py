"""Fetch step: download exactly the files a resolved Hub source needs, pinned to its commit sha, and check
the weights before any conversion work: links staying inside the download, safetensors headers, and
(for every source, local ones too) no NaN or infinite values.  A source with extra sources (``--vae``,
``--refiner``) comes back as one composed folder of links (:func:`compose`); :func:`fetched` removes that
folder again when the work on it is done."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path, PurePosixPath

from workers.errors import HubUnavailableError
from workers.source.resolve import Source, network_errors, source_files
from workers.source.weights import check_finite_values, check_weight_files


def fetch_source(source: Source, *, local_dir: Path | None = None, cache_dir: Path | None = None,
                 token: str | None = None, endpoint: str | None = None, check_values: bool = True) -> Source:
    """Download a Hub source's needed files (safetensors only unless allowed) and return it with a path.

    A local source (already checked by resolve) comes back unchanged.  ``check_values`` scans every
    safetensors weight file for NaN/inf values (one read of the weights).  Raises SourceError when the
    download fails or the files are damaged.
    """
    if source.path is None:
        source = _download(source, local_dir=local_dir, cache_dir=cache_dir, token=token, endpoint=endpoint)
    assert source.path is not None
    if check_values:
        check_finite_values(source.path, _weights(source), source=source.id)
    if not source.extras:
        return source
    extras = tuple((kind, fetch_source(extra, cache_dir=cache_dir, token=token, endpoint=endpoint,
                                       check_values=check_values,
                                       local_dir=local_dir.with_name(f"{local_dir.name}.{kind}") if local_dir else None))
                   for kind, extra in source.extras)
    return compose(replace(source, extras=extras))


@contextmanager
def fetched(source: Source, **kwargs) -> Iterator[Source]:
    """:func:`fetch_source` for the length of a ``with`` block; a composed folder of links is removed after it
    (:func:`release`), however the block ends.  Takes :func:`fetch_source`'s keyword arguments."""
    result = fetch_source(source, **kwargs)
    try:
        yield result
    finally:
        release(result)


def release(source: Source) -> None:
    """Remove a composed source's folder of links.  Only the links go: never what they point to, and never a
    folder that holds anything else (then it is left as it is)."""
    if source.origin is None or source.path is None or not source.path.is_dir():
        return
    entries = list(source.path.iterdir())
    if not all(e.is_symlink() for e in entries):
        return
    for entry in entries:
        entry.unlink()
    source.path.rmdir()


# where each extra source's component goes in a composed folder, and the folder it comes from
_EXTRA_FOLDERS = {"vae": "vae", "refiner": "refiner"}


def compose(source: Source) -> Source:
    """One folder that reads as a single source: the source's own files, with the extra sources' components
    linked in (``vae/``: the ``--vae`` one, replacing the source's; ``refiner/``: the refiner's UNet).

    The folder holds links only, in a fresh temporary folder; the sources stay where they were fetched.
    """
    assert source.path is not None
    folder = Path(tempfile.mkdtemp(prefix=f"coreml-publish-{source.name}-"))
    taken = {_EXTRA_FOLDERS[kind] for kind, _ in source.extras}
    for entry in sorted(source.path.iterdir()):
        if entry.name not in taken:
            (folder / entry.name).symlink_to(entry.absolute(), target_is_directory=entry.is_dir())
    weight_files, variants = dict(source.weight_files), dict(source.weight_variant)
    components = list(source.components)
    for kind, extra in source.extras:
        assert extra.path is not None and extra.subfolder is not None
        name, (component,) = _EXTRA_FOLDERS[kind], extra.weight_files
        (folder / name).symlink_to((extra.path / extra.subfolder).absolute(), target_is_directory=True)
        weight_files[name] = tuple(f"{name}/{PurePosixPath(f).name}" for f in extra.weight_files[component])
        variants[name] = extra.weight_variant[component]
        if name not in components:
            components.append(name)
    return replace(source, path=folder, weight_files=weight_files, weight_variant=variants,
                   components=tuple(components), origin=source.path)


def _weights(source: Source) -> list[str]:
    return [f for names in source.weight_files.values() for f in names]


def _download(source: Source, *, local_dir: Path | None, cache_dir: Path | None, token: str | None,
              endpoint: str | None) -> Source:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    assert source.repo_id is not None and source.sha is not None
    try:
        folder = Path(snapshot_download(
            source.repo_id,
            revision=source.sha,
            allow_patterns=source.download_patterns(),
            local_dir=str(local_dir) if local_dir else None,
            cache_dir=str(cache_dir) if cache_dir else None,
            token=token,
            endpoint=endpoint,
        ))
    except (HfHubHTTPError, *network_errors()) as e:
        raise HubUnavailableError(f"downloading {source.repo_id}@{source.sha[:10]} failed: {e}",
                          source=source.repo_id, hint="Try again; check HF_ENDPOINT and HF_TOKEN.") from e
    # a cache snapshot's files are links into the repo's blob store; nothing may lead anywhere else
    blobs = (folder.parent.parent / "blobs",) if folder.parent.name == "snapshots" else ()
    source_files(folder, source=source.repo_id, inside=blobs)
    check_weight_files(folder, _weights(source), source=source.repo_id)
    return source.with_path(folder)
