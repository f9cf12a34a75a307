"""One validation sequence, shared by a conversion (:mod:`workers.convert.component`) and a re-check of an
output tree (:mod:`workers.validate.output`).

Per component, in this order:

1. the float32 reference: the library's module on the check inputs (``seed + 1``; the trace inputs are
   ``seed``), kept beside the output so a macOS worker checks compiled models with the same data;
2. every attention layout's export module against it, with the pristine float32 weights (``psnr_layout``);
3. every float16 package: structure, weights, the executed program, the torch read-back, Core ML.  Where
   each parameter was found in it is kept per layout, because
4. a palettized package made from it is held to those names (validation reads a package's weights into the
   shared torch module, so the float16 packages go first, while the module still holds float16 weights);
5. the UNet chunks, chained, against the whole UNet's program.

:class:`ComponentChecks` holds what the steps share; :func:`component_inputs` makes the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from torch import nn

from workers.convert.chunk import validate_chunks
from workers.convert.features import TensorSpec
from workers.convert.geometry import Geometry
from workers.convert.specs import ComponentSpec
from workers.names import Attention
from workers.validate.checks import psnr_check, run_module, validate_package
from workers.validate.readback import Accounting
from workers.validate.report import Check
from workers.validate.thresholds import ValidationBars


@dataclass
class ComponentInputs:
    """What every package of one component is converted and validated with."""

    inputs: list[TensorSpec]  # the package's input features
    outputs: list[TensorSpec]  # its output features (sizes only the loaded module knows filled in)
    trace: dict  # the inputs it is traced with (``seed``)
    check: dict  # the inputs it is checked with (``seed + 1``)
    reference: dict  # the float32 module's outputs on ``check``


def component_inputs(spec: ComponentSpec, geometry: Geometry, modules: dict, seed: int, *,
                     per_sample: bool = False) -> ComponentInputs:
    """The features, trace inputs (``seed``), check inputs (``seed + 1``) and float32 reference of a component
    (computed one sample at a time with ``per_sample``: see :func:`workers.validate.checks.run_module`)."""
    outputs = spec.resolved_outputs(geometry, modules)
    io = ComponentInputs(spec.inputs(geometry), outputs, spec.sample_inputs(geometry, seed),
                         spec.sample_inputs(geometry, seed + 1), {})
    io.reference = run_module(spec.reference(modules), io.check, [t.name for t in outputs], per_sample=per_sample)
    return io


@dataclass
class ComponentChecks:
    """The validation of one component's packages, step by step (see the module's docstring)."""

    spec: ComponentSpec
    geometry: Geometry
    bars: ValidationBars
    io: ComponentInputs
    layout_checks: dict[str, Check] = field(default_factory=dict)  # variant -> psnr_layout
    accountings: dict[str, Accounting] = field(default_factory=dict)  # variant -> its float16 package's

    @classmethod
    def start(cls, spec: ComponentSpec, geometry: Geometry, bars: ValidationBars, modules: dict, seed: int, *,
              per_sample: bool = False) -> "ComponentChecks":
        """Step 1: the reference outputs of the float32 ``modules``."""
        return cls(spec, geometry, bars, component_inputs(spec, geometry, modules, seed, per_sample=per_sample))

    @property
    def compared(self) -> list[str]:
        return self.spec.compared(self.geometry)

    def check_layouts(self, modules: dict, layouts: tuple[Attention, ...], *, keep: bool = True,
                      per_sample: bool = False) -> dict[Attention, nn.Module]:
        """Step 2: each layout's export module against the reference, while ``modules`` hold the float32
        weights; returns the export modules (none unless ``keep``: a large component keeps one at a time)."""
        exports = {}
        for attention in layouts:
            export = self.spec.export_module(modules, attention)
            if self.spec.depends_on_attention:
                ours = run_module(export, self.io.check, [t.name for t in self.io.outputs], per_sample=per_sample)
                self.layout_checks[attention.value] = psnr_check("psnr_layout", "torch", self.io.reference, ours,
                                                                 self.compared, self.bars.layout)
            if keep:
                exports[attention] = export
            del export
        return exports

    def layout_check(self, variant: str) -> list[Check]:
        """The layout check of ``variant`` (a package's first check), if its layout was checked."""
        return [self.layout_checks[variant]] if variant in self.layout_checks else []

    def check_package(self, path: Path, export: nn.Module, variant: str, *, bits: int | float | None,
                      widths: dict[str, int] | None = None,
                      stage: Callable[[str], Any] | None = None) -> list[Check]:
        """Steps 3 and 4: every check of one saved package (after its layout's check).  A float16 package's
        parameters are kept for ``variant``'s palettized one, which is held to them (one without a float16
        package checked before it, as in a downloaded palettized repo, is held to its own constants).  A
        mixed-bit package (``bits`` its average width) is also held to its recipe's ``widths`` per constant."""
        checks, accounting = validate_package(self.spec, self.geometry, self.bars, path, export, self.io, bits=bits,
                                              float16=None if bits is None else self.accountings.get(variant),
                                              widths=widths, stage=stage)
        if bits is None and not any(c.name == "weights" and c.failed for c in checks):
            self.accountings[variant] = accounting  # an edited float16 package says nothing of its copies
        return self.layout_check(variant) + checks

    def check_chunks(self, whole: Path | None, first: Path, second: Path, *,
                     features: tuple[list, list] | None = None) -> tuple[list[Check], list[Check]]:
        """Step 5: the two chunks of a float16 UNet, chained, against the whole UNet's program when there is one
        (``whole``), else against the reference."""
        return validate_chunks(whole, first, second, self.io.check, self.io.reference, self.compared,
                               self.bars.shipped(None), features=features)
