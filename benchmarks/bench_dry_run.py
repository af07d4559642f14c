"""`dpokit train --config configs/quickstart.yaml --dry-run`: wall time of the whole command.

The embedded model must already be converted (the benchmark converts it first if not, untimed).
Measured as a user runs it: a fresh `python -m dpokit` process each time, default threads, five
times; the median is `dry_run_s` (target <= 5 s). Python's own start and the imports are included.
"""

from __future__ import annotations

import os
import subprocess
import time

from common import PYTHON, ROOT, median, say

RUNS = 5


def run() -> dict:
    from dpokit.embedded import ensure_embedded_model

    ensure_embedded_model(progress=False)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [PYTHON, "-m", "dpokit", "train", "--config", "configs/quickstart.yaml", "--dry-run"]
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise RuntimeError(f"dry run failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    figures = {"dry_run_s": round(median(times), 2), "dry_run_runs_s": [round(t, 2) for t in times],
               "dry_run_load_avg": round(os.getloadavg()[0], 2)}
    say(f"dry run of configs/quickstart.yaml: median {figures['dry_run_s']} s over {RUNS} runs "
        f"({', '.join(f'{t:.2f}' for t in times)})")
    return figures


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
