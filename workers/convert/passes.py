"""coremltools' pass pipelines with the program validated once per pipeline instead of after every pass.

coremltools checks the whole program after each of a conversion's ~110 graph passes (``Program.validate``: every
operation's inputs, types and scopes).  On a full-size UNet that is a fifth of a conversion's time, and as much
again in palettizing and retargeting, and it has no option to turn it off.  Inside :func:`validated_once` a
pipeline validates the program before its first pass and after its last (with the essential-scope check its
dead-code pass asks for), not between passes: a pass that breaks the program still fails the conversion, at
the end of its pipeline.  The passes themselves are untouched, so the program is the same operation for
operation (``tests/workers/convert/test_passes.py``).

Hand-written because coremltools has no switch for it; the patch is scoped (installed by the outermost
``with``, restored on its exit) and depends on the pinned coremltools (``pyproject.toml``), which the test guards.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

_lock = threading.Lock()
_depth = 0
_inside = threading.local()  # per thread: inside a pipeline, so the passes' own validate calls are skipped


def _install() -> Any:
    from coremltools.converters.mil.mil.passes.pass_pipeline import PassPipelineManager
    from coremltools.converters.mil.mil.program import Program

    validate = Program.validate
    apply_pipeline = PassPipelineManager.__dict__["apply_pipeline"]  # the staticmethod object itself

    def skipped_validate(self, *args: Any, **kwargs: Any) -> None:
        if getattr(_inside, "pipeline", False):
            return None
        return validate(self, *args, **kwargs)

    def apply_validated_once(prog, pass_pipeline) -> None:
        outer = getattr(_inside, "pipeline", False)
        if not outer:
            validate(prog)
        _inside.pipeline = True
        try:
            apply_pipeline.__func__(prog, pass_pipeline)
        finally:
            _inside.pipeline = outer
        if not outer:
            validate(prog, check_essential_scope=True)

    Program.validate = skipped_validate
    PassPipelineManager.apply_pipeline = staticmethod(apply_validated_once)

    def restore() -> None:
        Program.validate = validate
        PassPipelineManager.apply_pipeline = apply_pipeline

    return restore


_restore: Any = None


@contextlib.contextmanager
def validated_once() -> Iterator[None]:
    """While inside (in any thread of this process), every coremltools pass pipeline validates its program once
    at its start and once at its end instead of after each pass.  Re-entrant."""
    global _depth, _restore
    with _lock:
        if _depth == 0:
            _restore = _install()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _restore()
                _restore = None
