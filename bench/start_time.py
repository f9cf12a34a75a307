"""Benchmark: how long light commands take to start, against the conversion toolchain's import.

    python bench/start_time.py [--runs 5]

Times ``coreml-publish --help`` and ``coreml-publish jobs`` (on an empty, migrated SQLite database) as a
user runs them, and, in the same run, a bare ``python -c pass`` and ``python -c "import torch"``: the
commands should cost about an interpreter start, nowhere near loading torch.  Prints the median of each
and the ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed(command: list[str], env: dict[str, str], runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "COREML_PUBLISH_DATABASE_URL": f"sqlite:///{Path(folder) / 'jobs.db'}"}
        subprocess.run(["coreml-publish", "db", "upgrade"], env=env, check=True, stdout=subprocess.DEVNULL)
        python = timed([sys.executable, "-c", "pass"], env, args.runs)
        torch = timed([sys.executable, "-c", "import torch"], env, args.runs)
        figures = {"coreml-publish --help": timed(["coreml-publish", "--help"], env, args.runs),
                   "coreml-publish jobs": timed(["coreml-publish", "jobs"], env, args.runs)}
    print(f"median of {args.runs} runs")
    label = 'python -c "import torch"'
    print(f"  {'python -c pass':<24} {python:6.2f} s")
    print(f"  {label:<24} {torch:6.2f} s")
    for name, seconds in figures.items():
        print(f"  {name:<24} {seconds:6.2f} s  = {seconds / python:4.1f}x an interpreter start, "
              f"{seconds / torch:4.2f}x importing torch")


if __name__ == "__main__":
    main()
