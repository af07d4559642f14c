"""`make bench`: every benchmark, its figures printed and written to benchmarks/results/latest.json.

    overhead_ratio         dpokit train step / plain TRL step (same work, alternating)   target <= 1.03
    sweep_ratio            4-beta sweep with the reference cache / recomputing           target <= 0.80
    memory_estimate_error  max |estimate - measured| / measured peak RSS, 11 configs,    target <= 0.15
                           all four methods
    dry_run_s              `dpokit train --config configs/quickstart.yaml --dry-run` wall  target <= 5
    tokens_per_s, achieved_gflops, matmul_peak_gflops (same machine, same run, same threads)

Each measured process uses BENCH_THREADS threads (default 1: on a shared machine one thread per
process gives stable figures; set BENCH_THREADS=N on an idle one).
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import RESULTS, atomic_write_text, bench_threads, machine, say  # noqa: E402

TARGETS = {"overhead_ratio": 1.03, "sweep_ratio": 0.80, "memory_estimate_error": 0.15, "dry_run_s": 5.0}


def main() -> int:
    import torch

    import bench_dry_run
    import bench_memory
    import bench_overhead
    import bench_sweep
    from flops import matmul_peak_gflops

    start = time.perf_counter()
    info = machine()
    say(f"dpokit benchmarks on {info['cpu']} ({info['cores']} cores, load {info['load_avg_at_start']}), "
        f"{bench_threads()} thread(s) per process")
    figures: dict = {}
    torch.set_num_threads(bench_threads())
    figures["matmul_peak_gflops"] = round(matmul_peak_gflops(), 1)
    say(f"matmul peak: {figures['matmul_peak_gflops']} GFLOP/s per CPU second (fp32, 1024x1024, best of 3 s)")
    for bench in (bench_dry_run, bench_overhead, bench_sweep, bench_memory):
        t = time.perf_counter()
        figures.update(bench.run())
        figures.setdefault("bench_seconds", {})[bench.__name__] = round(time.perf_counter() - t, 1)
    figures["step_efficiency"] = round(figures["achieved_gflops"] / figures["matmul_peak_gflops"], 3)
    figures.update(machine=info, threads_per_process=bench_threads(),
                   total_seconds=round(time.perf_counter() - start, 1),
                   finished=datetime.now().isoformat(timespec="seconds"))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(RESULTS, json.dumps(figures, indent=2, sort_keys=True) + "\n")

    say("\n== summary")
    failed = 0
    for key, limit in TARGETS.items():
        ok = figures[key] <= limit
        failed += not ok
        say(f"   {key:<24} {figures[key]:>8}   target <= {limit}   {'ok' if ok else 'MISSED'}")
    say(f"   {'tokens_per_s':<24} {figures['tokens_per_s']:>8}")
    say(f"   {'achieved_gflops':<24} {figures['achieved_gflops']:>8}   = {100 * figures['step_efficiency']:.0f}% of "
        f"the matmul peak {figures['matmul_peak_gflops']}")
    say(f"   written to {RESULTS.relative_to(RESULTS.parents[2])} in {figures['total_seconds'] / 60:.1f} min")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
