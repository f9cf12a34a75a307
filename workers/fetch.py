"""Fetch step: download exactly the files a resolved Hub source needs, pinned to its commit sha, and check
the weights before any conversion work: links staying inside the download, safetensors headers, and
(for every source, local ones too) no NaN or infinite values."""

from __future__ import annotations

from pathlib import Path

from workers.errors import HubUnavailableError
from workers.resolve import Source, network_errors, source_files
from workers.safetensors_check import check_finite_values, check_weight_files


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
    return source


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
