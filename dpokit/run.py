"""One run end to end, and batches of models with failure isolation.

config -> run directory (never reused by accident) -> tokenizer, data, model -> TRL trainer ->
adapter, metrics.jsonl, summary.json. A multi-model batch runs the models one after another;
a failing model is recorded and the others still run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .distributed import shared_value
from .errors import ConfigError, DataError, DpokitError
from .files import atomic_write_text
from .health import HealthWatch, health_alarms
from .methods import METHODS


def is_rank_zero() -> bool:
    """True in a single process and in the main process of a multi-process (DDP) launch."""
    return int(os.environ.get("RANK", "0")) == 0


def say(msg: str = "") -> None:
    if is_rank_zero():
        print(msg, flush=True)


@dataclass
class RunResult:
    model: str
    status: str  # "completed" | "failed"
    run_dir: str | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------- files


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically: readers see the old file or the new one, never half of one."""
    if not is_rank_zero():
        return
    write_text(path, json.dumps(data, indent=2, default=str) + "\n")


def write_text(path: Path, text: str) -> None:
    if not is_rank_zero():
        return
    atomic_write_text(path, text)


def new_run_dir(output_root: Path, model_name: str, method: str) -> Path:
    """A fresh directory `<model>-<method>-<timestamp>[-N]`; an existing one is never reused."""
    output_root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = f"{model_name}-{method}-{stamp}"
    for i in range(1, 1000):
        candidate = output_root / (base if i == 1 else f"{base}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh run directory under {output_root}")


def _checkpoints(run_dir: Path) -> list[Path]:
    ckpts = [p for p in run_dir.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    return sorted(ckpts, key=lambda p: int(p.name.split("-")[-1]))


def checkpoint_is_complete(ckpt: Path) -> bool:
    """True once the Trainer finished writing `ckpt`: it writes trainer_state.json last, so a process
    killed while saving leaves a folder without it (or with half of it)."""
    try:
        return "global_step" in json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (partial ones left by a kill are skipped)."""
    complete = [p for p in _checkpoints(run_dir) if checkpoint_is_complete(p)]
    return complete[-1] if complete else None


def set_aside_incomplete_checkpoints(run_dir: Path) -> list[Path]:
    """Rename half-written checkpoints to incomplete-checkpoint-N so a resumed run can save that step
    again. They are kept (never deleted): nothing in a run directory is thrown away."""
    moved = []
    for ckpt in _checkpoints(run_dir):
        if not checkpoint_is_complete(ckpt):
            target = ckpt.with_name(f"incomplete-{ckpt.name}")
            n = 1
            while target.exists():
                n += 1
                target = ckpt.with_name(f"incomplete-{ckpt.name}-{n}")
            ckpt.rename(target)
            moved.append(target)
    return moved


def find_resume_point(output_root: Path, model_name: str, method: str, setting: str | None):
    """(run_dir to continue in, checkpoint) for `resume_from_checkpoint`, or (None, None)."""
    if not setting:
        return None, None
    if setting != "latest":
        ckpt = Path(setting).expanduser().resolve()
        if not checkpoint_is_complete(ckpt):
            latest = latest_checkpoint(ckpt.parent) if ckpt.parent.is_dir() else None
            raise ConfigError([_problem("finetuning.resume_from_checkpoint",
                                        f"{ckpt} is not a complete checkpoint (no readable trainer_state.json; "
                                        "a process killed while saving leaves such a folder)",
                                        f"use {latest}" if latest else "use 'latest' or a checkpoint-N folder "
                                        "that has trainer_state.json")])
        return ckpt.parent, ckpt
    runs = sorted((p for p in output_root.glob(f"{model_name}-{method}-*") if p.is_dir()),
                  key=lambda p: p.stat().st_mtime, reverse=True)
    for run in runs:
        ckpt = latest_checkpoint(run)
        if ckpt is not None:
            return run, ckpt
    raise ConfigError([_problem("finetuning.resume_from_checkpoint",
                                f"'latest': no checkpoint of {model_name}-{method} under {output_root}",
                                "train once first, or set resume_from_checkpoint: null")])


def _problem(where, msg, hint=""):
    from .errors import Problem

    return Problem(where, msg, hint)


class MetricsLogger(TrainerCallback):
    """Append every logged metrics dict to metrics.jsonl (one JSON object per line)."""

    def __init__(self, path: Path):
        self.path = path
        self.history: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        record = {"step": state.global_step, "epoch": state.epoch, **logs}
        self.history.append(record)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")


# ----------------------------------------------------------------------------- records


def environment_record(config, data, device: str) -> dict:
    import torch

    from .compat import installed_versions

    return {
        "versions": installed_versions(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": device,
        "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
        "torch_threads": torch.get_num_threads(),
        "seed": config.seed,
        "dataset": {"source": data.source, "format": data.format, "fingerprint": data.fingerprint,
                    "train_rows": len(data.train), "eval_rows": len(data.eval) if data.eval is not None else 0,
                    "dropped": data.dropped},
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def read_metrics(run_dir: Path) -> list[dict]:
    """All records of metrics.jsonl (across resumes), in order."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop records logged after `step` (work lost when a run died after its last checkpoint)."""
    kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= step]
    write_text(Path(run_dir) / "metrics.jsonl", "".join(json.dumps(r, default=float) + "\n" for r in kept))


