"""`dpokit train --config C --dry-run` for every example config (and `--plan` for the scaling ones).

    python benchmarks/bench_dry_run_configs.py [--runs 3]

Each run is a fresh `python -m dpokit` process, offline (HF_HUB_OFFLINE=1), one thread, as a user runs it.
Prints per config the median wall time, the median CPU time of the process (user + system, which other work
on a shared machine does not stretch) and the load average, and fails if a dry run does not exit 0 or does
not print its launch. The target is under 5 s of wall time on an idle machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLANS = {"ddp": "4x80GB", "fsdp": "8x80GB", "zero3": "8x80GB", "qlora": "1xA10G-24GB", "two_machines": "16x80GB"}


def configs() -> list[tuple[str, list[str]]]:
    out = [(str(p.relative_to(ROOT)), []) for p in sorted((ROOT / "configs").glob("*.yaml"))]
    out += [(str(p.relative_to(ROOT)), ["--plan", PLANS.get(p.stem, "1x24GB")])
            for p in sorted((ROOT / "configs" / "scaling").glob("*.yaml"))]
    return out


def measure(config: str, extra: list[str]) -> tuple[float, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "dpokit", "train", "--config", config, "--dry-run", *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0 or "== launch" not in proc.stdout:
        raise RuntimeError(f"{config}: exit {proc.returncode}\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print("| config | flags | wall s (median) | CPU s (median) | load average |\n|---|---|---|---|---|")
    for config, extra in configs():
        walls, cpus = zip(*(measure(config, extra) for _ in range(args.runs)))
        print(f"| `{config}` | {' '.join(extra)} | {statistics.median(walls):.2f} | {statistics.median(cpus):.2f} "
              f"| {os.getloadavg()[0]:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
