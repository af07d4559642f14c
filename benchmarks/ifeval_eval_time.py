"""How long `dpokit eval --run RUN --bench ifeval --limit 20` takes on the embedded model (target: 3 minutes).

    python benchmarks/ifeval_eval_time.py --run outputs/bench-ifeval/seed0/<run>
    python benchmarks/ifeval_eval_time.py            # trains a quickstart run first (not timed)

The command runs exactly as a user types it, in a fresh process (start-up, model and adapter
loading, both passes, scoring, writing), and its wall time from start to exit is printed with the
load average before and after and the CPU time the process used (wall time stretches when other
work shares the cores; CPU time does not). The figures go to benchmarks/results/ifeval_eval_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, PYTHON, ROOT, machine, merge_results, say  # noqa: E402

RESULTS = BENCH / "results" / "ifeval_eval_time.json"
TARGET_S = 180


def quickstart_run(folder: Path) -> Path:
    """A quickstart run to evaluate (trained here, untimed, when none is given)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    subprocess.run([PYTHON, "-m", "dpokit", "train", "--config", "configs/quickstart.yaml", "--set",
                    "evaluation.benchmarks=[]", "--output-dir", str(folder)], cwd=ROOT, env=env, check=True,
                   capture_output=True)
    return next(p.parent for p in folder.glob("*/summary.json"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a quickstart run directory (default: train one)")
    ap.add_argument("--limit", type=int, default=20)
    args = ap.parse_args(argv)
    run = args.run or quickstart_run(ROOT / "outputs" / "bench-eval-time")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cmd = [PYTHON, "-m", "dpokit", "eval", "--run", str(run), "--bench", "ifeval", "--limit", str(args.limit)]
    state = machine()
    threads = os.environ.get("OMP_NUM_THREADS", "torch default")
    say(f"timing `dpokit eval --bench ifeval --limit {args.limit}` on {state['cpu']} ({state['cores']} cores, "
        f"OMP_NUM_THREADS={threads}), load average {state['load_avg_at_start']}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"dpokit eval failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    record = json.loads((run / "bench_ifeval.json").read_text())
    entry = {"command": " ".join(["dpokit", *cmd[3:]]), "prompts": args.limit, "wall_s": round(wall, 1),
             "cpu_s": round((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), 1),
             "target_s": TARGET_S, "within_target": wall <= TARGET_S, "omp_num_threads": threads,
             "generation_s": {k: record[k]["generation"]["seconds"] if "seconds" in record[k]["generation"]
                              else record[k]["generation"].get("total_seconds") for k in ("base", "trained")},
             "max_new_tokens": record["base"]["settings"]["max_new_tokens"],
             "prompt_strict": {k: record[k]["accuracy"]["prompt_strict"] for k in ("base", "trained")},
             "machine": {**state, "load_avg_at_end": os.getloadavg()}, "run_dir": str(run),
             "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    merge_results({f"limit{args.limit}": entry}, RESULTS)
    say(proc.stdout.strip())
    say(f"\n`dpokit eval --bench ifeval --limit {args.limit}`: {wall:.0f} s wall ({entry['cpu_s']:.0f} s CPU), "
        f"target {TARGET_S} s: {'met' if entry['within_target'] else 'NOT met'}; load average "
        f"{state['load_avg_at_start']} -> {entry['machine']['load_avg_at_end']}")
    return entry


if __name__ == "__main__":
    main()