def final_metrics(history: list[dict]) -> dict:
    """Last value of each metric logged during training, plus the last evaluation."""
    out: dict[str, float] = {}
    for rec in history:
        for k, v in rec.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                out[k] = v
    return out


# ----------------------------------------------------------------------------- running


def run_one(config, model_index: int, output_root: Path) -> RunResult:
    """Train one model of the config; returns its RunResult (raises on failure)."""
    from .compat import quiet_library_noise
    from .rules import DeviceInfo, device_problems

    quiet_library_noise(config.logging.log_level)
    spec = config.models[model_index]
    pt = config.post_training
    method = METHODS[pt.method]
    device_info = DeviceInfo.detect()
    problems = device_problems(config, device_info)
    if problems:
        raise ConfigError(problems)
    use_cpu = device_info.cuda_devices == 0
    device = "cpu" if use_cpu else "cuda"

    resume_dir, ckpt = find_resume_point(output_root, spec.name, pt.method, config.finetuning.resume_from_checkpoint)
    run_dir = resume_dir or (new_run_dir(output_root, spec.name, pt.method) if is_rank_zero() else None)
    run_dir = shared_value(run_dir)  # one directory for all processes of a DDP run
    say(f"\n== {spec.name} ({spec.huggingface_id}) · {pt.method} {pt.loss_types or ''} -> {run_dir}")
    if spec.trust_remote_code:
        say("   trust_remote_code: true — this model's own Python code will run")
    if resume_dir:
        say(f"   resuming from {ckpt}")
        if is_rank_zero():
            for moved in set_aside_incomplete_checkpoints(run_dir):
                say(f"   set aside a checkpoint the previous process did not finish writing: {moved.name}")
        trim_metrics(run_dir, int(ckpt.name.split("-")[-1]))
    else:
        write_text(run_dir / "resolved_config.yaml", config.to_yaml())
    write_json(run_dir / "summary.json", {"status": "running", "model": spec.name, "run_dir": str(run_dir)})
    try:
        return _execute(config, spec, method, run_dir, ckpt, use_cpu, device)
    except BaseException as e:
        detail = str(e) if isinstance(e, DpokitError) else f"{type(e).__name__}: {e}"
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        record = json.loads((run_dir / "summary.json").read_text())
        record.update(status=status, error=detail or record.get("stopped_reason"))
        write_json(run_dir / "summary.json", record)
        e.dpokit_run_dir = str(run_dir)
        raise


def _execute(config, spec, method, run_dir: Path, ckpt, use_cpu: bool, device: str) -> RunResult:
    import torch
    from transformers import set_seed

    from .data import load_preference_data
    from .models import check_target_modules, load_model, load_tokenizer
    from .trainers import build_trainer, resolved_trainer_settings

    pt = config.post_training
    tokenizer = load_tokenizer(spec.huggingface_id, spec.trust_remote_code)
    data = load_preference_data(config, tokenizer.chat_template is not None)
    for note in data.notes:
        say(f"   data {note}")
    for note in check_lengths(config, tokenizer, data):
        say(f"   ! {note}")
    write_json(run_dir / "environment.json", environment_record(config, data, device))

    set_seed(config.seed)  # before the LoRA adapter is initialised: same seed -> same adapter
    model = load_model(spec.huggingface_id, spec.trust_remote_code)
    check_target_modules(model, config.lora.target_modules)
    ref_model = None
    if method.uses_reference and pt.use_ref_model:
        ref_id = pt.ref_model_id or spec.huggingface_id
        say(f"   reference: separate frozen model {ref_id}")
        ref_model = load_model(ref_id, spec.trust_remote_code)
    elif method.uses_reference:
        say("   reference: the base model with the LoRA adapter switched off (no second copy)")

    metrics = MetricsLogger(run_dir / "metrics.jsonl")
    watch = HealthWatch()
    trainer = build_trainer(config, spec, model=model, tokenizer=tokenizer, data=data, run_dir=run_dir,
                            ref_model=ref_model, callbacks=[metrics, watch], use_cpu=use_cpu)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    runtime = time.perf_counter() - start
    history = read_metrics(run_dir)
    status = "completed" if watch.stopped_reason is None else (
        "interrupted" if watch.stopped_reason == "interrupted" else "stopped")
    adapter_dir = run_dir / "adapter"
    if status != "stopped":  # never save weights that produced a NaN loss
        trainer.save_model(str(adapter_dir))
        if is_rank_zero():
            tokenizer.save_pretrained(str(adapter_dir))
    alarms = health_alarms(history, trainer.state.max_steps)
    for alarm in alarms:
        say(f"   ! health: {alarm}")
    if status == "stopped":
        last = latest_checkpoint(run_dir)
        say(f"   stopped: {watch.stopped_reason}; last good checkpoint: {last or 'none saved yet'}")

    summary = {
        "status": status,
        "model": spec.name,
        "huggingface_id": spec.huggingface_id,
        "method": pt.method,
        "loss_type": pt.loss_types,
        "steps": trainer.state.global_step,
        "train_runtime_s": round(runtime, 2),
        "final_metrics": final_metrics(history),
        "train_loss": output.training_loss,
        "adapter_dir": str(adapter_dir) if status != "stopped" else None,
        "run_dir": str(run_dir),
        "resumed_from": str(ckpt) if ckpt else None,
        "stopped_reason": watch.stopped_reason,
        "health": alarms,
        "trl_settings": resolved_trainer_settings(trainer),
        "device": device,
    }
    if is_rank_zero():  # PNG curves of the logged metrics in run_dir/plots/ (dpokit/report.py)
        from .report import plot_run

        summary["plots"] = [str(p) for p in plot_run(run_dir)]
    if status != "completed":
        write_json(run_dir / "summary.json", summary)
        if status == "interrupted":
            raise KeyboardInterrupt
        return RunResult(model=spec.name, status="failed", run_dir=str(run_dir), error=watch.stopped_reason,
                         summary=summary)
    del trainer, model, ref_model
    if wants_evaluation(config) and is_rank_zero():
        from .evaluate import evaluate_run, print_report

        result = evaluate_run(run_dir)
        print_report(result)
        summary["eval"] = {k: v for k, v in result.items() if k not in ("outside_task", "samples", "per_family")}
        summary["eval"]["outside_task_lost"] = result["outside_task"]["lost"]
    write_json(run_dir / "summary.json", summary)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return RunResult(model=spec.name, status="completed", run_dir=str(run_dir), summary=summary)


