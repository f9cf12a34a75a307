"""Fetch step: download exactly the files a resolved Hub source pinned, at its commit sha, and check the
weights before any conversion work: links staying inside the download, safetensors headers, and (for every
source, local ones too) no NaN or infinite values.

What a fetch got is its :class:`Manifest`: every file with its size and sha256, per source.  A job's fetch
stage keeps it, and the stages after it (on any host) fetch by it: the same files, each downloaded at most
once per host (the Hub cache serves it again), sizes checked, and the hash of any file downloaded afresh
compared, so no stage converts other bytes than the ones the fetch stage checked.

A source with extra sources (``--vae``, ``--refiner``) comes back as one composed folder of links
(:func:`compose`); :func:`fetched` removes that folder again when the work on it is done.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from workers.errors import SourceError
from workers.hub.client import hub_errors
from workers.source.source import Source, source_files
from workers.source.fuse import fuse, loras_of
from workers.source.unpack import shipped_configs, unpack
from workers.source.checkpoint import ARCHITECTURES
from workers.source.weights import check_finite_values, check_weight_files, sha256_of

DOWNLOAD_THREADS = 8  # as huggingface_hub's snapshot_download


@dataclass
class Manifest:
    """What a fetch got: per source (``""`` for the source itself, else the extra's kind), each file's size and
    sha256."""

    sources: dict[str, dict[str, dict]] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"sources": self.sources}

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        return cls(dict(data.get("sources", {})))

    @property
    def files(self) -> int:
        return sum(len(files) for files in self.sources.values())

    @property
    def bytes(self) -> int:
        return sum(entry["size"] for files in self.sources.values() for entry in files.values())


def fetch_source(source: Source, *, local_dir: Path | None = None, cache_dir: Path | None = None,
                 token: str | None = None, endpoint: str | None = None, check_values: bool = True,
                 manifest: Manifest | None = None, kind: str = "", prepare: bool = True) -> Source:
    """Download a Hub source's pinned files and return it with a path (a local source comes back unchanged).

    ``check_values`` scans every safetensors weight file for NaN/inf values (one read of the weights).  A
    single-file checkpoint is unpacked into a diffusers folder, and LoRAs are fused, unless ``prepare`` is False
    (a stage that only records what was fetched).  With
    ``manifest`` (what an earlier fetch of the same source got), every file is held to its recorded size, and
    a file downloaded now to its recorded sha256.  Raises SourceError when the download fails or the files
    are damaged or differ, and the Hub's errors (:mod:`workers.hub.client`).
    """
    if source.path is None:
        source = _download(source, local_dir=local_dir, cache_dir=cache_dir, token=token, endpoint=endpoint,
                           recorded=manifest.sources.get(kind) if manifest else None)
    assert source.path is not None
    if check_values:
        check_finite_values(source.path, _weights(source), source=source.id)
    extras = tuple((name, fetch_source(extra, cache_dir=cache_dir, token=token, endpoint=endpoint,
                                       check_values=check_values, manifest=manifest, kind=name,
                                       local_dir=local_dir.with_name(f"{local_dir.name}.{name}") if local_dir else None))
                   for name, extra in source.extras)
    source = replace(source, extras=extras)
    if prepare and source.checkpoint is not None:  # a single-file checkpoint: a diffusers folder from here on
        source = unpack(source)
    if prepare and loras_of(source):  # LoRAs: fused into the weights before anything is converted
        source = fuse(source)
    return compose(source) if any(kind in _EXTRA_FOLDERS or kind == "base" for kind, _ in extras) else source


def fetch_files(source: Source, folders: tuple[str, ...], *, names: tuple[str, ...] = (),
                cache_dir: Path | None = None, token: str | None = None, endpoint: str | None = None) -> Path:
    """Only some of a source's own files (those in ``folders``, and the top-level ``names``), for a stage that
    needs no weights (the tokenizer and the card, say); returns the folder holding them (a local source's own)."""
    if source.path is not None:
        return source.origin or source.path
    if source.files is None:  # stored before its files were pinned
        return _download(replace(source, extras=()), local_dir=None, cache_dir=cache_dir, token=token,
                         endpoint=endpoint, recorded=None).path
    wanted = {name: size for name, size in source.files.items()
              if name in names or name.split("/", 1)[0] in folders}
    part = replace(source, files=wanted, weight_files={}, extras=())
    return _download(part, local_dir=None, cache_dir=cache_dir, token=token, endpoint=endpoint, recorded=None).path


def checkpoint_tokenizers(source: Source, into: Path, *, token: str | None = None,
                          endpoint: str | None = None) -> Path:
    """The folder holding a single-file source's tokenizer folders, for a stage that needs no weights: its
    ``--config``'s (only those files fetched), else the shipped configs' (assembled at ``into``)."""
    config = dict(source.extras).get("config")
    if config is not None:
        return fetch_files(config, ("tokenizer", "tokenizer_2"), token=token, endpoint=endpoint)
    assert source.architecture is not None
    return shipped_configs(source.configs or ARCHITECTURES[source.architecture].configs, into)


def manifest_of(source: Source) -> Manifest:
    """The manifest of a fetched source (and its extras): every file it was fetched with, hashed."""
    manifest = Manifest()
    for kind, part in ((("", source),) + tuple(source.extras)):
        folder = part.origin or part.path
        assert folder is not None
        names = part.files if part.files is not None else _weights(part)
        manifest.sources[kind] = {name: {"size": (folder / name).stat().st_size, "sha256": sha256_of(folder / name)}
                                  for name in sorted(names)}
    return manifest


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
    """Remove a composed source's folder of links, and the folder a checkpoint was unpacked in.  Of a composed
    folder only the links go: never what they point to, and never a folder that holds anything else (then it is
    left as it is)."""
    if source.unpacked is not None:
        shutil.rmtree(source.unpacked, ignore_errors=True)
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
    linked in (``vae/``: the ``--vae`` one, replacing the source's; ``refiner/``: the refiner's UNet); a
    ControlNet's (``--base``): the base's configs and tokenizer, with the ControlNet in ``controlnet/``.

    The folder holds links only, in a fresh temporary folder; the sources stay where they were fetched.
    """
    assert source.path is not None
    folder = Path(tempfile.mkdtemp(prefix=f"coreml-publish-{source.name}-"))
    base = dict(source.extras).get("base")
    if base is not None:
        return _compose_controlnet(source, base, folder)
    taken = {_EXTRA_FOLDERS[kind] for kind, _ in source.extras if kind in _EXTRA_FOLDERS}
    for entry in sorted(source.path.iterdir()):
        if entry.name not in taken:
            (folder / entry.name).symlink_to(entry.absolute(), target_is_directory=entry.is_dir())
    weight_files, variants = dict(source.weight_files), dict(source.weight_variant)
    components = list(source.components)
    for kind, extra in source.extras:
        if kind not in _EXTRA_FOLDERS:  # --config and --lora sources: already unpacked with, or fused
            continue
        assert extra.path is not None and extra.subfolder is not None
        name, (component,) = _EXTRA_FOLDERS[kind], extra.weight_files
        (folder / name).symlink_to((extra.path / extra.subfolder).absolute(), target_is_directory=True)
        weight_files[name] = tuple(f"{name}/{PurePosixPath(f).name}" for f in extra.weight_files[component])
        variants[name] = extra.weight_variant[component]
        if name not in components:
            components.append(name)
    return replace(source, path=folder, weight_files=weight_files, weight_variant=variants,
                   components=tuple(components), origin=source.origin or source.path)


def _compose_controlnet(source: Source, base: Source, folder: Path) -> Source:
    assert base.path is not None and source.path is not None
    for entry in sorted(base.path.iterdir()):
        if entry.name not in ("controlnet", "README.md"):
            (folder / entry.name).symlink_to(entry.absolute(), target_is_directory=entry.is_dir())
    (folder / "controlnet").symlink_to(source.path.absolute(), target_is_directory=True)
    weights = {"controlnet": tuple(f"controlnet/{f}" for f in source.weight_files["controlnet"])}
    return replace(source, path=folder, weight_files=weights, origin=source.path)


def _weights(source: Source) -> list[str]:
    return [f for names in source.weight_files.values() for f in names]


def _download(source: Source, *, local_dir: Path | None, cache_dir: Path | None, token: str | None,
              endpoint: str | None, recorded: dict[str, dict] | None) -> Source:
    """The pinned files of a Hub source, each from the cache when it holds it, else from the Hub (no listing
    of the repo: its files were pinned when it was resolved)."""
    from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache

    assert source.repo_id is not None and source.sha is not None
    place = dict(revision=source.sha, local_dir=str(local_dir) if local_dir else None,
                 cache_dir=str(cache_dir) if cache_dir else None, token=token, endpoint=endpoint)
    with hub_errors(source.repo_id, source.sha):
        if source.files is None:  # a source stored before its files were pinned: list them now
            folder = Path(snapshot_download(source.repo_id, allow_patterns=source.download_patterns(), **place))
            fresh: set[str] = set()
        else:
            cached = set() if local_dir else {name for name in source.files if isinstance(
                try_to_load_from_cache(source.repo_id, name, cache_dir=place["cache_dir"], revision=source.sha), str)}
            with ThreadPoolExecutor(DOWNLOAD_THREADS) as pool:
                paths = list(pool.map(lambda name: hf_hub_download(source.repo_id, name, **place), source.files))
            folder = _root(Path(paths[0]), next(iter(source.files))) if paths else Path(local_dir or ".")
            fresh = set(source.files) - cached
    # a cache snapshot's files are links into the repo's blob store; nothing may lead anywhere else
    blobs = (folder.parent.parent / "blobs",) if folder.parent.name == "snapshots" else ()
    source_files(folder, source=source.repo_id, inside=blobs)
    _check_recorded(folder, source, recorded, fresh)
    check_weight_files(folder, _weights(source), source=source.repo_id)
    return source.with_path(folder)


def _root(path: Path, name: str) -> Path:
    """The folder holding a downloaded file ``path`` that is ``name`` inside the repo."""
    for _ in PurePosixPath(name).parts:
        path = path.parent
    return path


def _check_recorded(folder: Path, source: Source, recorded: dict[str, dict] | None, fresh: set[str]) -> None:
    """Refuse files whose size differs from what resolve listed or an earlier fetch recorded, or, downloaded
    now, whose sha256 differs from the recorded one."""
    expected = {name: {"size": size} for name, size in (source.files or {}).items()}
    for name, entry in (recorded or {}).items():
        expected[name] = entry
    for name, entry in sorted(expected.items()):
        path = folder / name
        size = path.stat().st_size if path.is_file() else None
        changed = size != entry["size"] or (name in fresh and entry.get("sha256") and sha256_of(path) != entry["sha256"])
        if changed:
            raise SourceError(f"{source.repo_id}@{source.sha[:10]}: {name} is not the file this job fetched first "
                              f"({'missing' if size is None else f'{size} bytes'}, recorded "
                              f"{entry['size']} bytes{', another sha256' if size == entry['size'] else ''})",
                              source=source.repo_id, hint="Delete it from the Hub cache (HF_HOME) and retry the job.")
