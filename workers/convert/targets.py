"""Deployment targets: the OS versions a package is written for, per precision, and moving a saved float16
program to a newer target without converting the model again.

Apple's converter writes float16 packages for macOS 13 / iOS 16 (ML program specification 7), the oldest
OS the Swift ``StableDiffusion`` package runs on; its 6-bit palettized packages are for iOS 17 / macOS 14
(specification 8), and one palette per channel group needs iOS 18 / macOS 15.  A palettized package is
made from the float16 one: :func:`retarget` rewrites its program for the newer target, operation by
operation, into what a direct conversion for that target gives (a test compares the two).
"""

from __future__ import annotations

import gc

from workers.errors import ConversionError, OptionsError

DEPLOYMENT_TARGETS = ("iOS15", "iOS16", "iOS17", "iOS18", "macOS12", "macOS13", "macOS14", "macOS15")
FLOAT16_TARGET = "iOS16"  # = macOS13, specification 7: Apple's converter's default
PALETTIZED_TARGET = "iOS17"  # = macOS14, specification 8: where Apple publishes 6-bit models
GROUPED_PALETTE_TARGET = "iOS18"  # = macOS15: one palette per group of output channels
XL_TARGET = "iOS17"  # = macOS14: the Swift package's StableDiffusionXLPipeline needs it
SPEC_VERSIONS = {"iOS15": 6, "macOS12": 6, "iOS16": 7, "macOS13": 7, "iOS17": 8, "macOS14": 8,
                 "iOS18": 9, "macOS15": 9}
OS_NAMES = {6: "macOS 12 / iOS 15", 7: "macOS 13 / iOS 16", 8: "macOS 14 / iOS 17", 9: "macOS 15 / iOS 18"}
# what a direct conversion's default pipeline does differently at a newer target (gather takes only
# non-negative indices from iOS 17 on), then the clean-up after it
_RETARGET_PASSES = ("common::guard_negative_gather_indices", "common::const_elimination",
                    "common::dead_code_elimination")


def check_target(name: str) -> str:
    """``name`` if it is a deployment target coremltools knows; OptionsError otherwise."""
    if name not in DEPLOYMENT_TARGETS:
        raise OptionsError(f"unknown deployment target {name!r}",
                           hint=f"Use one of {', '.join(DEPLOYMENT_TARGETS)}, or leave it out for the "
                                "defaults (float16 macOS13/iOS16, palettized iOS17/macOS14).")
    return name


def deployment_target(name: str):
    """The coremltools target for a name like ``iOS17`` (raises OptionsError for unknown names)."""
    import coremltools as ct

    return getattr(ct.target, check_target(name))


def os_name(target: str) -> str:
    """``macOS 13 / iOS 16`` for ``iOS16`` or ``macOS13``: the OS versions a target means on both."""
    return OS_NAMES[SPEC_VERSIONS[check_target(target)]]


def target_for(override: str | None, *, palettized: bool, group_size: int = 0, xl: bool = False) -> str:
    """The deployment target of a package: ``override`` when given, else the precision's default; an SDXL
    pipeline's (``xl``) are never older than iOS 17 / macOS 14 (raises OptionsError for an older override)."""
    if override:
        if xl and SPEC_VERSIONS[check_target(override)] < SPEC_VERSIONS[XL_TARGET]:
            raise OptionsError(f"SDXL models need macOS 14 / iOS 17 or newer, not --deployment-target {override}",
                               hint="Pass --deployment-target iOS17 (or newer), or leave it out.")
        return check_target(override)
    if not palettized:
        return XL_TARGET if xl else FLOAT16_TARGET
    return GROUPED_PALETTE_TARGET if group_size else PALETTIZED_TARGET


def retarget(model, target: str, *, component: str = ""):
    """The saved ML program ``model`` (a coremltools MLModel) rewritten for the newer ``target``.

    Every operation whose definition changed between the program's opset and the target's is built again
    under the target's definition (its inputs are type-checked there), then the passes a direct conversion
    runs for the difference.  Returns a new unsaved MLModel; ``model`` itself is returned when it is
    already written for ``target`` or a newer one.  Raises ConversionError.
    """
    import coremltools as ct
    from coremltools.converters.mil.mil import Builder as mb
    from coremltools.converters.mil.mil.ops.helper import _get_version_of_op

    from workers.convert.passes import validated_once
    from workers.validate.readback import load_program

    wanted = SPEC_VERSIONS[check_target(target)]
    if model.get_spec().specificationVersion >= wanted:
        return model
    opset = deployment_target(target)
    try:
        program = load_program(model)
        for function in program.functions.values():
            function.opset_version = opset
            with function:
                for op in list(function.operations):
                    if op.blocks:
                        raise ValueError(f"operation {op.name} ({op.op_type}) holds nested blocks")
                    variants = getattr(op, "_op_variants", None)
                    if not isinstance(variants, dict) or type(op) is _get_version_of_op(variants, opset):
                        continue
                    rebuilt = getattr(mb, op.op_type)(**dict(op.inputs), name=op.name, before_op=op)
                    for old, new in zip(op.outputs, rebuilt if isinstance(rebuilt, (list, tuple)) else [rebuilt]):
                        op.enclosing_block.replace_uses_of_var_after_op(anchor_op=op, old_var=old, new_var=new)
                    op.enclosing_block.remove_ops([op])
        with validated_once():
            moved = ct.convert(program, convert_to="mlprogram", minimum_deployment_target=opset,
                               pass_pipeline=ct.PassPipeline(pass_names=list(_RETARGET_PASSES)),
                               compute_precision=ct.precision.FLOAT32,  # the program is float16 already
                               skip_model_load=True)
    except Exception as e:  # coremltools raises many types; name the component and chain the cause
        raise ConversionError(f"moving {component or 'the package'} to {target} failed: "
                              f"{e.__class__.__name__}: {e}", component=component or "package") from e
    del program
    gc.collect()  # the program's operations reference each other: free its weights before the next step loads them
    for key, value in model.user_defined_metadata.items():  # coremltools' own keys name the original source
        moved.user_defined_metadata[key] = value
    return moved