def check_lengths(config, tokenizer, data, sample: int = 200) -> list[str]:
    """Refuse limits that cut every prompt; warn when most completions are cut (before weights load)."""
    from .data import length_report

    t = config.training
    stats = length_report(tokenizer, data.train, t.max_prompt_length, t.max_completion_length, t.max_seq_length,
                          limit=sample)
    n = stats["rows"]
    if n and t.max_prompt_length and stats["prompt_truncated"] == n:
        raise DataError(f"training.max_prompt_length: every prompt of the first {n} rows is longer than "
                        f"{t.max_prompt_length} tokens (shortest {min(stats['prompt_len'])}); all would lose their "
                        f"start. Raise max_prompt_length to at least {min(stats['prompt_len'])} (and max_seq_length "
                        "with it), or shorten the prompts.")
    notes = []
    if n and stats["completion_truncated"] > n / 2:
        notes.append(f"{stats['completion_truncated']} of {n} sampled pairs have a completion longer than "
                     f"max_completion_length={t.max_completion_length}: they are cut, and the model learns from "
                     "fragments; consider raising it")
    if n and stats["total_truncated"]:
        notes.append(f"{stats['total_truncated']} of {n} sampled pairs exceed max_seq_length={t.max_seq_length} "
                     "after the prompt/completion limits and lose their end")
    return notes


def wants_evaluation(config) -> bool:
    enabled = config.evaluation.enabled
    return enabled is True or (enabled == "auto" and config.dataset.name.startswith("embedded:"))


def train(config, model_index: int | None = None, output_dir: str | None = None) -> list[RunResult]:
    """Train the config's models one after another (or only `model_index`)."""
    from .data import load_preference_data

    output_root = Path(output_dir or config.training.output_dir).expanduser()
    indices = [model_index] if model_index is not None else list(range(len(config.models)))
    results: list[RunResult] = []
    load_preference_data(config, True)  # bad data stops here, before any model is loaded (exit 2)
    for i in indices:
        spec = config.models[i]
        try:
            results.append(run_one(config, i, output_root))
        except (KeyboardInterrupt, ConfigError, DataError):  # bad input stops the batch (exit 2)
            raise
        except Exception as e:  # one model's failure must not stop the batch
            detail = str(e) if isinstance(e, DpokitError) else f"{type(e).__name__}: {e}"
            say(f"   FAILED: {detail}")
            results.append(RunResult(model=spec.name, status="failed", error=detail,
                                     run_dir=getattr(e, "dpokit_run_dir", None),
                                     summary={"traceback": traceback.format_exc()}))
    if len(config.models) > 1 and model_index is None:
        write_json(output_root / "batch_summary.json", {
            "finished": datetime.now().isoformat(timespec="seconds"),
            "models": [{k: v for k, v in asdict(r).items() if k != "summary"} for r in results],
        })
        if is_rank_zero() and any(r.run_dir for r in results):  # one comparison page (dpokit/report.py)
            from .report import write_report

            say(f"\n== report: {write_report([r.run_dir for r in results if r.run_dir], output_root / 'report.md')}")
    return results

