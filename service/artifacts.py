"""The artifact store: where stage outputs live between stages, addressed by URL.

A local folder by default; any fsspec URL (``s3://bucket/prefix``, ``gcs://...``, a shared mount) when
workers run on several hosts.  Stages work on local folders: with a remote store they ``pull`` what they
need into a local scratch folder and ``push`` what they made.  S3-compatible stores need ``s3fs``
(``pip install "coreml-publisher[s3]"``); botocore reads their endpoint and keys from the environment
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import shutil
from pathlib import Path


class ArtifactStore:
    """Job folders under one root URL."""

    def __init__(self, url: str, *, scratch: Path | None = None) -> None:
        self.url = url.rstrip("/")
        self.local = "://" not in url or url.startswith("file://")
        self.root = Path(url.removeprefix("file://")).resolve() if self.local else None
        self.scratch = scratch or Path.home() / ".cache" / "coreml-publisher"

    def uri(self, job_id: int, *parts: str) -> str:
        """The URL of a job's artifact."""
        return "/".join([self.url, "jobs", str(job_id), *parts])

    def path(self, job_id: int, *parts: str) -> Path:
        """The local folder a stage reads and writes for this artifact."""
        base = self.root if self.local else self.scratch
        return base.joinpath("jobs", str(job_id), *parts)

    def push(self, job_id: int, *parts: str) -> str:
        """Make a local artifact visible to every worker; returns its URL."""
        if not self.local:
            import fsspec

            # trailing slashes: the folder's contents, not the folder into an existing one (cp -r semantics)
            fs, target = fsspec.core.url_to_fs(self.uri(job_id, *parts))
            fs.put(f"{self.path(job_id, *parts)}/", f"{target}/", recursive=True)
        return self.uri(job_id, *parts)

    def pull(self, job_id: int, *parts: str) -> Path:
        """Bring an artifact made by another worker here; returns its local folder."""
        local = self.path(job_id, *parts)
        if not self.local:
            import fsspec

            fs, source = fsspec.core.url_to_fs(self.uri(job_id, *parts))
            shutil.rmtree(local, ignore_errors=True)  # an exact copy: nothing left from an earlier pull
            local.mkdir(parents=True)
            fs.get(f"{source}/", f"{local}/", recursive=True)
        return local
