"""Package folders on disk: how large one is, a copy of one that shares its files (hard links) where the
filesystem allows (a layout-independent component placed in every layout's folder, a part merged into a job's
output, a float16 copy in a palettized repo), and what tells packages apart by content."""

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


WEIGHTS = "Data/com.apple.CoreML/weights"  # a package's weight files


def share_weights(src: Path, dst: Path) -> int:
    """Hard-link ``dst``'s weight files to ``src``'s where they are byte for byte the same (the same component at
    another image size: one file on disk, one object on the Hub); returns the bytes now shared (0: none)."""
    shared = 0
    for theirs in sorted((dst / WEIGHTS).glob("*")) if (dst / WEIGHTS).is_dir() else ():
        ours = src / WEIGHTS / theirs.name
        if not ours.is_file() or not theirs.is_file() or ours.stat().st_size != theirs.stat().st_size:
            continue
        if os.path.samefile(ours, theirs):
            shared += ours.stat().st_size
            continue
        if not _same_bytes(ours, theirs):
            continue
        tmp = theirs.with_name(f".{theirs.name}.link")
        tmp.unlink(missing_ok=True)
        try:
            os.link(ours, tmp)
        except OSError:
            continue  # another filesystem: the copy stays (the Hub still stores one object for equal bytes)
        os.replace(tmp, theirs)
        shared += ours.stat().st_size
    return shared


def _same_bytes(a: Path, b: Path, chunk: int = 1 << 22) -> bool:
    with a.open("rb") as x, b.open("rb") as y:
        while True:
            left, right = x.read(chunk), y.read(chunk)
            if left != right:
                return False
            if not left:
                return True


def fingerprints(root: Path) -> dict[str, str]:
    """Every package under ``root`` told apart by content: each program's specification (its map entries in key
    order: protobuf writes maps in no fixed order, so two processes write the same specification in different
    bytes) and each weight file, as SHA-256 by path relative to ``root``.  Two conversions that made the same
    packages give the same fingerprints."""
    import hashlib

    import coremltools as ct

    found = {}
    for path in sorted(root.rglob("*")):
        if path.name == "weight.bin":
            found[path.relative_to(root).as_posix()] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.suffix == ".mlpackage":
            spec = ct.utils.load_spec(str(path)).SerializeToString(deterministic=True)
            found[path.relative_to(root).as_posix()] = hashlib.sha256(spec).hexdigest()
    return found
