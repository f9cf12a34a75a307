"""Validation bars: the figure each check must reach, with documented defaults.

Kept apart from :mod:`workers.validate.checks` and free of heavy imports: the service's settings read these
defaults, and the CLI, the API and the scheduler start without loading torch.
"""

from __future__ import annotations

from dataclasses import dataclass

# per bit width; the 1- and 2-bit bars sit below what correct packages reach (README, "Validation")
PALETTIZED_BARS: tuple[tuple[int, float], ...] = ((8, 35.0), (6, 25.0), (4, 15.0), (2, 10.0), (1, 3.0))


@dataclass(frozen=True)
class ValidationBars:
    """Minimum PSNR (dB) per check; documented defaults, overridable per run."""

    layout: float = 60.0  # our attention layout vs diffusers, float32 weights
    float16: float = 45.0  # float16 weights read back, torch side
    palettized: tuple[tuple[int, float], ...] = PALETTIZED_BARS
    coreml_float16: float = 35.0  # Apple's bar for float16 Core ML predictions and the executed program

    def for_bits(self, bits: int | float | None) -> float:
        """The torch-side bar for float16 (``bits=None``) or an n-bit palettized package; a mixed-bit one
        (``bits`` its average width) is held to the bar of the widest uniform width it reaches on average."""
        if bits is None:
            return self.float16
        bars = dict(self.palettized)
        if isinstance(bits, float):
            return bars[max((b for b in bars if b <= bits), default=min(bars))]
        return bars[bits]

    @classmethod
    def from_dict(cls, data: dict) -> "ValidationBars":
        """The bars as a report records them (``asdict``; JSON turns the palettized pairs into lists)."""
        return cls(**{k: tuple(tuple(x) for x in v) if k == "palettized" else v for k, v in data.items()})

    def shipped(self, bits: int | float | None) -> float:
        """The bar of what ships (the executed program, Core ML's prediction): float16 or n-bit."""
        return self.coreml_float16 if bits is None else self.for_bits(bits)
