"""One run end to end, and batches of models with failure isolation.

config -> run directory (never reused by accident, dpokit/rundir.py) -> tokenizer, data, model ->
TRL trainer -> adapter, metrics.jsonl, summary.json -> evaluation. A multi-model batch runs the
models one after another; a failing model is recorded and the others still run.

Contract of `train`: bad input (ConfigError, DataError) and Ctrl-C stop the whole batch and are
raised; any other failure of one model is returned as a RunResult with status "failed".
Statuses: completed, failed, stopped (the health watch stopped it), interrupted (Ctrl-C).
"""

from __future__ import annotations

import gc
import re
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .console import is_rank_zero, say
from .errors import ConfigError, DataError, DpokitError, Problem
from .files import atomic_write_json
from .methods import get_method
from .rundir import CONFIG_FILE, ENVIRONMENT_FILE, RunDir, checkpoint_is_complete, checkpoint_step


@dataclass
class RunResult:
    model: str
    status: str  # completed | failed | stopped | interrupted
    run_dir: str | None = None
    error: str | None = None
    summary: dict[str, Any] = field(default_factory=dict)


class MetricsLogger(TrainerCallback):
    """Append every logged metrics dict to the run's metrics.jsonl (one JSON object per line)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.run.append_metrics({"step": state.global_step, "epoch": state.epoch, **logs})


# ----------------------------------------------------------------------------- records


def environment_record(config, data, device: str) -> dict:
    import platform

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


def final_metrics(history: list[dict]) -> dict:
    """Last value of each metric logged during training, plus the last evaluation."""
    out: dict[str, float] = {}
    for rec in history:
        for k, v in rec.items():
            if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                out[k] = v
    return out


# ----------------------------------------------------------------------------- where a run goes


def latest_run_with_checkpoint(output_root: Path, model_name: str, method: str) -> tuple[RunDir, Path] | None:
    """The newest run of exactly this model and method under `output_root` that has a complete checkpoint.

    Names are matched literally (`<model>-<method>-<YYYYmmdd-HHMMSS>[-N]`), never as a pattern."""
    pattern = re.compile(re.escape(f"{model_name}-{method}-") + r"\d{8}-\d{6}(?:-\d+)?")
    root = Path(output_root).expanduser()
    runs = [RunDir(p) for p in (root.iterdir() if root.is_dir() else []) if p.is_dir() and pattern.fullmatch(p.name)]
    for run in sorted(runs, key=lambda r: r.path.stat().st_mtime, reverse=True):
        ckpt = run.latest_checkpoint()
        if ckpt is not None:
            return run, ckpt
    return None


def find_resume_point(output_root: Path, model_name: str, method: str, setting: str | None):
    """(run to continue in, checkpoint) for `finetuning.resume_from_checkpoint`, or (None, None)."""
    if not setting:
        return None, None
    if setting != "latest":
        ckpt = Path(setting).expanduser().resolve()
        if not checkpoint_is_complete(ckpt):
            latest = RunDir(ckpt.parent).latest_checkpoint() if ckpt.parent.is_dir() else None
            raise ConfigError([Problem("finetuning.resume_from_checkpoint",
                                       f"{ckpt} is not a complete checkpoint (no readable trainer_state.json; "
                                       "a process killed while saving leaves such a folder)",
                                       f"use {latest}" if latest else "use 'latest' or a checkpoint-N folder "
                                       "that has trainer_state.json")])
        return RunDir(ckpt.parent), ckpt
    found = latest_run_with_checkpoint(output_root, model_name, method)
    if found is None:
        raise ConfigError([Problem("finetuning.resume_from_checkpoint",
                                   f"'latest': no checkpoint of {model_name}-{method} under {output_root}",
                                   "train once first, or set resume_from_checkpoint: null")])
    return found


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


# ----------------------------------------------------------------------------- running


def run_one(config, model_index: int, output_root: Path) -> RunResult:
    """Train `config.models[model_index]`; see the module docstring for what is raised and returned."""
    from .compat import quiet_library_noise
    from .distributed import shared_value
    from .machine import DeviceInfo
    from .rules import device_problems

    quiet_library_noise(config.logging.log_level)
    config = config.for_model(model_index)  # this model's effective config: its own overrides applied
    spec = config.models[0]
    pt = config.post_training
    device_info = DeviceInfo.detect()
    run: RunDir | None = None
    try:
        problems = device_problems(config, device_info)
        if problems:
            raise ConfigError(problems)
        resume_run, ckpt = find_resume_point(output_root, spec.name, pt.method, config.finetuning.resume_from_checkpoint)
        run = resume_run or (RunDir.create(output_root, spec.name, pt.method) if is_rank_zero() else None)
        run = RunDir(shared_value(str(run) if run else None))  # one directory for all processes of a DDP run
        say(f"\n== {spec.name} ({spec.huggingface_id}) · {pt.method} {pt.loss_types or ''} -> {run}")
        if spec.trust_remote_code:
            say("   trust_remote_code: true — this model's own Python code will run")
        if resume_run:
            say(f"   resuming from {ckpt}")
            if is_rank_zero():
                for moved in run.set_aside_incomplete_checkpoints():
                    say(f"   set aside a checkpoint the previous process did not finish writing: {moved.name}")
            run.trim_metrics(checkpoint_step(ckpt))
        else:
            run.write_text(CONFIG_FILE, config.to_yaml())
        run.write_summary({"status": "running", "model": spec.name, "run_dir": str(run)})
        return _train_model(config, spec, run, ckpt, device_info.device)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        detail = str(e) if isinstance(e, DpokitError) else f"{type(e).__name__}: {e}"
        if run is not None and run.file("summary.json").exists():
            stopped = run.summary().get("stopped_reason")
            run.update_summary(status="interrupted" if interrupted else "failed",
                               error=stopped if interrupted and stopped else detail)
        if isinstance(e, (KeyboardInterrupt, ConfigError, DataError)) or not isinstance(e, Exception):
            raise  # bad input and Ctrl-C stop the batch
        say(f"   FAILED: {detail}")
        return RunResult(model=spec.name, status="failed", error=detail, run_dir=str(run) if run else None,
                         summary={"traceback": traceback.format_exc()})


def _train_model(config, spec, run: RunDir, ckpt: Path | None, device: str) -> RunResult:
    """Load, train, record and (when asked) evaluate one model in `run`."""
    tokenizer, data = _prepare_data(config, spec, run, device)
    _give_advice(config, run, len(data.train))
    trainer, watch = _build(config, spec, run, tokenizer, data, device)
    from .tracking import tracking_environment

    start, cpu_start = time.perf_counter(), time.process_time()
    with tracking_environment(config):
        output = trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    cpu_s = time.process_time() - cpu_start  # CPU time of all threads: unlike wall time, not stretched by other work
    summary = _finish(config, spec, run, trainer, watch, tokenizer, output, time.perf_counter() - start, ckpt, device)
    summary["train_cpu_s"] = round(cpu_s, 2)
    run.write_summary(summary)  # (main process only; the others keep their own copy, not the file's)
    if summary["status"] != "completed":
        if summary["status"] == "interrupted":
            raise KeyboardInterrupt
        return RunResult(model=spec.name, status=summary["status"], run_dir=str(run), error=watch.stopped_reason,
                         summary=summary)
    del trainer
    gc.collect()  # the trainer's model and optimizer state hold reference cycles: free them before evaluation
    if wants_evaluation(config) and is_rank_zero():
        from .evaluate import evaluate_run, print_report

        result = evaluate_run(run)
        print_report(result)
        summary["eval"] = {k: v for k, v in result.items() if k not in ("outside_task", "samples", "per_family")}
        summary["eval"]["outside_task_lost"] = result["outside_task"]["lost"]
        run.write_summary(summary)
    elif data.eval is not None and is_rank_zero():
        _score_validation_pairs(run, summary)
    _free_device_memory()
    return RunResult(model=spec.name, status="completed", run_dir=str(run), summary=summary)


def _score_validation_pairs(run: RunDir, summary: dict) -> None:
    """Reward accuracy and margins on the validation pairs, before and after (eval.json `preference`)."""
    from .preference_eval import describe, evaluate_run_preferences

    start = time.perf_counter()
    result = evaluate_run_preferences(run)
    say(f"   {describe(result)} ({time.perf_counter() - start:.0f} s)")
    summary["eval"] = {"preference": result}
    run.write_summary(summary)


def _prepare_data(config, spec, run: RunDir, device: str):
    """The tokenizer and the data splits; length limits checked and the environment recorded."""
    from .data import load_preference_data
    from .models import load_tokenizer

    tokenizer = load_tokenizer(spec.huggingface_id, spec.trust_remote_code)
    data = load_preference_data(config, tokenizer.chat_template is not None)
    for note in data.notes:
        say(f"   data {note}")
    for note in check_lengths(config, tokenizer, data):
        say(f"   ! {note}")
    run.write_json(ENVIRONMENT_FILE, environment_record(config, data, device))
    return tokenizer, data


def _give_advice(config, run: RunDir, n_train_rows: int) -> list[str]:
    """The guide's tips for this model's run (what `--dry-run` prints), printed and kept in summary.json."""
    from .machine import DeviceInfo
    from .rules import advise

    notes = advise(config, DeviceInfo.detect(), n_train_rows)
    for note in notes:
        say(f"   ! advice: {note}")
    run.update_summary(advice=notes)
    return notes


def _build(config, spec, run: RunDir, tokenizer, data, device: str):
    """The policy (and a separate reference when asked), wrapped in the method's TRL trainer."""
    from transformers import set_seed

    from .health import HealthWatch
    from .models import check_target_modules, load_model
    from .trainers import build_trainer

    pt = config.post_training
    method = get_method(pt.method)
    set_seed(config.seed)  # before the LoRA adapter is initialised: same seed -> same adapter
    model = load_model(spec.huggingface_id, spec.trust_remote_code)
    check_target_modules(model, config.lora.target_modules, where=config.path_of("lora.target_modules"),
                         model_name=spec.name)
    ref_model = None
    if method.uses_reference:
        say(f"   reference: {method.reference_note(config, spec.huggingface_id)}")
        if pt.use_ref_model:
            ref_model = load_model(pt.ref_model_id or spec.huggingface_id, spec.trust_remote_code)
    watch = HealthWatch()
    trainer = build_trainer(config, model=model, tokenizer=tokenizer, data=data, run_dir=run.path,
                            ref_model=ref_model, callbacks=[MetricsLogger(run), watch], use_cpu=device == "cpu")
    ref_model = None  # our own reference to the separate reference model, so it can be freed below
    _release_precomputed_reference(trainer, run)
    return trainer, watch


