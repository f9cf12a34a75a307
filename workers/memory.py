"""Memory handed back between stages: a conversion's temporaries (coremltools programs, read-back weights) are
collected and their pages returned to the system, so the next stage starts low; and the host's memory shared
among conversion processes (:class:`HostLedger`)."""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

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


def resident_bytes(pid: int | str = "self") -> int | None:
    """A process's resident memory (this one's by default; Linux), or None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_bytes() -> int | None:
    """The most this process has held resident (Linux's VmHWM), or None where /proc does not say."""
    return _kib_field("/proc/self/status", "VmHWM")


def available_memory() -> int:
    """The memory a new process may still take: the kernel's MemAvailable, or less under a cgroup limit."""
    found = _kib_field("/proc/meminfo", "MemAvailable") or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        if limit != "max":
            found = min(found, int(limit) - used)
    except (OSError, ValueError):
        pass  # no cgroup v2 limit: the machine's memory
    return max(found, 0)


def _kib_field(path: str, key: str) -> int | None:
    """A ``Key:   N kB`` line of a /proc file, in bytes; None where it is not there."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class HostLedger:
    """What the conversion processes on this host have claimed of its memory: every part's estimated peak, by
    the process converting it, in one small JSON file under a lock, so parts of different conversions (a worker's
    concurrent tasks, a ``convert`` beside them) start only while the claims' remaining growth fits in what the
    kernel has free.  A claim counts while the process that made it and the one converting under it live (each
    known by its pid and start time, so a reused pid is not taken for it): a killed converter leaves nothing held.
    Where the file cannot be shared (another user's), claims are judged against the free memory alone.

    Hand-written: the claims are of one host's memory by processes that share no parent, which no scheduling
    library keeps.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or Path(tempfile.gettempdir()) / "coreml-publisher-memory.json"

    @contextmanager
    def _locked(self) -> Iterator[dict[str, dict]]:
        try:
            lock = open(self.path.with_suffix(".lock"), "a+")
        except OSError:  # not ours to share: this process's claims alone
            yield {}
            return
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                claims = json.loads(self.path.read_text()) if self.path.is_file() else {}
            except (OSError, ValueError):
                claims = {}  # a torn file from a crash: the claims' processes are checked anew below
            claims = {key: c for key, c in claims.items() if isinstance(c, dict) and _lives(c.get("owner"))
                      and (c.get("pid") is None or _lives(c["pid"]))}
            yield claims
            try:
                tmp = self.path.with_suffix(f".{os.getpid()}.partial")
                tmp.write_text(json.dumps(claims))
                tmp.replace(self.path)
            except OSError:
                pass  # another user's file: the claims stay this call's

    def headroom(self, claims: dict[str, dict], available: int) -> int:
        """What is free for a new claim: ``available`` (the kernel's free memory now) less what the processes
        with claims may still grow by (each claim's estimate less what its process already holds)."""
        growth = sum(max(0, c["bytes"] - ((resident_bytes(c["pid"][0]) or 0) if c.get("pid") else 0))
                     for c in claims.values())
        return available - growth

    def claim(self, key: str, estimate: int, available: int, *, share: float = 1.0, alone: bool = False) -> bool:
        """Claim ``estimate`` bytes for ``key`` (this process owns it until :meth:`assign`) if it fits in ``share``
        of the headroom, or, with ``alone``, whatever it is when no other claim is live; False: wait."""
        with self._locked() as claims:
            fits = estimate <= share * self.headroom(claims, available) or (alone and not claims)
            if fits:
                claims[key] = {"bytes": int(estimate), "owner": _identity(os.getpid()), "pid": None}
            return fits

    def assign(self, key: str, pid: int) -> None:
        """The process that converts under a claim: its growth counts from now, and its end releases the claim."""
        with self._locked() as claims:
            if key in claims:
                claims[key]["pid"] = _identity(pid)

    def release(self, key: str) -> None:
        with self._locked() as claims:
            claims.pop(key, None)

    def claims(self) -> dict[str, dict]:
        """The live claims, by key."""
        with self._locked() as claims:
            return dict(claims)


def _identity(pid: int) -> list:
    """A process as a claim names it: its pid and its start time (clock ticks after boot; None where /proc does
    not say), so a later process given the same pid is not taken for it."""
    return [pid, _started(pid)]


def _started(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _lives(identity: object) -> bool:
    """Whether the process a claim names still runs (the same process, not one given its pid since)."""
    if not isinstance(identity, list) or len(identity) != 2 or not isinstance(identity[0], int):
        return False
    pid, started = identity
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: alive
    return started is None or _started(pid) in (None, started)
