"""What one process per job costs a local sweep: the same sweep under ``hydra/launcher=basic`` (every
job in the sweep's process) and ``hydra/launcher=process`` (peftlab's default for -m), timed in one
invocation, one after the other; and what each job's peak memory is under each.

    python scripts/benchmark_launcher.py                  # 6 jobs of debug=tiny, 4 steps each
    python scripts/benchmark_launcher.py --jobs 4 -- model=smollm2_135m trainer.max_steps=5

Prints the sweep's wall time under each launcher, the difference per job (the price of a fresh
interpreter and its imports), and each job's peak RSS. Time it alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUICK = ["debug=tiny", "zero_shot=false", "forgetting=null", "merge_after=false", "save_adapter=false",
         "trainer.max_steps=4"]


def sweep(launcher: str, jobs: int, extra: list[str], root: Path) -> tuple[float, list[float]]:
    folder = root / launcher
    command = [str(Path(sys.executable).parent / "peftlab-train"), "-m", *QUICK, *extra,
               f"seed={','.join(str(s) for s in range(1, jobs + 1))}", f"hydra/launcher={launcher}",
               f"hydra.sweep.dir={folder}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, text=True)
    wall = time.perf_counter() - start
    peaks = [json.loads((folder / str(j) / "metrics.json").read_text())["memory"]["peak_rss_mb"] for j in range(jobs)]
    return wall, peaks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=6)
    parser.add_argument("extra", nargs="*", help="more peftlab-train overrides (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {launcher: sweep(launcher, args.jobs, args.extra, Path(tmp)) for launcher in ("basic", "process")}
    (basic, basic_peaks), (process, process_peaks) = results["basic"], results["process"]
    print(f"{args.jobs} jobs: {' '.join(QUICK + args.extra)}")
    print(f"  basic   (one process)       {basic:7.1f} s  ({basic / args.jobs:.1f} s a job)")
    print(f"  process (one process a job) {process:7.1f} s  ({process / args.jobs:.1f} s a job)")
    cost = (process - basic) / args.jobs
    print(f"  one process per job costs {cost:+.1f} s a job ({process / basic:.2f}x the sweep)")
    print(f"  peak RSS per job, MiB: basic {', '.join(f'{p:.0f}' for p in basic_peaks)}")
    print(f"                         process {', '.join(f'{p:.0f}' for p in process_peaks)}")


if __name__ == "__main__":
    main()
