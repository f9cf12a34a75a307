"""Benchmark: one conversion in one process against the same conversion in parts side by side, in one run.

    python bench/parallel.py                                   # SD 1.5: text encoder, UNet, VAE decoder, encoder
    python bench/parallel.py --components unet,controlled_unet # each UNet-like part's own peak (ControlNet)
    python bench/parallel.py --processes 2 --skip-serial       # the parts only

Builds the SD 1.5 architecture with random weights (``bench/full_size.py``'s builder; nothing is downloaded) and
converts it as a worker does (both attention layouts, float16 and 6-bit, every package validated), first with
``processes=1`` (every component in this process, one after the other), then with the parts in processes of their
own (:mod:`workers.convert.parts`).  Prints each run's wall time and peak memory, their ratio, whether the two
trees' packages are the same (every program, and every ``weight.bin`` byte for byte), how far the validation figures moved
(the float32 references are summed by a different number of threads), each part's own peak and time, and the
jobs per hour one worker of this machine converts.

Peak memory: for the serial run, the process's high-water mark (VmHWM); for the parts, the highest sum of the
resident memory of this process and its children, sampled every 0.1 s (and each part's own VmHWM, exact).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_size import Memory, build  # noqa: E402  (shared with the full-size benchmark)

from workers.memory import resident_bytes  # noqa: E402

COMPONENTS = ("text_encoder", "unet", "vae_decoder", "vae_encoder")


def tree_resident(pid: int) -> int:
    """The resident bytes of ``pid`` and every process under it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                parent = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += resident_bytes(current) or 0  # 0: it ended meanwhile
        todo += children.get(current, [])
    return total


class TreePeak:
    """The highest resident memory of this process and its children while the block runs, sampled."""

    def __enter__(self) -> "TreePeak":
        self.peak, self._stop = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, tree_resident(os.getpid()))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def figures(report) -> dict[str, float]:
    return {f"{p.path} {c.name}": c.value for p in report.packages for c in p.checks if c.value is not None}


def convert(source, out: Path, options, processes: int):
    """(seconds, peak bytes, report, passed) of one conversion."""
    from workers.convert.engine import convert_pipeline
    from workers.errors import ValidationError

    import gc
    gc.collect()
    memory = Memory()
    memory.reset()
    started = time.perf_counter()
    with TreePeak() as tree:
        try:
            report, passed = convert_pipeline(source, out, options, processes=processes), True
        except ValidationError as e:
            report, passed = e.report, False
    seconds = time.perf_counter() - started
    peak = memory.peak() if processes == 1 else max(tree.peak, memory.peak())
    return seconds, peak, report, passed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--components", default=",".join(COMPONENTS), help="comma-separated components")
    parser.add_argument("--processes", type=int, default=os.cpu_count() or 2, help="processes of the parallel run")
    parser.add_argument("--bits", type=int, default=6, help="palettization bits; 0 for float16 only")
    parser.add_argument("--skip-serial", action="store_true", help="only the run in parts")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args()

    from workers.options import ConvertOptions
    from workers.package.files import fingerprints
    from workers.source.resolve import resolve_local

    work = args.work or Path(tempfile.mkdtemp(prefix="parallel-"))
    source_dir = work / "sd15-source"
    shutil.rmtree(source_dir, ignore_errors=True)
    started = time.perf_counter()
    build("sd15", source_dir)
    print(f"built the random SD 1.5 pipeline in {time.perf_counter() - started:.1f} s", flush=True)
    source = resolve_local(source_dir, source_id="bench/sd15")
    components = tuple(c.strip() for c in args.components.split(",") if c.strip())
    options = ConvertOptions(components=components, bits=args.bits or None)
    results = {}
    for processes in ([] if args.skip_serial else [1]) + [args.processes]:
        out = work / f"out-{processes}"
        seconds, peak, report, passed = convert(source, out, options, processes)
        results[processes] = dict(seconds=seconds, peak=peak, passed=passed, digests=fingerprints(out),
                                  figures=figures(report), peaks=dict(report.peaks), timings=dict(report.timings))
        print(f"processes={processes}: {'passed' if passed else 'FAILED'} in {seconds:.1f} s, peak "
              f"{peak / 2**30:.2f} GiB", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    parallel = results[args.processes]
    print(f"\nSD 1.5 architecture, {', '.join(components)}; both layouts, float16 and {args.bits}-bit, validated")
    for processes, r in results.items():
        print(f"  processes={processes}: {r['seconds']:7.1f} s ({r['seconds'] / 60:.2f} min), peak "
              f"{r['peak'] / 2**30:.2f} GiB, {'passed' if r['passed'] else 'FAILED'}; "
              f"{3600 / r['seconds']:.1f} such conversions per hour")
    if 1 in results and args.processes != 1:
        serial = results[1]
        print(f"  in parts against one process: {parallel['seconds'] / serial['seconds']:.2f}x time, "
              f"{parallel['peak'] / serial['peak']:.2f}x peak")
        same = serial["digests"] == parallel["digests"]
        print(f"  packages the same: {'yes' if same else 'NO'} ({len(serial['digests'])} programs and weight files)")
        moved = [abs(parallel["figures"][k] - v) for k, v in serial["figures"].items() if k in parallel["figures"]]
        print(f"  validation figures: {len(moved)} compared, largest move {max(moved, default=0):.2f} dB")
    print("  each part's own peak (VmHWM) and its stages' time:")
    for name, peak in sorted(parallel["peaks"].items()):
        print(f"    {name:<32} {peak / 2**30:6.2f} GiB  {parallel['timings'].get(f'part/{name}', 0.0):7.1f} s")
    if args.json:
        args.json.write_text(json.dumps({str(k): {key: v for key, v in r.items() if key != "digests"}
                                         for k, r in results.items()}, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
