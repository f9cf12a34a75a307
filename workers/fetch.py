"""Fetch step: download exactly the files a resolved Hub source needs, pinned to its commit sha."""

from __future__ import annotations

from pathlib import Path

from workers.errors import HubUnavailableError
from workers.resolve import Source, network_errors


def fetch_source(source: Source, *, local_dir: Path | None = None, cache_dir: Path | None = None,
                 token: str | None = None, endpoint: str | None = None) -> Source:
    """Download a Hub source's needed files (safetensors only unless allowed) and return it with a path.

    A local source is returned unchanged.  Raises SourceError when the download fails.
    """
    if source.path is not None:
        return source
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError

    assert source.repo_id is not None and source.sha is not None
    try:
        folder = snapshot_download(
            source.repo_id,
            revision=source.sha,
            allow_patterns=source.download_patterns(),
            local_dir=str(local_dir) if local_dir else None,
            cache_dir=str(cache_dir) if cache_dir else None,
            token=token,
            endpoint=endpoint,
        )
    except (HfHubHTTPError, *network_errors()) as e:
        raise HubUnavailableError(f"downloading {source.repo_id}@{source.sha[:10]} failed: {e}",
                          source=source.repo_id, hint="Try again; check HF_ENDPOINT and HF_TOKEN.") from e
    return source.with_path(Path(folder))
