"""Weight files checked before anything loads them: safetensors headers, shard indexes and finite values.

A damaged safetensors file (truncated, empty, a header length past the end, a header that is not JSON,
offsets outside the data, an unknown dtype) makes the loaders fail with a traceback naming nothing useful;
here it is refused with one line naming the file.  Reading a header costs a few kilobytes, so resolve
checks every weight file a local source would load; the value scan (NaN/inf) reads every float tensor once
and runs when the files are at hand, before any conversion work.
"""

from __future__ import annotations

import hashlib

import json
import math
import struct
from pathlib import Path, PurePosixPath
from typing import Iterable

from workers.errors import SourceError

HEADER_LIMIT = 100_000_000  # bytes: the safetensors format's own limit on its JSON header
# bytes per element of every dtype the safetensors torch loader knows
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E4M3FNUZ": 1, "F8_E5M2": 1, "F8_E5M2FNUZ": 1,
    "U16": 2, "I16": 2, "F16": 2, "BF16": 2,
    "U32": 4, "I32": 4, "F32": 4,
    "U64": 8, "I64": 8, "F64": 8, "C64": 8,
}
FLOAT_DTYPES = frozenset({"F8_E4M3", "F8_E4M3FNUZ", "F8_E5M2", "F8_E5M2FNUZ", "F16", "BF16", "F32", "F64"})
_DAMAGED = "The file is damaged or incomplete: download or save it again."


def _bad(label: str, problem: str, source: str) -> SourceError:
    return SourceError(f"{label} is not a valid safetensors file: {problem}", source=source, hint=_DAMAGED)


def read_header(file: Path, *, source: str, label: str | None = None) -> dict[str, dict]:
    """The tensors ``file`` declares (name -> dtype, shape, data_offsets), after checking the header.

    Checks the 8-byte little-endian header length against the file size, that the header is a JSON object,
    every dtype is known, every shape is a list of non-negative integers and every tensor's data lies
    inside the file with the size its shape and dtype imply.  Raises SourceError naming ``label``.
    """
    label = label or file.name
    size = file.stat().st_size
    if size < 8:
        raise _bad(label, "the file is empty" if size == 0 else f"it has only {size} bytes", source)
    with file.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > size - 8:
            raise _bad(label, f"its header length {length} runs past the end of the {size}-byte file", source)
        if length > HEADER_LIMIT:
            raise _bad(label, f"its header length {length} is over the format's limit of {HEADER_LIMIT}", source)
        raw = f.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
    except ValueError:  # not UTF-8, or not JSON
        raise _bad(label, "its header is not JSON", source) from None
    if not isinstance(header, dict):
        raise _bad(label, "its header is not a JSON object", source)
    data_size = size - 8 - length
    tensors = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        _check_entry(name, entry, data_size, label, source)
        tensors[name] = entry
    return tensors


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_entry(name: str, entry: object, data_size: int, label: str, source: str) -> None:
    if not isinstance(entry, dict):
        raise _bad(label, f"tensor {name} has no dtype, shape and offsets", source)
    dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    if dtype not in DTYPE_BYTES:
        raise _bad(label, f"tensor {name} has an unknown dtype {dtype!r}", source)
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise _bad(label, f"tensor {name} has a malformed shape {shape!r}", source)
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise _bad(label, f"tensor {name} has malformed data_offsets {offsets!r}", source)
    if offsets[1] > data_size:
        raise _bad(label, f"tensor {name} ends at byte {offsets[1]} of a data section of {data_size} bytes "
                          "(the file is truncated)", source)
    expected = math.prod(shape) * DTYPE_BYTES[dtype]
    if offsets[1] - offsets[0] != expected:
        raise _bad(label, f"tensor {name} ({dtype} {shape}) needs {expected} bytes but has "
                          f"{offsets[1] - offsets[0]}", source)


def check_index(file: Path, *, source: str, label: str) -> list[str]:
    """The shard files a sharded checkpoint's ``*.safetensors.index.json`` names, each checked to be a
    plain file name present in the same folder.  Raises SourceError naming the index."""
    hint = "The sharded checkpoint is incomplete or its index is damaged; download it again."
    try:
        index = json.loads(file.read_text())
    except ValueError:
        raise SourceError(f"{label} is not valid JSON", source=source, hint=hint) from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise SourceError(f"{label} has no weight_map of tensor names to shard files", source=source, hint=hint)
    shards = sorted(set(weight_map.values()))
    for shard in shards:
        if PurePosixPath(shard).name != shard or shard in (".", ".."):
            raise SourceError(f"{label} names a shard outside its folder: {shard!r}", source=source, hint=hint)
        if not (file.parent / shard).is_file():
            raise SourceError(f"{label} names a shard that is missing: {shard}", source=source, hint=hint)
    return shards


def check_weight_files(root: Path, files: Iterable[str], *, source: str) -> None:
    """Check the headers of the safetensors files and shard indexes among ``files`` (paths under ``root``).

    Pickle weights are left to the loader (they are only read when explicitly allowed)."""
    for name in files:
        if name.endswith(".safetensors"):
            read_header(root / name, source=source, label=name)
        elif name.endswith(".safetensors.index.json"):
            check_index(root / name, source=source, label=name)