def _release_precomputed_reference(trainer, run: RunDir) -> None:
    """With precomputed reference log-probs the separate reference model is no longer needed: free it."""
    import psutil

    from .trl_hooks import release_reference

    before = psutil.Process().memory_info().rss
    released = release_reference(trainer)
    if released is None:
        return
    change_mb = (psutil.Process().memory_info().rss - before) / 2**20
    if released:
        say(f"   reference model freed once its log-probs were precomputed (resident memory {change_mb:+.0f} MB)")
    else:
        say("   ! the reference model is still referenced after its log-probs were precomputed; it stays in memory")
    run.update_summary(reference_released=released, reference_release_rss_change_mb=round(change_mb, 1))


def _finish(config, spec, run: RunDir, trainer, watch, tokenizer, output, runtime: float, ckpt, device: str) -> dict:
    """Save the adapter (never after a non-finite loss), report health, write plots and summary.json."""
    from .health import health_alarms
    from .trainers import resolved_trainer_settings

    pt = config.post_training
    history = run.metrics()
    status = {None: "completed", "interrupted": "interrupted"}.get(watch.stopped_reason, "stopped")
    if status != "stopped":  # never save weights that produced a NaN loss
        trainer.save_model(str(run.adapter_dir))
        if is_rank_zero():
            tokenizer.save_pretrained(str(run.adapter_dir))
    alarms = health_alarms(history, trainer.state.max_steps)
    for alarm in alarms:
        say(f"   ! health: {alarm}")
    if status == "stopped":
        say(f"   stopped: {watch.stopped_reason}; last good checkpoint: {run.latest_checkpoint() or 'none saved yet'}")
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
        "adapter_dir": str(run.adapter_dir) if status != "stopped" else None,
        "run_dir": str(run),
        "resumed_from": str(ckpt) if ckpt else None,
        "stopped_reason": watch.stopped_reason,
        "health": alarms,
        **_recorded_at_start(run),
        "trl_settings": resolved_trainer_settings(trainer),
        "device": device,
    }
    if is_rank_zero():  # PNG curves of the logged metrics in run_dir/plots/ (dpokit/report.py)
        from .report import plot_run

        summary["plots"] = [str(p) for p in plot_run(run)]
    run.write_summary(summary)
    return summary


