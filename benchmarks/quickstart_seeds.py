"""The quickstart's promise, measured: held-out judge score before/after over several seeds.

    python benchmarks/quickstart_seeds.py                 # seeds 0 1 2, one after another
    python benchmarks/quickstart_seeds.py --seeds 0 1 2 --jobs 2 --threads 1

Each seed runs `dpokit train --config configs/quickstart.yaml --set seed=S` exactly as a user
does (training + the automatic evaluation), in a fresh process, and its wall time is measured
from start to exit. The seed changes the generated task (other train and held-out prompts), the
adapter's initialisation and the data order. Prints the mean and spread of base, trained and
improvement, the per-family breakdown, the damage outside the task, and writes everything to
benchmarks/results/quickstart.json. Only a run alone on the machine (``--jobs 1``) gives a wall
time worth quoting; ``--jobs 2`` is for getting the scores sooner.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import PYTHON, ROOT, atomic_write_text, machine, say  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "quickstart.json"


def run_seed(seed: int, out_root: Path, threads: int | None) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    out = out_root / f"seed{seed}"
    cmd = [PYTHON, "-m", "dpokit", "train", "--config", "configs/quickstart.yaml", "--set", f"seed={seed}",
           "--output-dir", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    (out_root / f"seed{seed}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed} failed (exit {proc.returncode}); log: {out_root / f'seed{seed}.log'}")
    [run] = [p for p in out.iterdir() if p.is_dir()]
    ev = json.loads((run / "eval.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    return {"seed": seed, "wall_s": round(wall, 1), "train_runtime_s": summary["train_runtime_s"],
            "eval_runtime_s": ev.get("eval_runtime_s"), "base": ev["base_score"], "trained": ev["trained_score"],
            "improvement": round(ev["trained_score"] - ev["base_score"], 2), "per_family": ev["per_family"],
            "wins": ev["wins"], "ties": ev["ties"], "losses": ev["losses"],
            "outside": {k: ev["outside_task"][k] for k in ("prompts", "base_correct", "trained_correct", "lost",
                                                           "degenerate")},
            "run_dir": str(run)}


def mean_sd(values) -> tuple[float, float]:
    values = list(values)
    return round(statistics.mean(values), 1), round(statistics.stdev(values), 1) if len(values) > 1 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at the same time (wall times then mean less)")
    ap.add_argument("--threads", type=int, default=None, help="OMP threads per run (default: torch's choice)")
    ap.add_argument("--out", type=Path, default=None, help="where the runs go (default: a temporary folder)")
    args = ap.parse_args()
    out_root = args.out or Path(tempfile.mkdtemp(prefix="dpokit-quickstart-"))
    out_root.mkdir(parents=True, exist_ok=True)
    info = machine()
    say(f"quickstart over seeds {args.seeds} on {info['cpu']} ({info['cores']} cores, load "
        f"{info['load_avg_at_start']}), {args.jobs} at a time -> {out_root}")
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        results = list(pool.map(lambda s: run_seed(s, out_root, args.threads), args.seeds))

    say(f"\n{'seed':>4} {'base':>7} {'trained':>8} {'gain':>7} {'outside lost':>13} {'wall':>8}")
    for r in results:
        say(f"{r['seed']:>4} {r['base']:>6.1f}% {r['trained']:>7.1f}% {r['improvement']:>+6.1f} "
            f"{r['outside']['lost']:>7}/{r['outside']['prompts']:<5} {r['wall_s'] / 60:>6.1f} min")
    agg = {key: mean_sd(r[key] for r in results) for key in ("base", "trained", "improvement", "wall_s")}
    agg["outside_lost"] = mean_sd(r["outside"]["lost"] for r in results)
    say(f"mean ± sd: base {agg['base'][0]} ± {agg['base'][1]}%, trained {agg['trained'][0]} ± {agg['trained'][1]}%, "
        f"improvement {agg['improvement'][0]:+} ± {agg['improvement'][1]} points; outside-task answers lost "
        f"{agg['outside_lost'][0]} ± {agg['outside_lost'][1]} of {results[0]['outside']['prompts']}; "
        f"wall {agg['wall_s'][0] / 60:.1f} min per run")
    families = sorted({f for r in results for f in r["per_family"]})
    per_family = {f: {side: mean_sd(r["per_family"][f][side] for r in results if f in r["per_family"])
                      for side in ("base", "trained")} for f in families}
    say(f"\n{'family':<16} {'base':>13} {'trained':>13}")
    for f, v in per_family.items():
        say(f"{f:<16} {v['base'][0]:>6.1f} ± {v['base'][1]:<4} {v['trained'][0]:>6.1f} ± {v['trained'][1]:<4}")
    record = {"runs": results, "mean_sd": agg, "per_family_mean_sd": per_family, "jobs": args.jobs,
              "threads": args.threads, "machine": info, "finished": datetime.now().isoformat(timespec="seconds")}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(OUT, json.dumps(record, indent=2) + "\n")
    say(f"\nwritten to {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