# float dtypes checked by their bits: a value is NaN or infinite when its exponent bits are all ones, that is
# when its bits without the sign reach the pattern of infinity
_FLOAT_BITS = {
    "F16": ("<u2", 0x7FFF, 0x7C00),
    "BF16": ("<u2", 0x7FFF, 0x7F80),
    "F32": ("<u4", 0x7FFF_FFFF, 0x7F80_0000),
    "F64": ("<u8", 0x7FFF_FFFF_FFFF_FFFF, 0x7FF0_0000_0000_0000),
}
_TORCH_FLOATS = {"torch.float16": "F16", "torch.bfloat16": "BF16", "torch.float32": "F32", "torch.float64": "F64"}
_CHUNK = 1 << 22  # elements per step: bounded scratch memory, however large the tensor


def _count_non_finite(raw, dtype: str) -> int:
    """NaN/inf values in ``raw``: a flat array of a float ``dtype``'s bits (16/32/64-bit unsigned)."""
    import numpy as np

    kind, magnitude, infinity = _FLOAT_BITS[dtype]
    values = raw.view(np.dtype(kind))
    scratch = np.empty(min(values.size, _CHUNK), values.dtype)
    bad = 0
    for at in range(0, values.size, _CHUNK):
        part = values[at:at + _CHUNK]
        bits = np.bitwise_and(part, magnitude, out=scratch[:part.size])
        if bits.max() >= infinity:
            bad += int(np.count_nonzero(bits >= infinity))
    return bad


def count_non_finite(tensor) -> int:
    """NaN/inf values in a torch tensor, read by their bits (about a second per GB; ``isfinite`` is slower)."""
    import torch

    dtype = _TORCH_FLOATS.get(str(tensor.dtype))
    if dtype is None:  # float8 and other rarities
        return int((~torch.isfinite(tensor.float())).sum())
    ints = {2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]
    return _count_non_finite(tensor.detach().contiguous().view(ints).reshape(-1).numpy(), dtype)


def check_finite_values(root: Path, files: Iterable[str], *, source: str) -> None:
    """Refuse a safetensors file among ``files`` holding NaN or infinite values, naming file and tensor.

    Reads every floating-point tensor once from a memory map (about a second per GB)."""
    import numpy as np

    for name in files:
        if not name.endswith(".safetensors"):
            continue
        file = root / name
        tensors = read_header(file, source=source, label=name)
        floats = {key: entry for key, entry in tensors.items() if entry["dtype"] in FLOAT_DTYPES}
        if not floats:
            continue
        with file.open("rb") as f:
            start = 8 + struct.unpack("<Q", f.read(8))[0]
        data = np.memmap(file, dtype=np.uint8, mode="r")
        for key, entry in floats.items():
            begin, end = (start + offset for offset in entry["data_offsets"])
            if entry["dtype"] in _FLOAT_BITS:
                bad = _count_non_finite(data[begin:end], entry["dtype"])
            else:  # float8
                from safetensors import safe_open

                with safe_open(str(file), framework="pt") as f:
                    bad = count_non_finite(f.get_tensor(key))
            if bad:
                raise non_finite_error(name, key, bad, math.prod(entry["shape"]), source=source)
        del data


def non_finite_error(where: str, tensor: str, bad: int, total: int, *, source: str) -> SourceError:
    """The error for a weight tensor with ``bad`` NaN/inf values out of ``total``."""
    return SourceError(f"{where}: tensor {tensor} has {bad} NaN or infinite value{'s' if bad != 1 else ''} "
                       f"(of {total})", source=source,
                       hint="The weights are damaged (or were saved after a diverged training run); "
                            "fix them or pick another source.")


def loaded_files(folder: Path, variant: str | None) -> list[Path]:
    """The safetensors files a diffusers/transformers loader reads from ``folder`` for ``variant``:
    ``name.safetensors`` / ``name-0000x-of-0000y.safetensors``, or ``name.<variant>[-shard].safetensors``."""
    chosen = []
    for file in sorted(folder.glob("*.safetensors")):
        parts = file.name.split(".")
        found = parts[-2].split("-", 1)[0] if len(parts) >= 3 else None
        if found == variant:
            chosen.append(file)
    return chosen


_TORCH_DTYPES = {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I64": "int64",
                 "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}


def iter_tensors(file: Path, *, source: str, label: str | None = None):
    """Each tensor of a safetensors file as ``(name, torch tensor)``, read with plain file reads after the header
    is checked: unlike a memory map, the file's pages never count as the process's memory, and each tensor is
    its own allocation, free to go as soon as the caller converts it.  Raises SourceError."""
    import torch

    tensors = read_header(file, source=source, label=label)
    with file.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        for name, entry in sorted(tensors.items(), key=lambda item: item[1]["data_offsets"][0]):
            if entry["dtype"] not in _TORCH_DTYPES:
                raise _bad(label or file.name, f"tensor {name} has dtype {entry['dtype']}, which cannot be read "
                           "here", source)
            start, end = entry["data_offsets"]
            data = bytearray(end - start)
            f.seek(8 + length + start)
            if f.readinto(data) != len(data):
                raise _bad(label or file.name, f"tensor {name} is cut short", source)
            dtype = getattr(torch, _TORCH_DTYPES[entry["dtype"]])
            tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
            yield name, tensor.reshape(entry["shape"])


def sha256_of(file: Path) -> str:
    """A file's sha256 (as the Hub's LFS records it), read in 4 MB blocks."""
    digest = hashlib.sha256()
    with file.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()
