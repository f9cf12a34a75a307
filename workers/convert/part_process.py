"""A conversion part's own process (:mod:`workers.convert.parts` starts ``python -m workers.convert.part_process FD
PARENT``): its work, pickled, on standard input; every event, then how it ended, pickled to pipe ``FD``.

It watches the process that started it (``PARENT``, given rather than read, since that process may die while this
one imports the toolchain) and exits with :data:`ORPHANED` once it is gone, instead of converting on for nobody.
The toolchain is imported only after the watch has started.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import traceback
from typing import Callable

from workers.errors import ConversionError, CoreMLPublishError, ValidationError
from workers.memory import peak_bytes

ORPHANED = 129  # the exit code of a part whose starter is gone (as on a hang-up)


def main(fd: int, parent: int) -> None:
    """Watch ``parent``, read the work, convert it, tell ``fd`` every event and how it ended."""

    def orphaned() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(ORPHANED)

    threading.Thread(target=orphaned, name="parent watch", daemon=True).start()
    source, out, options, name, threads = pickle.loads(sys.stdin.buffer.read())
    with os.fdopen(fd, "wb") as pipe:
        def tell(kind: str, payload: object) -> None:
            pickle.dump((kind, payload), pipe)
            pipe.flush()

        convert_part(source, out, options, name, threads, tell)


def convert_part(source, out, options, name: str, threads: int, tell: Callable[[str, object], None]) -> None:
    """Convert into ``out`` with ``threads`` threads, telling every event and then ``done`` (with this process's
    peak resident bytes) or ``error`` (the exception, portable)."""
    import torch

    from workers.convert.engine import convert_pipeline

    torch.set_num_threads(threads)
    try:
        convert_pipeline(source, out, options, on_event=lambda event: tell("event", event))
    except ValidationError:
        pass  # recorded in its report: merged with the others, the whole run raises it
    except BaseException as e:  # noqa: BLE001 - told to the parent, which raises it
        traceback.print_exc()  # where it happened, in the log; the parent raises the error itself
        tell("error", portable(e, options.components[0] if options.components else name))
        return
    tell("done", peak_bytes())


def portable(error: BaseException, component: str) -> tuple:
    """An exception as plain parts the parent rebuilds it from (:func:`workers.convert.parts.rebuilt`; the library's
    errors take keyword-only arguments, which pickling an exception does not keep); any other error becomes a
    ConversionError naming the component."""
    if not isinstance(error, CoreMLPublishError):
        error = ConversionError(f"converting {component} failed: {type(error).__name__}: {error}"[:500],
                                component=component)
    state = {k: v for k, v in error.__dict__.items() if k != "report"}  # a report is the parent's to write
    return type(error), error.args, state


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
