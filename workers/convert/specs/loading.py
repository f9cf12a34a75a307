"""Loading a component's torch modules from a source folder: in float32, refusing damaged weights, weights that
contradict the config or leave tensors uninitialised, and NaN/inf values; or memory-lean (on the ``meta``
device, or with float16 weights read tensor by tensor, for :mod:`workers.convert.lean`)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workers.errors import CoreMLPublishError, SourceError
from workers.source.weights import count_non_finite, iter_tensors, loaded_files, non_finite_error, read_header

# diffusers' words for a checkpoint tensor whose shape contradicts the config's model
_DIFFUSERS_MISMATCH = re.compile(r"(\S+) expected shape torch\.Size\((\[.*?\])\), but got torch\.Size\((\[.*?\])\)")
_CONTRADICTS = "The weights do not belong to this config: fix or re-download the component."
_UNLOADABLE = "The component's files are damaged or do not match its config: fix or re-download them."


def load_component(cls: Any, path: Path, subfolder: str, *, use_safetensors: bool, variant: str | None,
          **kwargs: Any) -> nn.Module:
    """Load one component in float32, refusing with one line (naming the component) weights that are
    damaged, contradict its config, leave some of its tensors uninitialised, or hold NaN/inf values."""
    from transformers import PreTrainedModel

    source = str(path)
    if use_safetensors:  # a damaged file is named here, not deep inside the loader
        for file in loaded_files(path / subfolder, variant):
            read_header(file, source=source, label=f"{subfolder}/{file.name}")
    if issubclass(cls, PreTrainedModel):  # report mismatched shapes in the loading info, not a bare error
        kwargs["ignore_mismatched_sizes"] = True
    try:
        model, info = cls.from_pretrained(str(path), subfolder=subfolder, use_safetensors=use_safetensors,
                                          variant=variant, output_loading_info=True, **kwargs)
    except (CoreMLPublishError, MemoryError):
        raise
    except Exception as e:  # anything the loaders raise for a source that does not match its config
        found = _DIFFUSERS_MISMATCH.search(str(e))
        detail = (f"tensor {found[1]} is {found[3]} in the weights but the config's model has {found[2]}"
                  if found else (str(e).strip().splitlines() or [e.__class__.__name__])[0][:200])
        raise SourceError(f"{subfolder} cannot be loaded: {detail}", source=source,
                          hint=_CONTRADICTS if found else _UNLOADABLE) from e
    refuse_unmatched(subfolder, source, info.get("mismatched_keys") or [], info.get("missing_keys") or [])
    model = model.float().eval().requires_grad_(False)
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point():
            bad = count_non_finite(tensor)
            if bad:
                raise non_finite_error(subfolder, name, bad, tensor.numel(), source=source)
    return model


def refuse_unmatched(subfolder: str, source: str, mismatched: list, missing) -> None:
    """Raise SourceError for weights whose shapes contradict the config's model (``(key, weights' shape, model's
    shape)``), then for tensors of the model the weights lack."""
    if mismatched:
        key, weights, model_shape = sorted(mismatched)[0]
        raise SourceError(f"{subfolder} cannot be loaded: tensor {key} is {list(weights)} in the weights but the "
                          f"config's model has {list(model_shape)}", source=source, hint=_CONTRADICTS)
    missing = sorted(missing)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise SourceError(f"{subfolder}: the weights lack {', '.join(missing[:3])}{more}", source=source,
                          hint="Those tensors would be random: " + _CONTRADICTS)


def load_lean_component(cls: Any, path: Path, subfolder: str, *, variant: str | None, meta: bool) -> nn.Module:
    """One component built from its config on the ``meta`` device (``meta``: no weights, for tracing), or with its
    safetensors weights read as float16 tensor by tensor (``workers.convert.lean``).

    Query projections stay float32: the export module folds the softmax scale into them first, rounding as the
    normal path does.  Refuses like ``_load``: damaged files, NaN/inf values, missing or mis-shaped tensors
    (tensors the config's model has no place for are left out, as diffusers' loader leaves them).
    """
    config = cls.load_config(str(path), subfolder=subfolder)
    with torch.device("meta"):
        model = cls.from_config(config)
    model = model.float().eval().requires_grad_(False)
    if meta:
        return model
    source = str(path)
    files = loaded_files(path / subfolder, variant)
    if not files:
        raise SourceError(f"{subfolder} has no safetensors weights to read", source=source,
                          hint="Convert the component's weights to safetensors.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for key, tensor in iter_tensors(file, source=source, label=f"{subfolder}/{file.name}"):
            if tensor.is_floating_point():
                bad = count_non_finite(tensor)
                if bad:
                    raise non_finite_error(subfolder, key, bad, tensor.numel(), source=source)
                tensor = tensor.float() if ".to_q." in key else tensor.half()
            state[key] = tensor
    expected = model.state_dict()
    refuse_unmatched(subfolder, source,
                      [(key, tensor.shape, expected[key].shape) for key, tensor in state.items()
                       if key in expected and tuple(expected[key].shape) != tuple(tensor.shape)],
                      set(expected) - set(state))
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=True, assign=True)
    return model