def _recorded_at_start(run: RunDir) -> dict:
    """What the run wrote into summary.json before training (the guide's advice, the reference release)."""
    started = run.summary()
    out = {"advice": started.get("advice", [])}
    out.update({k: started[k] for k in ("reference_released", "reference_release_rss_change_mb") if k in started})
    return out


def _free_device_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _check_lora_targets(config, indices: list[int]) -> None:
    """Every model's LoRA targets against its own layers, before the first model loads (exit 2 if any miss)."""
    from .targets import lora_target_problems

    problems = lora_target_problems(config, indices)
    if problems:
        raise ConfigError(problems)


def train(config, model_index: int | None = None, output_dir: str | None = None) -> list[RunResult]:
    """Train the config's models one after another (or only `model_index`); see the module docstring."""
    from .compat import check_versions
    from .data import load_preference_data

    check_versions()
    output_root = Path(output_dir or config.training.output_dir).expanduser()
    indices = [model_index] if model_index is not None else list(range(len(config.models)))
    load_preference_data(config, True)  # bad data stops here, before any model is loaded (exit 2)
    _check_lora_targets(config, indices)
    results = [run_one(config, i, output_root) for i in indices]
    if len(config.models) > 1 and model_index is None:
        if is_rank_zero():
            atomic_write_json(output_root / "batch_summary.json", {
                "finished": datetime.now().isoformat(timespec="seconds"),
                "models": [{k: v for k, v in asdict(r).items() if k != "summary"} for r in results],
            })
        if is_rank_zero() and any(r.run_dir for r in results):  # one comparison page (dpokit/report.py)
            from .report import write_report

            say(f"\n== report: {write_report([r.run_dir for r in results if r.run_dir], output_root / 'report.md')}")
    return results
