"""Memory handed back between stages: a conversion's temporaries (coremltools programs, read-back weights) are
collected and their pages returned to the system, so the next stage starts low."""

from __future__ import annotations

import ctypes
import gc
import os

RELEASE_ABOVE_BYTES = 2 << 30  # a process holding less has little to hand back (small models, tests)


def release_memory(*, above: int = RELEASE_ABOVE_BYTES) -> None:
    """Collect garbage and hand freed heap pages back to the system, so the next component starts low.

    Skipped while the process holds less than ``above`` bytes: a full collection walks every object the
    toolchain's modules keep (about 0.2 s each time) and a small model's stages leave little to free."""
    resident = resident_bytes()
    if resident is not None and resident < above:
        return
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # glibc keeps freed memory in its arenas otherwise
    except (OSError, AttributeError):
        pass  # not glibc (macOS): nothing to trim


def resident_bytes() -> int | None:
    """This process's resident memory (Linux), or None where /proc does not say."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
