"""Palettize step: a float16 package in, an n-bit palettized package out (never a second conversion).

Each weight tensor gets the optimal 1-D k-means palette, as coremltools' k-means mode gives float16
tensors, but computed from the histogram of the tensor's float16 bit patterns (at most 65,536 distinct
values) instead of sorting the tensor, and plugged in through coremltools' public custom-palette API, so the
package format is coremltools' own.  Embedding tables
(``gather`` inputs) stay float16, and so do constants that are not weights (attention masks holding
-inf, which k-means cannot cluster).  Weights of at most ``WEIGHT_THRESHOLD`` elements stay float16 too.
"""

from __future__ import annotations

import gc
from functools import partial
from pathlib import Path

import numpy as np

from workers.errors import ConversionError, OptionsError

SUPPORTED_BITS = (1, 2, 4, 6, 8)
DEFAULT_BITS = 6
WEIGHT_THRESHOLD = 2048  # coremltools' default: tensors of at most this many elements stay float16
# tensors smaller than this are palettized on one thread: their solve takes a few milliseconds, less than
# starting the second thread for each of its layers (much less when the cores are busy).  Every tensor of a
# full-size UNet or text encoder but the first and last convolutions is larger, and gains from two threads.
ONE_THREAD_BELOW = 1 << 16
# lookup-table weights arrived in iOS 16 / macOS 13; Apple ships 6-bit models for iOS 17 / macOS 14 and up
_LUT_TARGETS = {"iOS16", "iOS17", "iOS18", "macOS13", "macOS14", "macOS15"}
_SIX_BIT_TARGETS = {"iOS17", "iOS18", "macOS14", "macOS15"}
_GROUPED_TARGETS = {"iOS18", "macOS15"}  # one palette per group of output channels arrived in iOS 18


def check_bits(bits: int, target: str, group_size: int = 0) -> None:
    """Refuse bit widths coremltools cannot palettize to, or targets that cannot run them.

    ``group_size`` > 0 asks for one palette per ``group_size`` output channels (iOS 18 / macOS 15).
    """
    if bits not in SUPPORTED_BITS:
        raise OptionsError(f"--bits {bits} is not supported",
                           hint=f"Use one of {', '.join(map(str, SUPPORTED_BITS))}.")
    if target not in _LUT_TARGETS:
        raise OptionsError(f"palettized weights need iOS16 / macOS13 or newer, not {target}",
                           hint="Leave out --deployment-target (palettized packages default to iOS17), "
                                "or pass --bits 0 for float16 only.")
    if bits == 6 and target not in _SIX_BIT_TARGETS:
        raise OptionsError(f"6-bit palettized weights need iOS17 / macOS14 or newer, not {target}",
                           hint="Leave out --deployment-target (palettized packages default to iOS17), "
                                "or pass another --bits.")
    if group_size < 0:
        raise OptionsError(f"--group-size must not be negative, not {group_size}",
                           hint="Use 0 for one palette per tensor, or a channel count such as 16.")
    if group_size and target not in _GROUPED_TARGETS:
        raise OptionsError(f"one palette per channel group needs iOS18 / macOS15, not {target}",
                           hint="Pass --deployment-target iOS18 or leave it out, or pass --group-size 0.")


def histogram_kmeans(weight: np.ndarray, nbits: int) -> tuple[np.ndarray, np.ndarray]:
    """Optimal 1-D k-means palette of a float16 tensor, from the histogram of its bit patterns.

    The same optimum coremltools' k-means mode finds for float16 tensors (an exact weighted 1-D k-means
    of the distinct values and their counts), without sorting the tensor: see :mod:`workers.compress.kmeans1d`.
    Returns the lookup table (``2**nbits`` float16 entries; unused entries are 0) and one uint8 index per
    element.  Releases the GIL while it works.  Raises ValueError for NaN or infinite values.
    """
    import numba

    from workers.compress import kmeans1d

    values16 = np.ascontiguousarray(weight).reshape(-1)
    if values16.dtype != np.float16:
        values16 = values16.astype(np.float16)
    threads = numba.get_num_threads()  # this thread's setting: the palettizer's threads each have their own
    if values16.size < ONE_THREAD_BELOW:
        numba.set_num_threads(1)
    try:
        lut, indices = kmeans1d.palettize(values16.view(np.uint16), 1 << nbits, kmeans1d.FLOAT16_VALUES)
    finally:
        numba.set_num_threads(threads)
    if lut.size == 0:
        raise ValueError("the tensor holds NaN or infinite values, which cannot be palettized")
    return lut.astype(np.float16), indices


