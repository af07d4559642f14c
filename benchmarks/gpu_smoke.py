"""GPU smoke test: every scaling strategy on a small model, measured next to the planner's estimate.

    python benchmarks/gpu_smoke.py                       # embedded SmolLM2-135M, every strategy that fits the GPUs
    python benchmarks/gpu_smoke.py --model Qwen/Qwen2.5-0.5B --strategies single,qlora,zero3 --steps 6

For each strategy (single GPU in bf16, QLoRA 4-bit, DDP, FSDP, FSDP + QLoRA, ZeRO-2, ZeRO-3, ZeRO-3 with
CPU offload) it writes the accelerate config dpokit generates, starts the processes with the command
dpokit would run (dpokit.launch), trains a few DPO steps on full-length rows (every sequence as long
as the limits allow, the case the planner describes), and prints per GPU: the median step time and
the peak of torch.cuda.max_memory_allocated next to dpokit.gpu_memory's estimate. Strategies that need
more GPUs than the machine has are listed as skipped. It needs CUDA GPUs and refuses to run without
them (exit status 2). The project's CI has no GPU: these figures come only from users' machines.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name: (strategy, quantization, cpu offload, GPUs needed)
STRATEGIES = {
    "single": ("single", "none", False, 1),
    "qlora": ("single", "4bit", False, 1),
    "ddp": ("ddp", "none", False, 2),
    "fsdp": ("fsdp", "none", False, 2),
    "fsdp-qlora": ("fsdp", "4bit", False, 2),
    "zero2": ("zero2", "none", False, 2),
    "zero3": ("zero3", "none", False, 2),
    "zero3-offload": ("zero3", "none", True, 1),
}
NO_GPU = ("gpu_smoke.py checks dpokit's multi-GPU strategies (DDP, FSDP, DeepSpeed ZeRO-2/3, QLoRA) on CUDA GPUs, "
          "and this machine has none (torch.cuda.is_available() is False). Run it on a machine with one or more "
          "NVIDIA GPUs; on a CPU the test suite covers what runs here (tests/test_launch.py, test_quantization.py).")


def cuda_devices() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def smoke_config(model: str, data: Path, out: Path, steps: int, bf16: bool, name: str = "single",
                 gpus: int = 1) -> dict:
    """The dpokit config of strategy `name` on `gpus` GPUs: the sections a user would write for it
    (`distributed`, `quantization`, `gpu.device_ids`), everything else shared by every strategy."""
    strategy, quant, offload, _ = STRATEGIES[name]
    return {
        "models": [{"name": "smoke", "huggingface_id": model}],
        "dataset": {"name": str(data), "validation_split": 0.0, "max_samples": None},
        "post_training": {"method": "dpo", "use_ref_model": False},
        "lora": {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"},
        "training": {"output_dir": str(out / "runs" / name), "max_steps": steps, "per_device_train_batch_size": 2,
                     "gradient_accumulation_steps": 1, "learning_rate": 1e-5, "warmup_steps": 0,
                     "max_seq_length": 512, "max_prompt_length": 256, "max_completion_length": 256,
                     "logging_steps": 1, "save_steps": 10_000, "gradient_checkpointing": True, "bf16": bf16},
        "gpu": {"device_ids": list(range(1 if strategy == "single" else gpus)), "use_ddp": strategy == "ddp"},
        "distributed": {"strategy": None if strategy in ("single", "ddp") else strategy, "cpu_offload": offload},
        "quantization": {"load_in": quant},
        "logging": {"report_to": ["none"], "logging_dir": str(out / "logs")},
        "evaluation": {"enabled": False},
        "seed": 0,
    }


def plan_runs(names: list[str], gpus: int) -> tuple[list[str], list[str]]:
    """(strategies to run, strategies skipped for want of GPUs)."""
    run = [n for n in names if STRATEGIES[n][3] <= gpus]
    return run, [n for n in names if n not in run]


def estimate(config: dict, gpus: int, model_config) -> int:
    """dpokit.gpu_memory's per-GPU estimate for a smoke config on a machine with `gpus` GPUs (what
    `dpokit train --dry-run --plan` prints for it)."""
    from dataclasses import replace

    from dpokit.config import load_config
    from dpokit.gpu_memory import gpu_estimate
    from dpokit.plan_inputs import model_facts, setup_from_config
    from dpokit.schedule import world_size

    loaded = load_config(data=config)
    setup, _ = setup_from_config(loaded)
    return gpu_estimate(model_facts(model_config), replace(setup, world_size=world_size(loaded, gpus))).total


def launch_plan(config_path: Path, name: str, gpus: int, work: Path):
    """How dpokit would start the smoke config of `name` (dpokit.launch.plan_for_config), with this
    script's worker as the program each process runs."""
    from dpokit.config import load_config
    from dpokit.launch import plan_for_config

    out = work / f"{name}.results"
    return plan_for_config(load_config(config_path), ["--worker", str(config_path), name, str(out)], gpus,
                           output_dir=str(work / name), program=(str(Path(__file__).resolve()),)), out


