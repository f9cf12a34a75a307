"""Palettize step: a float16 package in, an n-bit palettized package out (never a second conversion).

Uses coremltools' k-means palettization per weight tensor, as Apple's converter does; embedding tables
(``gather`` inputs) stay float16, and so do constants that are not weights (attention masks holding
-inf, which k-means cannot cluster).  Weights of at most ``WEIGHT_THRESHOLD`` elements stay float16 too.
"""

from __future__ import annotations

from pathlib import Path

from service.errors import ConversionError, OptionsError

SUPPORTED_BITS = (1, 2, 4, 6, 8)
DEFAULT_BITS = 6
WEIGHT_THRESHOLD = 2048  # coremltools' default: tensors of at most this many elements stay float16
# lookup-table weights arrived in iOS 16 / macOS 13; Apple ships 6-bit models for iOS 17 / macOS 14 and up
_LUT_TARGETS = {"iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"}
_SIX_BIT_TARGETS = {"iOS17", "iOS18", "macOS14", "macOS15"}


def check_bits(bits: int, target: str) -> None:
    """Refuse bit widths coremltools cannot palettize to, or targets that cannot run them."""
    if bits not in SUPPORTED_BITS:
        raise OptionsError(f"--bits {bits} is not supported",
                           hint=f"Use one of {', '.join(map(str, SUPPORTED_BITS))}.")
    if target not in _LUT_TARGETS:
        raise OptionsError(f"palettized weights need iOS16 / macOS13 or newer, not {target}",
                           hint="Pass --deployment-target iOS17 (the default), or --bits 0 for float16 only.")
    if bits == 6 and target not in _SIX_BIT_TARGETS:
        raise OptionsError(f"6-bit palettized weights need iOS17 / macOS14 or newer, not {target}",
                           hint="Pass --deployment-target iOS17, or another --bits.")


def palettize_package(package: Path, *, bits: int = DEFAULT_BITS, component: str = "",
                      threshold: int = WEIGHT_THRESHOLD):
    """Palettize every weight of a saved float16 package to ``bits`` bits with k-means.

    Returns the new coremltools MLModel (unsaved).  Raises ConversionError.
    """
    import coremltools as ct
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

    from workers.validate import load_program, nonfinite_constants

    model = ct.models.MLModel(str(package), skip_model_load=True)
    config = OptimizationConfig(
        global_config=OpPalettizerConfig(mode="kmeans", nbits=bits, weight_threshold=threshold),
        op_type_configs={"gather": None},  # embedding tables stay float16, as Apple's are
        op_name_configs={name: None for name in nonfinite_constants(load_program(model))},
    )
    try:
        return palettize_weights(model, config)
    except Exception as e:  # coremltools raises many types; name the component and chain the cause
        raise ConversionError(f"palettizing {component} to {bits} bits failed: {e}",
                              component=component) from e
