"""What every component spec is: its features, how its modules are loaded and its export module built."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from workers.components import depends_on_attention
from workers.convert.features import TensorSpec
from workers.convert.geometry import Geometry
from workers.names import Attention


class ComponentSpec:
    """What one package component looks like and how to build its export module."""

    name: ClassVar[str]
    needs: ClassVar[tuple[str, ...]]  # diffusers sub-folders holding its weights
    palettize: ClassVar[bool] = True  # Apple keeps the VAE in float16 in palettized repos
    input_dtype: ClassVar[str] = "float16"
    compared_outputs: ClassVar[tuple[str, ...] | None] = None  # None: every output
    lean: ClassVar[bool] = False  # converts memory-lean when large (``load_lean``, ``workers.convert.lean``)
    description: ClassVar[str]

    def precision(self, g: Geometry) -> str:
        """The precision the component is converted in: float16 unless it overflows there."""
        return "float16"

    @property
    def depends_on_attention(self) -> bool:
        """Converted once per attention layout (the fact lives in ``workers.names``)."""
        return depends_on_attention(self.name)

    def inputs(self, g: Geometry) -> list[TensorSpec]:
        raise NotImplementedError

    def outputs(self, g: Geometry) -> list[TensorSpec]:
        raise NotImplementedError

    def load(self, path: Path, variants: dict[str, str | None], use_safetensors: bool) -> dict[str, nn.Module]:
        """Load the float32 torch modules this component needs from a source folder."""
        raise NotImplementedError

    def load_lean(self, path: Path, variants: dict[str, str | None], *, meta: bool) -> dict[str, nn.Module]:
        """The modules built on the ``meta`` device, or with float16 weights (see ``workers.convert.lean``); only
        components large enough to need it implement this."""
        raise NotImplementedError(f"{self.name} has no memory-lean conversion")

    def reference(self, modules: dict[str, nn.Module]) -> nn.Module:
        """The unmodified library module computing this component's outputs, in float32."""
        return self.export_module(modules, Attention.ORIGINAL)

    def export_module(self, modules: dict[str, nn.Module], attention: Attention) -> nn.Module:
        """The module that is traced and converted (taking and returning the spec's features)."""
        raise NotImplementedError

    def sample_inputs(self, g: Geometry, seed: int) -> dict[str, torch.Tensor]:
        """Deterministic random inputs in the spec's shapes (float32 values)."""
        gen = torch.Generator().manual_seed(seed)
        return {t.name: torch.randn(t.shape, generator=gen) for t in self.inputs(g)}

    def compared(self, g: Geometry) -> list[str]:
        """The outputs the checks compare (every output unless the spec names some)."""
        return list(self.compared_outputs or [t.name for t in self.outputs(g)])

    def resolved_outputs(self, g: Geometry, modules: dict[str, nn.Module]) -> list[TensorSpec]:
        """The outputs with sizes that only the loaded modules know filled in (most specs know them all)."""
        return self.outputs(g)


class Wrapper(nn.Module):
    def __init__(self, fn: Any, **modules: nn.Module) -> None:
        super().__init__()
        for key, module in modules.items():
            self.add_module(key, module)
        self._fn = fn

    def forward(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self._fn(self, *args)
