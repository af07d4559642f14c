"""A 4-value beta sweep through dpokit, with the reference log-prob cache and without it.

Each sweep runs in its own fresh process the way a notebook sweeps: `dpokit.train` once per
beta, every run with `precompute_ref_log_probs: true`. Without the cache (DPOKIT_REF_CACHE=off)
each run computes the reference log-probs again; with it only the first does. The two processes
take turns (common.Turnstile: set-up and reference pass, then each optimizer step, then saving),
so both see the same machine load; a sweep's wall time is the sum of its turns. The shape follows
the quickstart: training sees 2/3 of the pairs (quickstart: 60 steps x 4 = 240 of 360).

    sweep_ratio      wall time of the sweep with the cache / without it
    sweep_ratio_cpu  the same in CPU time
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import Turnstile, merge_results, preference_rows, say, write_rows  # noqa: E402

BETAS = (0.05, 0.1, 0.2, 0.5)
BATCH, STEPS = 2, 4
ROWS = 3 * BATCH * STEPS // 2  # training sees 2/3 of them, as in the quickstart


def run() -> dict:
    import yaml

    from bench_overhead import conversational, dpokit_config
    from dpokit.embedded import ensure_embedded_model

    work = Path(tempfile.mkdtemp(prefix="dpokit-bench-sweep-"))
    data = write_rows(work / "pairs.jsonl", conversational(preference_rows(ROWS, seed=1)))
    config = dpokit_config(str(ensure_embedded_model(progress=False)), data, work, STEPS)
    config["training"]["logging_steps"] = 2
    config["logging"]["report_to"] = ["none"]
    config["post_training"]["precompute_ref_log_probs"] = True
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    child = ["benchmarks/bench_sweep.py", "--child", str(work / "config.yaml")]
    say(f"sweep: betas {', '.join(map(str, BETAS))}, with and without the reference cache, taking turns")
    turns = Turnstile({"with_cache": child, "without_cache": child}, env={
        "with_cache": {"DPOKIT_REF_CACHE": "on", "DPOKIT_CACHE": str(work / "cache")},
        "without_cache": {"DPOKIT_REF_CACHE": "off", "DPOKIT_CACHE": str(work / "cache-unused")}}).run()
    wall = {arm: sum(t["wall_s"] for t in ts) for arm, ts in turns.items()}
    cpu = {arm: sum(t["cpu_s"] for t in ts) for arm, ts in turns.items()}
    builds = {arm: [round(t["wall_s"], 2) for t in ts if t.get("phase") == "built"] for arm, ts in turns.items()}
    statuses = [t["status"] for t in turns["with_cache"] if t.get("phase") == "built"]
    figures = {
        "sweep_ratio": round(wall["with_cache"] / wall["without_cache"], 3),
        "sweep_ratio_cpu": round(cpu["with_cache"] / cpu["without_cache"], 3),
        "sweep_s": {arm: round(v, 1) for arm, v in wall.items()},
        "sweep_cpu_s": {arm: round(v, 1) for arm, v in cpu.items()},
        "sweep_setup_and_reference_pass_s": builds,
        "sweep_setup": {"betas": list(BETAS), "rows": ROWS, "batch": BATCH, "steps": STEPS,
                        "precompute_ref_log_probs": True, "model": "SmolLM2-135M-Instruct (embedded)"},
    }
    shutil.rmtree(work, ignore_errors=True)
    say(f"   4 betas with the cache {wall['with_cache']:.1f} s, recomputing every run {wall['without_cache']:.1f} s"
        f" -> sweep_ratio {figures['sweep_ratio']} (CPU time {figures['sweep_ratio_cpu']}; cache: "
        f"{', '.join(statuses)})")
    return figures


def child(config_path: str) -> None:
    """One sweep (the cache on or off as the environment says), taking turns with the other."""
    import os

    import dpokit.trainers as trainers
    from common import TurnTaker
    from dpokit.config import load_config
    from dpokit.run import train
    from transformers import TrainerCallback

    def one(beta: float, steps: int = STEPS) -> None:
        config = load_config(config_path, overrides={"post_training.beta": beta, "training.max_steps": steps})
        [result] = train(config)
        if result.status != "completed":
            raise RuntimeError(f"sweep run beta={beta} failed: {result.error}")

    arm_setting = os.environ["DPOKIT_REF_CACHE"]
    os.environ["DPOKIT_REF_CACHE"] = "off"
    one(0.3, steps=1)  # warm-up, before taking turns: first-use costs of the process are nobody's
    os.environ["DPOKIT_REF_CACHE"] = arm_setting
    taker = TurnTaker.from_env()

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            if state.global_step > 0:
                taker.turn({"phase": "step"})

    build = trainers.build_trainer

    def build_in_turn(*args, **kwargs):  # trainer construction is where the reference pass runs
        trainer = build(*args, **kwargs)
        status = trainer.dpokit_ref_cache.get("train", {}).get("status", "?")
        taker.turn({"phase": "built", "status": status})
        trainer.add_callback(Steps())
        return trainer

    trainers.build_trainer = build_in_turn
    taker.wait()
    start = time.perf_counter()
    for i, beta in enumerate(BETAS):
        one(beta)
        taker.turn({"phase": "saved", "beta": beta}, kind="done" if i == len(BETAS) - 1 else "step")
    say(f"sweep ({arm_setting}) done in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        print(json.dumps(merge_results(run()), indent=2))
