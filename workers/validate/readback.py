"""Reading a saved package back: its program, features and weights as they ship, and accounting for every
torch parameter in those weights (so the torch module can be run with exactly what ships)."""

from __future__ import annotations

import gc
import re
import struct
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from workers.validate.report import Check

_FLOAT = (np.float16, np.float32, np.float64)


@dataclass
class PackageContents:
    """What a saved package declares and holds; ``program`` is its ML program, ready for the executor."""

    inputs: list[tuple[str, tuple[int, ...], str]]
    outputs: list[tuple[str, tuple[int, ...], str]]
    metadata: dict[str, str]
    weights: dict[str, np.ndarray] = field(repr=False)  # const name (suffixes stripped) -> dense value
    lut_ops: int = 0
    lut_sizes: set[int] = field(default_factory=set)
    palettes: dict[str, int] = field(default_factory=dict)  # palettized constant (suffixes stripped) -> palette size
    unpalettized_large: list[str] = field(default_factory=list)  # float consts (rank > 1) > threshold, not LUT
    program: object = field(default=None, repr=False)
    expanded: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # constexpr output -> dense

    def release(self) -> None:
        """Drop the program and its weights now (its operations reference each other)."""
        self.program, self.weights, self.expanded = None, {}, {}
        gc.collect()


_ARRAY_DTYPES = {65552: "float16", 65568: "float32", 131104: "int32"}
_SUFFIXES = ("_palettized", "_to_fp16")


