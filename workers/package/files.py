"""Package folders on disk: how large one is, and a copy of one that shares its files (hard links) where the
filesystem allows: a layout-independent component placed in every layout's folder, a part merged into a job's
output, a float16 copy in a palettized repo."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def package_size(path: Path) -> int:
    """The bytes of every file in a package folder."""
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def link_package(src: Path, dst: Path) -> None:
    """Place a copy of a package at ``dst``, hard-linking files where the filesystem allows."""
    shutil.rmtree(dst, ignore_errors=True)
    dst.parent.mkdir(parents=True, exist_ok=True)

    def link(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, copy_function=link)
