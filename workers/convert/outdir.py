"""Checking an output folder before any work: it must be a folder (or creatable as one) that we can write to.

Cheap (a few stats and one temporary file), so callers run it before resolving or fetching a source; nothing
is created except that temporary file, which is removed at once.
"""

from __future__ import annotations

import errno
import tempfile
from pathlib import Path

from workers.errors import OptionsError


def check_output_dir(out: Path | str) -> Path:
    """Return ``out`` when it is a writable folder or can be created as one; raise OptionsError otherwise.

    Refused: ``out`` is a file (or another non-folder), a part of its path is a file, or the folder (or the
    nearest existing folder above it, where it would be created) cannot be written to.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OptionsError(f"the output path {out} is a file, not a folder",
                           hint="Pass a folder (it is created if missing).")
    existing = out
    while not existing.exists() and not existing.is_symlink():  # a dangling link is reported below
        if existing.parent == existing:
            break
        existing = existing.parent
    if existing != out and not existing.is_dir():
        raise OptionsError(f"cannot create the output folder {out}: {existing} is a file",
                           hint="Pass a folder path that does not go through a file.")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".coreml-publish-write-check-"):
            pass
    except OSError as e:
        what = "the output folder" if existing == out else f"{existing} (where the output folder would be made)"
        reason = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
                  errno.EROFS: "read-only file system", errno.ENOSPC: "no space left"}.get(e.errno,
                                                                                          e.strerror or str(e))
        raise OptionsError(f"cannot write to {what}: {reason}",
                           hint="Pass a folder you can write to.") from None
    return out