def _strip(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for suffix in _SUFFIXES:
            if name.endswith(suffix):
                name, changed = name[: -len(suffix)], True
    return name


def feature_list(features) -> list[tuple[str, tuple[int, ...], str]]:
    out = []
    for f in features:
        arr = f.type.multiArrayType
        out.append((f.name, tuple(int(d) for d in arr.shape), _ARRAY_DTYPES.get(arr.dataType, str(arr.dataType))))
    return out


_BLOB_SENTINEL = 0xDEADBEEF
_BLOB_READS = {"read_fp16_data": np.uint16, "read_float_data": np.float32, "read_int32_data": np.int32,
               "read_uint32_data": np.uint32, "read_int16_data": np.int16, "read_uint16_data": np.uint16,
               "read_int8_data": np.int8, "read_uint8_data": np.uint8}


class _FileBlobReader:
    """coremltools' weight-file reader, reading whole-byte blobs with plain file reads.

    Its own reader maps the file: every page it reads stays in the process's memory beside the copy it returns,
    so a 5 GB weight file cost 10 GB to load.  Read here, each blob costs only its copy.  Sub-byte blobs (a
    palette's indices: small) go to coremltools' reader.
    """

    def __init__(self, filename: str) -> None:
        self.filename, self._native = filename, None

    def _read(self, offset: int, dtype) -> np.ndarray:
        with open(self.filename, "rb") as f:
            f.seek(offset)
            sentinel, _, size, data = struct.unpack("<IIQQ", f.read(24))
            if sentinel != _BLOB_SENTINEL:
                raise ValueError(f"no weight blob at offset {offset} of {self.filename}")
            f.seek(data)
            value = np.fromfile(f, dtype=dtype, count=size // np.dtype(dtype).itemsize)
        if value.nbytes != size:
            raise ValueError(f"the weight blob at offset {offset} of {self.filename} is cut short")
        return value

    def __getattr__(self, name: str):
        if name in _BLOB_READS:
            return lambda offset: self._read(offset, _BLOB_READS[name])
        if self._native is None:
            from coremltools.libmilstoragepython import _BlobStorageReader

            self._native = _BlobStorageReader(self.filename)
        return getattr(self._native, name)


@contextmanager
def file_blobs() -> Iterator[None]:
    """While inside, coremltools loads saved programs' weights with :class:`_FileBlobReader` (restored on exit)."""
    from coremltools.converters.mil.frontend.milproto import load as milproto

    saved = milproto.BlobReader
    milproto.BlobReader = _FileBlobReader
    try:
        yield
    finally:
        milproto.BlobReader = saved


def load_program(model):
    """The MIL program of a saved (uncompiled) coremltools MLModel, weights included."""
    from coremltools.converters.mil.frontend.milproto.load import load as load_milproto

    spec = model.get_spec()
    with file_blobs():
        return load_milproto(spec, spec.specificationVersion, model.weights_dir)


def nonfinite_constants(program) -> list[str]:
    """Names of float constants holding inf or NaN: attention masks, not weights."""
    names = []
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            value = op.outputs[0].val
            if isinstance(value, np.ndarray) and value.dtype in _FLOAT and not np.isfinite(value).all():
                names.append(op.name)
    return names


def read_package(path: Path, *, threshold: int = 2048) -> PackageContents:
    """Load a package's interface, its program and its weights as dense float16 arrays (no Core ML needed).

    Lookup tables are expanded once, here; the executor reuses them.  Call ``release()`` (or drop the
    result) when done: a full-size UNet's program holds its whole weight file.
    """
    import coremltools as ct

    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    program = load_program(model)
    weights: dict[str, np.ndarray] = {}
    expanded: dict[str, np.ndarray] = {}
    lut_ops, lut_sizes, palettes = 0, set(), {}
    for op in program.functions["main"].operations:
        if op.op_type == "const":
            value = op.outputs[0].val
            if isinstance(value, np.ndarray) and value.dtype in _FLOAT and value.size > 1:
                weights[_strip(op.name)] = value
        elif op.op_type.startswith("constexpr_lut_to_dense"):
            lut_ops += 1
            lut = op.inputs["lut"].val  # iOS 16: (palette,); iOS 18: (groups…, palette, vector size)
            palettes[_strip(op.name)] = size = int(lut.size if lut.ndim == 1 else lut.shape[-2])
            lut_sizes.add(size)
            expanded[op.outputs[0].name] = weights[_strip(op.name)] = op.materialized_val_inference()
    return PackageContents(feature_list(spec.description.input), feature_list(spec.description.output),
                           dict(spec.description.metadata.userDefined), weights, lut_ops, lut_sizes, palettes,
                           unpalettized_weights(program, threshold), program, expanded)


def constant_names(program) -> list[tuple[str, str]]:
    """Every float constant's name as reports and recipes use it (suffixes stripped) and as coremltools has it."""
    return [(_strip(op.name), op.name) for op in program.functions["main"].operations
            if op.op_type == "const" and isinstance(op.outputs[0].val, np.ndarray)
            and op.outputs[0].val.dtype in _FLOAT]


def unpalettized_weights(program, threshold: int = 2048) -> list[str]:
    """Names of plain float constants a palettizer should have replaced.

    Those above ``threshold`` elements, except vectors (coremltools never palettizes rank-1 constants:
    biases stay float16), embedding tables (``gather`` inputs) and constants holding inf or NaN (masks).
    """
    operations = program.functions["main"].operations
    gather_inputs = {v.name for op in operations if op.op_type.startswith("gather")
                     for v in op.inputs.values() if hasattr(v, "name")}
    names = []
    for op in operations:
        if op.op_type == "const":
            value = op.outputs[0].val
            if isinstance(value, np.ndarray) and value.dtype in _FLOAT and value.size > threshold \
                    and value.ndim > 1 and op.outputs[0].name not in gather_inputs and np.isfinite(value).all():
                names.append(op.name)
    return names


def _key(param_name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", param_name)


@dataclass
class Accounting:
    """Where each parameter of a module is in a package: a constant's name, or folded as an identity."""

    mapping: dict[str, str] = field(default_factory=dict)  # parameter -> const name (suffixes stripped)
    folded: set[str] = field(default_factory=set)  # parameters coremltools removed as identities


def _identity(p: torch.Tensor) -> bool:
    """A scale of ones or a shift of zeros: coremltools removes the operation applying it."""
    return bool((p == 1).all() or (p == 0).all())


def account_parameters(module: nn.Module, weights: dict[str, np.ndarray], float16: Accounting | None = None,
                       *, palettized: bool = False) -> tuple[Accounting, Check]:
    """Find every parameter of ``module`` in a package's constants, or show it folded as an identity.

    For a float16 (or float32) package (``float16`` is None) each parameter is looked up by its traced name,
    then by identical content in the package's precision (coremltools renames constants it reshapes or folds, and stores equal
    tensors once), and otherwise accepted as folded only when it is an identity (a scale of ones, a
    shift of zeros: coremltools drops the operation, so no constant remains).  A palettized package is
    checked against its own constants: each parameter must be there under the name the float16 package
    had it under, and the folded ones must be identities.  The check fails naming the parameters that
    are neither; whether a folded identity really was harmless is shown by executing the program.
    ``palettized`` without ``float16`` (a palettized package whose float16 package is not at hand): a
    parameter found neither by name nor by content is matched to the unclaimed constant of its size
    nearest to it, when that is within half the parameter's own magnitude (root mean square).
    """
    by_size: dict[int, list[str]] = {}
    for key, value in weights.items():
        by_size.setdefault(value.size, []).append(key)
    accounting, missing = Accounting(), []
    claimed: set[str] = set()
    parameters = list(module.named_parameters(remove_duplicate=True))
    for name, p in parameters:
        if float16 is not None:
            key = float16.mapping.get(name, _key(name))
        else:
            key = _key(name)
        value = weights.get(key)
        if value is not None and value.size == p.numel():
            accounting.mapping[name] = key
            claimed.add(key)
    for name, p in parameters:
        if name in accounting.mapping:
            continue
        if float16 is None:  # by content: equal tensors all map to coremltools' one copy
            # in the package's precision: float16, or float32 (an SDXL VAE)
            rounded = {np.dtype(np.float16): p.detach().half().numpy().ravel(),
                       np.dtype(np.float32): p.detach().float().numpy().ravel()}
            same = [k for k in by_size.get(p.numel(), ()) if weights[k].dtype in rounded
                    and np.array_equal(weights[k].ravel(), rounded[weights[k].dtype])]
            match = next((k for k in same if k not in claimed), same[0] if same else None)
            if match is None and palettized:
                match = _nearest(p, [k for k in by_size.get(p.numel(), ()) if k not in claimed], weights)
            if match is not None:
                accounting.mapping[name] = match
                claimed.add(match)
                continue
        if _identity(p) and (float16 is None or name in float16.folded):
            accounting.folded.add(name)
        else:
            missing.append(name)
    detail = (f"{len(accounting.mapping)} of {len(parameters)} weights read back"
              + (f", {len(accounting.folded)} folded as identities" if accounting.folded else ""))
    if missing:
        return accounting, Check("weights", "failed", "package", detail=f"{detail}; not found in package: "
                                 f"{', '.join(missing[:3])}{' …' if len(missing) > 3 else ''}")
    return accounting, Check("weights", "passed", "package", detail=detail)


def _nearest(p: torch.Tensor, keys: list[str], weights: dict[str, np.ndarray]) -> str | None:
    """The constant closest to ``p`` (root mean square), if within half of ``p``'s own root mean square."""
    values = p.detach().double().numpy().ravel()
    scale = float(np.sqrt(np.mean(values ** 2)))
    best, distance = None, 0.5 * scale
    for key in keys:
        d = float(np.sqrt(np.mean((weights[key].astype(np.float64).ravel() - values) ** 2)))
        if d < distance:
            best, distance = key, d
    return best


def load_read_back(module: nn.Module, weights: dict[str, np.ndarray], accounting: Accounting) -> None:
    """Overwrite ``module``'s parameters, in place, with what a package holds.

    Folded identities keep their (exact) values; a parameter that was not accounted for keeps its own
    value, and the weights check has already failed the package.  In place, so validating a full-size
    UNet needs no second float32 copy of its weights; the caller must not need the original values
    afterwards (see :mod:`workers.validate.sequence`).
    """
    with torch.no_grad():
        for name, p in module.named_parameters(remove_duplicate=True):
            value = weights.get(accounting.mapping.get(name, ""))
            if value is not None and value.size == p.numel():
                p.copy_(torch.from_numpy(np.asarray(value)).reshape(p.shape))
