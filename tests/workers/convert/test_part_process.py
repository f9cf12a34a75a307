"""A conversion part's own process (``workers.convert.part_process``): how it ends without its starter, and its
errors made portable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from workers.convert import part_process
from workers.convert.parts import rebuilt
from workers.errors import ConversionError, SourceError


def test_a_part_ends_when_the_process_that_started_it_is_gone(tmp_path: Path) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a parent that died while the part was still starting (its pid is given, not read)
    read, write = os.pipe()
    part = subprocess.Popen([sys.executable, "-m", "workers.convert.part_process", str(write), str(gone.pid)],
                            stdin=subprocess.PIPE, pass_fds=(write,))
    os.close(write)
    try:
        # its work never came (its standard input stays open): the watch on its parent ended it
        assert part.wait(timeout=60) == part_process.ORPHANED
    finally:
        part.kill()
        part.stdin.close()
        os.close(read)


def test_errors_cross_to_the_parent_with_their_type_and_facts() -> None:
    error = rebuilt(part_process.portable(SourceError("bad weights", source="org/model", hint="Fix them."), "unet"))
    assert type(error) is SourceError and error.source == "org/model" and error.one_line() == "bad weights. Fix them."
    other = rebuilt(part_process.portable(MemoryError("out of memory"), "vae_decoder"))
    assert isinstance(other, ConversionError) and other.component == "vae_decoder"
    assert str(other) == "converting vae_decoder failed: MemoryError: out of memory"
