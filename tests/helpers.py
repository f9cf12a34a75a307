"""Helpers for tests: reading and damaging saved packages the way a broken disk or writer would."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

BLOB_SENTINEL = 0xDEADBEEF


def blob_entries(package: Path) -> list[tuple[int, int, int]]:
    """(metadata offset, data offset, size in bytes) of every weight in a package's weight.bin."""
    import coremltools as ct

    spec = ct.utils.load_spec(str(package))
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    raw = weights.read_bytes()
    entries = set()
    for function in spec.mlProgram.functions.values():
        for block in function.block_specializations.values():
            for op in block.operations:
                for value in op.attributes.values():
                    if value.WhichOneof("value") == "blobFileValue":
                        meta = value.blobFileValue.offset
                        sentinel, _dtype, size, data = struct.unpack_from("<IIQQ", raw, meta)
                        assert sentinel == BLOB_SENTINEL
                        entries.add((meta, data, size))
    return sorted(entries)


def negate_largest_weight(package: Path) -> int:
    """Flip the sign of every float16 value of the package's largest weight; returns its size in bytes."""
    weights = package / "Data" / "com.apple.CoreML" / "weights" / "weight.bin"
    _meta, data, size = max(blob_entries(package), key=lambda e: e[2])
    raw = bytearray(weights.read_bytes())
    values = np.frombuffer(bytes(raw[data:data + size]), dtype=np.uint16) ^ np.uint16(0x8000)
    raw[data:data + size] = values.tobytes()
    weights.write_bytes(bytes(raw))
    return size
