"""Compile + bundle step (macOS): ``.mlpackage`` → the ``.mlmodelc`` resources the Swift pipeline loads.

Runs ``xcrun coremlcompiler compile <package> <outdir>`` for each package (exit status checked), renames the
result to the Swift name (``Unet.mlmodelc``, ``TextEncoder.mlmodelc``, ...) and adds the source's own
tokenizer files (``vocab.json``, ``merges.txt``), derived from ``tokenizer.json`` when that is all there is.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from workers.errors import ConversionError, SourceError, ToolUnavailableError
from workers.names import compiled_file_name

COMPILER = ("xcrun", "coremlcompiler")


def find_compiler(command: tuple[str, ...] = COMPILER) -> tuple[str, ...] | None:
    """The compiler command if this machine has it (``xcrun --find coremlcompiler`` succeeds), else None."""
    if shutil.which(command[0]) is None:
        return None
    try:
        found = subprocess.run([command[0], "--find", command[1]], capture_output=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return command if found.returncode == 0 else None


def require_compiler() -> tuple[str, ...]:
    """The compiler command, or ToolUnavailableError saying what to do instead."""
    command = find_compiler()
    if command is None:
        raise ToolUnavailableError(
            "xcrun coremlcompiler is not available: compiling to .mlmodelc needs macOS with Xcode",
            hint="Run this on a Mac with Xcode, or publish packages only (--packages-only).")
    return command


def compile_package(package: Path, out_dir: Path, component: str, *,
                    command: tuple[str, ...] = COMPILER, source_id: str | None = None) -> Path:
    """Compile one package into ``out_dir/<SwiftName>.mlmodelc`` (a ControlNet's, of ``source_id``, into
    ``out_dir/controlnet/<Name>.mlmodelc``), replacing a previous one."""
    target = out_dir / compiled_file_name(component, source_id)
    out_dir.mkdir(parents=True, exist_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".compile-") as tmp:
        result = subprocess.run([*command, "compile", str(package), tmp], capture_output=True, text=True)
        produced = Path(tmp) / f"{package.stem}.mlmodelc"
        if result.returncode != 0 or not produced.is_dir():
            tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise ConversionError(
                f"coremlcompiler failed on {package.name} (exit {result.returncode}): {' '.join(tail)}",
                component=component, hint="Check the package with coremltools; re-run convert if it is damaged.")
        shutil.rmtree(target, ignore_errors=True)
        produced.rename(target)
    return target


def tokenizer_files(tokenizer_dir: Path) -> dict[str, bytes]:
    """``vocab.json`` and ``merges.txt`` of the source's CLIP BPE tokenizer.

    Taken as they are when present; otherwise derived from ``tokenizer.json``.  Raises SourceError.
    """
    vocab, merges = tokenizer_dir / "vocab.json", tokenizer_dir / "merges.txt"
    if vocab.is_file() and merges.is_file():
        return {"vocab.json": vocab.read_bytes(), "merges.txt": merges.read_bytes()}
    fast = tokenizer_dir / "tokenizer.json"
    if not fast.is_file():
        raise SourceError(f"{tokenizer_dir} has neither vocab.json + merges.txt nor tokenizer.json",
                          source=str(tokenizer_dir), hint="The source's tokenizer folder is incomplete.")
    model = json.loads(fast.read_text()).get("model", {})
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise SourceError("tokenizer.json is not a BPE tokenizer", source=str(tokenizer_dir),
                          hint="Stable Diffusion uses CLIP's BPE tokenizer; check the source.")
    lines = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {
        "vocab.json": json.dumps(model["vocab"], ensure_ascii=False).encode(),
        "merges.txt": ("#version: 0.2\n" + "\n".join(lines) + "\n").encode(),
    }


def bundle_variant(packages: dict[str, Path], compiled_dir: Path, tokenizer_dir: Path | None, *,
                   command: tuple[str, ...] = COMPILER, source_id: str | None = None) -> list[Path]:
    """Compile every package of one variant (component → package) into ``compiled_dir`` with the tokenizer (none
    for a ControlNet repo's variant, ``tokenizer_dir`` None: its models go beside a base's, which has one)."""
    shutil.rmtree(compiled_dir, ignore_errors=True)
    compiled_dir.mkdir(parents=True)
    made = [compile_package(path, compiled_dir, component, command=command, source_id=source_id)
            for component, path in packages.items()]
    for name, data in (tokenizer_files(tokenizer_dir) if tokenizer_dir is not None else {}).items():
        (compiled_dir / name).write_bytes(data)
        made.append(compiled_dir / name)
    return made