def run_strategy(name: str, config_path: Path, gpus: int, work: Path) -> list[dict]:
    """Launch the worker for one strategy the way dpokit launches a run; per-rank results."""
    import os
    import subprocess

    from dpokit.launch import write_accelerate_config

    plan, out = launch_plan(config_path, name, gpus, work)
    out.mkdir(parents=True, exist_ok=True)
    if plan.accelerate_config is not None:
        write_accelerate_config(plan)
    command = list(plan.command) if plan.commands else [sys.executable, str(Path(__file__).resolve()), "--worker",
                                                         str(config_path), name, str(out)]
    proc = subprocess.run(command, env={**os.environ, **plan.env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        return [{"error": "\n".join(proc.stderr.strip().splitlines()[-15:])}]
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def worker(config_path: str, name: str, out_dir: str) -> None:
    """One training process, built exactly as `dpokit train` builds it (dpokit.run.build_run_trainer: the
    model loaded by model_loading / quantization / distributed, the reference, the TRL trainer), plus a
    step timer; writes this rank's figures."""
    import os

    import torch
    from transformers import TrainerCallback

    from dpokit.config import load_config
    from dpokit.data import load_preference_data
    from dpokit.models import load_tokenizer
    from dpokit.run import build_run_trainer
    from dpokit.rundir import RunDir

    rank = int(os.environ.get("RANK", 0))
    cuda = torch.cuda.is_available()  # always on a GPU machine; the CPU path is what the test suite runs
    config = load_config(config_path)
    spec = config.models[0]
    run = RunDir(Path(config.training.output_dir) / f"{name}-rank{rank}")
    run.path.mkdir(parents=True, exist_ok=True)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - self.start)

    tokenizer = load_tokenizer(spec.huggingface_id)
    data = load_preference_data(config, bool(tokenizer.chat_template))
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer, _ = build_run_trainer(config, spec, run, tokenizer, data, "cuda" if cuda else "cpu")
    trainer.add_callback(StepTimer())
    trainer.train()
    figures = {"rank": rank, "strategy": name, "steps": len(times), "step_s": statistics.median(times[1:] or times),
               "peak_allocated": torch.cuda.max_memory_allocated() if cuda else None,
               "peak_reserved": torch.cuda.max_memory_reserved() if cuda else None,
               "gpu": torch.cuda.get_device_name() if cuda else None}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(figures))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="embedded:smollm2-135m-instruct", help="hub id or local directory")
    parser.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated: " + ", ".join(STRATEGIES))
    parser.add_argument("--steps", type=int, default=6, help="training steps per strategy (the first is not timed)")
    args = parser.parse_args(argv)
    gpus = cuda_devices()
    if gpus == 0:
        print(NO_GPU, file=sys.stderr)
        return 2
    names = [n.strip() for n in args.strategies.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGIES]
    if unknown:
        parser.error(f"unknown strategies {unknown}; choose from {', '.join(STRATEGIES)}")
    import torch
    from bench_memory import fixed_length_rows  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
    from common import write_rows
    from transformers import AutoConfig, AutoTokenizer

    from dpokit.models import resolve_model_path

    work = Path(tempfile.mkdtemp(prefix="dpokit-gpu-smoke-"))
    path = resolve_model_path(args.model)
    data = write_rows(work / "rows.jsonl", fixed_length_rows(AutoTokenizer.from_pretrained(path), 64, 256))
    bf16 = torch.cuda.is_bf16_supported()  # GPUs without bfloat16 (e.g. T4) train in fp32
    import yaml

    model_config = AutoConfig.from_pretrained(path)
    run, skipped = plan_runs(names, gpus)
    print(f"{gpus} GPU(s): {torch.cuda.get_device_name()}; model {args.model}; work dir {work}")
    print(f"{'strategy':<15}{'GPUs':>5}{'step s':>9}{'peak GB (max over ranks)':>26}{'estimate GB':>13}{'ratio':>7}")
    for name in run:
        config = smoke_config(args.model, data, work, args.steps, bf16, name, gpus)
        config_path = work / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(config))
        results = run_strategy(name, config_path, gpus, work)
        est = estimate(config, gpus, model_config)
        if "error" in results[0]:
            print(f"{name:<15} failed:\n{results[0]['error']}")
            continue
        peak = max(r["peak_allocated"] for r in results)
        step = statistics.median(r["step_s"] for r in results)
        print(f"{name:<15}{len(results):>5}{step:>9.2f}{peak / 2**30:>26.2f}{est / 2**30:>13.2f}{est / peak:>7.2f}")
    for name in skipped:
        print(f"{name:<15} skipped: needs {STRATEGIES[name][3]} GPUs")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:])
    else:
        sys.exit(main())