def palettize_package(package: Path, *, bits: int = DEFAULT_BITS, component: str = "",
                      threshold: int = WEIGHT_THRESHOLD, group_size: int = 0, target: str | None = None,
                      widths: dict[str, int] | None = None):
    """Palettize every weight of a saved float16 package to ``bits`` bits (optimal 1-D k-means).

    With ``widths`` (a mixed-bit recipe: constant name, suffixes stripped, to its width; 16 or absent: it stays
    float16) each named weight gets its own width instead, through the same palettizer (per group of channels
    too), and ``bits`` is unused.

    One palette per tensor (Apple's format), or with ``group_size`` one per that many output channels
    (iOS 18 / macOS 15; a tensor whose channel count it does not divide keeps one palette per tensor).
    With ``target`` newer than the package's, the program is moved to it (:func:`workers.convert.targets.retarget`):
    after palettizing, when the palettized weights take a third of the float16 ones' memory, except for
    grouped palettes, which exist only from iOS 18 on and so need the move first.
    Returns the new coremltools MLModel (unsaved).  Raises ConversionError.
    """
    import coremltools as ct
    from coremltools.optimize.coreml import OpPalettizerConfig, OptimizationConfig, palettize_weights

    from workers.convert.passes import validated_once
    from workers.convert.targets import retarget
    from workers.validate.readback import file_blobs, load_program, nonfinite_constants, unpalettized_weights

    def palettizer(granularity: str, nbits: int = bits) -> OpPalettizerConfig:
        return OpPalettizerConfig(mode="custom", lut_function=partial(histogram_kmeans, nbits=nbits),
                                  weight_threshold=threshold, granularity=granularity, group_size=group_size or 32)

    def scan(model, find) -> list[str]:
        names = find(load_program(model))
        gc.collect()  # the program's ops reference each other: free its weights before coremltools loads its own
        return names

    model = ct.models.MLModel(str(package), skip_model_load=True)
    if target and group_size:
        model = retarget(model, target, component=component)
    granularity = "per_grouped_channel" if group_size else "per_tensor"
    wanted: dict[str, int] | None = None  # a mixed-bit recipe's constants (their op names) and widths
    if widths is not None:
        from workers.validate.readback import constant_names

        wanted = {name: widths[key] for key, name in scan(model, constant_names) if widths.get(key, 16) < 16}
        config = OptimizationConfig(op_name_configs={name: palettizer(granularity, nbits)
                                                     for name, nbits in wanted.items()})
    else:
        config = OptimizationConfig(
            global_config=palettizer(granularity),
            op_type_configs={"gather": None},  # embedding tables stay float16, as Apple's are
            op_name_configs={name: None for name in scan(model, nonfinite_constants)},
        )
    with validated_once():
        try:
            with file_blobs():  # coremltools reloads the program here: its weights read without mapping the file
                model = palettize_weights(model, config)
            if group_size:  # weights whose channel count the group size does not divide: one palette each
                rest = scan(model, lambda program: unpalettized_weights(program, threshold))
                if wanted is not None:  # a recipe's float16 layers stay float16
                    rest = [name for name in rest if name in wanted]
                if rest:
                    with file_blobs():
                        model = palettize_weights(model, OptimizationConfig(op_name_configs={
                            name: palettizer("per_tensor", wanted[name] if wanted else bits) for name in rest}))
        except Exception as e:  # coremltools raises many types; name the component and chain the cause
            raise ConversionError(f"palettizing {component} to {bits} bits failed: {e}",
                                  component=component) from e
        return retarget(model, target, component=component) if target else model
