"""Benchmark: what a single-file checkpoint and a LoRA add to a full-size SD 1.5 job, against the job itself.

    python bench/single_file.py                   # the job's four components, both layouts, float16 + 6-bit
    python bench/single_file.py --reference unet  # a cheaper reference: the UNet only

Builds the random SD 1.5-architecture pipeline of ``full_size.py`` (float32, as a diffusers folder), writes it as
one ``.safetensors`` checkpoint in the original key layout (``workers.devtools.checkpoint``), and a rank-32 LoRA
of its UNet's and text encoder's attention projections (``workers.devtools.lora``, the kohya format).  Then, in
one process, each measured with wall time and peak resident memory (VmHWM, reset before each):

- **unpack**: the checkpoint resolved (its header read, its sha256 computed) and unpacked by diffusers'
  single-file loader into a diffusers folder, as a fetch does;
- **fuse**: the LoRA fused into the diffusers folder's weights, as a fetch with ``--lora`` does;
- **job**: the conversion of the diffusers folder itself (the reference: what the checkpoint's job does after
  the unpacking), every package validated.

Printed as ratios against the job's time and peak.  In ``convert`` the unpacking happens once; in a job each conversion part (the shared components, one per
layout) unpacks on its own host (the fetch stage only checks and records the files), so the job ratio is given
for both.  Needs ~25 GB of free disk under --work and about 12 GB of RAM.
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from full_size import COMPONENTS, Memory, _convert, build  # noqa: E402

JOB_PARTS = 3  # the default job's conversion parts: shared components, one per layout (two)


def measure(memory: Memory, action) -> tuple[float, int, object]:
    gc.collect()
    memory.reset()
    started = time.perf_counter()
    result = action()
    return time.perf_counter() - started, memory.peak(), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="job", choices=("job", "unet"),
                        help="the reference conversion: the default job's four components, or the UNet only")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    from workers.convert.engine import convert_pipeline
    from workers.devtools.checkpoint import write_checkpoint
    from workers.devtools.lora import write_lora
    from workers.options import ConvertOptions
    from workers.source.fetch import fetched
    from workers.source.resolve import resolve_local, resolve_source

    work = args.work or Path(tempfile.mkdtemp(prefix="single-file-"))
    work.mkdir(parents=True, exist_ok=True)
    memory = Memory()
    folder, checkpoint, lora = work / "sd15", work / "checkpoint" / "sd15.safetensors", work / "lora"
    print(f"building the SD 1.5 architecture, its checkpoint and a LoRA in {work}", flush=True)
    build("sd15", folder)
    write_checkpoint(folder, checkpoint)
    write_lora(folder, lora / "style.safetensors", kind="kohya", rank=32)
    print(f"  checkpoint {checkpoint.stat().st_size / 1e9:.2f} GB", flush=True)

    def unpack(source):
        with fetched(source, check_values=False):  # the values are the fetch stage's to check, once
            pass

    resolve_s, _, source = measure(memory, lambda: resolve_source(str(checkpoint), config=str(folder)))
    print(f"  resolve  {resolve_s:7.1f} s  (the header, and the sha256 a Hub repo's LFS pointer gives for free)")
    unpack_s, unpack_peak, _ = measure(memory, lambda: unpack(source))
    print(f"  unpack   {unpack_s:7.1f} s  peak {unpack_peak / 2**30:5.2f} GiB", flush=True)
    with_lora = resolve_source(str(folder), loras=(f"{lora / 'style.safetensors'}:0.8",))
    fuse_s, fuse_peak, _ = measure(memory, lambda: unpack(with_lora))
    print(f"  fuse     {fuse_s:7.1f} s  peak {fuse_peak / 2**30:5.2f} GiB", flush=True)

    components = COMPONENTS if args.reference == "job" else ("unet",)
    options = ConvertOptions(components=components)
    peaks: list[int] = []

    def job():
        from workers.validate.report import Event

        def on_event(event: Event) -> None:
            if event.status == "start":
                memory.reset()
            elif event.status == "done":
                peaks.append(memory.peak())

        return _convert(convert_pipeline, resolve_local(folder, source_id="bench/sd15"), work / "out", options,
                        on_event)

    job_s, job_peak, (report, _, _) = measure(memory, job)
    job_peak = max([job_peak, *peaks])
    failed = [f"{p.component} {p.variant} {p.precision}" for p in report.packages if p.status == "failed"]
    print(f"  {args.reference:<8} {job_s:7.1f} s  peak {job_peak / 2**30:5.2f} GiB"
          + (f"  FAILED: {', '.join(failed)}" if failed else ""), flush=True)
    print(f"\nagainst the {'job' if args.reference == 'job' else 'UNet-only conversion'} ({job_s / 60:.1f} min, "
          f"peak {job_peak / 2**30:.2f} GiB), same run:")
    print(f"  single-file checkpoint, convert (resolve + one unpacking): time {(resolve_s + unpack_s) / job_s:5.3f}x  "
          f"peak {unpack_peak / job_peak:4.2f}x")
    print(f"  single-file checkpoint, job (one unpacking per part, {JOB_PARTS}): time {JOB_PARTS * unpack_s / job_s:5.3f}x")
    print(f"  LoRA fused, convert (one fusing):                         time {fuse_s / job_s:5.3f}x  "
          f"peak {fuse_peak / job_peak:4.2f}x")
    print(f"  LoRA fused, job (one fusing per part, {JOB_PARTS}):                time {JOB_PARTS * fuse_s / job_s:5.3f}x")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
