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
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from .console import is_rank_zero, say
from .errors import ConfigError, DataError, DpokitError, RunInterrupted
from .files import atomic_write_json
from .methods import get_method
from .rundir import CONFIG_FILE, ENVIRONMENT_FILE, RunDir, fresh_dir, this_process


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


def check_lengths(config, tokenizer, data, sample: int = 200) -> list[str]:
    """Refuse length limits that leave nothing to learn from; notes when most completions are cut."""
    from .tokens import length_report, length_verdict

    t = config.training
    stats = length_report(tokenizer, data.train, t.max_prompt_length, t.max_completion_length, t.max_seq_length,
                          limit=sample)
    error, notes = length_verdict(t, stats)
    if error:
        raise DataError(error)
    return notes


def wants_evaluation(config) -> bool:
    """Before/after answers at the end of training: when asked, or (auto) for the embedded task and for any
    data with a validation split (its held-out prompts are answered side by side)."""
    enabled = config.evaluation.enabled
    return enabled is True or (enabled == "auto" and (config.dataset.name.startswith("embedded:")
                                                      or config.dataset.validation_split > 0))


# ----------------------------------------------------------------------------- running


def run_one(config, model_index: int, output_root: Path) -> RunResult:
    """Train `config.models[model_index]`; see the module docstring for what is raised and returned."""
    from .compat import quiet_library_noise
    from .distributed import shared_value
    from .machine import DeviceInfo
    from .resume import plan_resume
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
        plan = plan_resume(config, spec, output_root)
        ckpt = plan.checkpoint if plan else None
        if plan and plan.in_place:
            run = plan.source
        elif is_rank_zero():
            run = RunDir.create(output_root, spec.name, pt.method)
        run = RunDir(shared_value(str(run) if run else None))  # one directory for all processes of a DDP run
        if is_rank_zero():
            from .launch import record_launch_config

            record_launch_config(run.path)  # the accelerate config this run was launched with, if any
        say(f"\n== {spec.name} ({spec.huggingface_id}) · {pt.method} {pt.loss_types or ''} -> {run}")
        if spec.trust_remote_code:
            say("   trust_remote_code: true — this model's own Python code will run")
        if plan and plan.in_place:
            say(f"   resuming from {ckpt}")
            if is_rank_zero():
                for moved in run.set_aside_incomplete_checkpoints():
                    say(f"   set aside a checkpoint the previous process did not finish writing: {moved.name}")
            run.trim_metrics(plan.step)
        else:
            run.write_text(CONFIG_FILE, config.to_yaml())
            record = {"status": "running", "model": spec.name, "run_dir": str(run), "process": this_process()}
            if plan:  # a finished run, or more steps: continue from its checkpoint here, leaving it as it is
                record["extends"] = {"run": str(plan.source), "checkpoint": str(ckpt), "step": plan.step,
                                     "changes": {k: list(v) for k, v in plan.changes.items()}}
                say(f"   continuing {plan.source.name} from step {plan.step} in this new run directory "
                    f"({plan.source.name} stays as it is)")
            run.write_summary(record)
        return _train_model(config, spec, run, plan, device_info.device)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)
        detail = str(e) if isinstance(e, DpokitError) else f"{type(e).__name__}: {e}"
        if run is not None and _owns(run):  # never touch a record this process did not start
            stopped = run.summary().get("stopped_reason")
            run.update_summary(status="interrupted" if interrupted else "failed",
                               error=stopped if interrupted and stopped else detail)
        if isinstance(e, (KeyboardInterrupt, ConfigError, DataError)) or not isinstance(e, Exception):
            raise  # bad input and Ctrl-C stop the batch
        say(f"   FAILED: {detail}")
        return RunResult(model=spec.name, status="failed", error=detail, run_dir=str(run) if run else None,
                         summary={"traceback": traceback.format_exc()})


def _train_model(config, spec, run: RunDir, plan, device: str) -> RunResult:
    """Load, train, record and (when asked) evaluate one model in `run`."""
    ckpt = plan.checkpoint if plan else None
    tokenizer, data = _prepare_data(config, spec, run, device)
    resumes = run.summary().get("resumes", []) + ([{"from": str(ckpt), "at": _now()}] if plan and plan.in_place else [])
    run.mark_running(**({"resumes": resumes} if resumes else {}))  # only now: the checks above passed
    _give_advice(config, run, len(data.train))
    trainer, watch = build_run_trainer(config, spec, run, tokenizer, data, device)
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
            raise RunInterrupted(watch.signum or signal.SIGINT)
        return RunResult(model=spec.name, status=summary["status"], run_dir=str(run), error=watch.stopped_reason,
                         summary=summary)
    del trainer
    gc.collect()  # the trainer's model and optimizer state hold reference cycles: free them before evaluation
    if wants_evaluation(config) and is_rank_zero():
        from .evaluate import evaluate_run, print_report

        result = evaluate_run(run, trust_remote_code=spec.trust_remote_code)  # this config's own setting
        print_report(result)
        summary["eval"] = {k: v for k, v in result.items() if k not in ("outside_task", "samples", "per_family")}
        summary["eval"]["outside_task_lost"] = result["outside_task"]["lost"]
        run.write_summary(summary)
    elif data.eval is not None and is_rank_zero():
        _score_validation_pairs(run, summary)
    if config.evaluation.benchmarks and is_rank_zero():
        from .bench.runs import run_configured_benchmarks

        summary = run_configured_benchmarks(run, config, summary, trust_remote_code=spec.trust_remote_code)
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


def build_run_trainer(config, spec, run: RunDir, tokenizer, data, device: str):
    """The policy (and a separate reference when asked), wrapped in the method's TRL trainer.

    The model loads as the config says (model_loading dtype and attention kernel, quantization). Under
    ZeRO-3 and FSDP the training arguments are built first: creating them registers the DeepSpeed config
    (transformers then builds the model partitioned, zero.Init) and FSDP's settings, which
    `from_pretrained` reads while loading."""
    import torch
    from transformers import set_seed

    from .health import HealthWatch
    from .models import check_target_modules, load_for_config
    from .scaling import SHARDED, resolve_strategy
    from .trainers import build_trainer, build_training_args

    pt = config.post_training
    method = get_method(pt.method)
    cuda_devices = torch.cuda.device_count() if device == "cuda" else 0
    args = None
    if resolve_strategy(config.distributed, config.gpu.use_ddp) in SHARDED:
        args = build_training_args(config, run.path, data.eval is not None, device == "cpu")
    set_seed(config.seed)  # before the LoRA adapter is initialised: same seed -> same adapter
    model = load_for_config(config, spec.huggingface_id, spec.trust_remote_code, cuda_devices)
    check_target_modules(model, config.lora.target_modules, where=config.path_of("lora.target_modules"),
                         model_name=spec.name)
    ref_model = None
    if method.uses_reference:
        say(f"   reference: {method.reference_note(config, spec.huggingface_id)}")
        if pt.use_ref_model:  # a separate reference model is trusted only by its own setting
            trust = pt.ref_model_trust_remote_code if pt.ref_model_id else spec.trust_remote_code
            ref_model = load_for_config(config, pt.ref_model_id or spec.huggingface_id, trust, cuda_devices,
                                        reference=True)
    watch = HealthWatch()
    trainer = build_trainer(config, model=model, tokenizer=tokenizer, data=data, run_dir=run.path,
                            ref_model=ref_model, callbacks=[MetricsLogger(run), watch], use_cpu=device == "cpu",
                            args=args)
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
        if getattr(trainer, "is_fsdp_enabled", False):
            # checkpoints stay sharded (each rank its shard); the adapter is saved whole, gathered on rank 0
            trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
        trainer.save_model(str(run.adapter_dir))
        if is_rank_zero():
            tokenizer.save_pretrained(str(run.adapter_dir))
    alarms = health_alarms(history, trainer.state.max_steps)
    for alarm in alarms:
        say(f"   ! health: {alarm}")
    if status == "stopped":
        say(f"   stopped: {watch.stopped_reason}; last good checkpoint: {run.latest_checkpoint() or 'none saved yet'}")
    summary = {
        **run.summary(),  # what the run recorded so far (process, resumes, what it extends)
        "error": None,
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
        "trl_settings": resolved_trainer_settings(trainer),
        "device": device,
        "scaling": scaling_record(config, trainer),
    }
    if is_rank_zero():  # PNG curves of the logged metrics in run_dir/plots/ (dpokit/report.py)
        from .report import plot_run

        summary["plots"] = [str(p) for p in plot_run(run)]
    run.write_summary(summary)
    return summary


def scaling_record(config, trainer) -> dict:
    """How the run was spread and loaded: processes, strategy, the weights' dtype, quantization, attention."""
    from .models import model_dtype_name
    from .scaling import resolve_strategy

    model = trainer.model
    return {"world_size": trainer.args.world_size,
            "strategy": "custom" if config.distributed.accelerate_config else
            resolve_strategy(config.distributed, config.gpu.use_ddp),
            "num_machines": config.distributed.num_machines,
            "model_dtype": model_dtype_name(model),
            "quantization": config.quantization.load_in,
            "attn_implementation": getattr(getattr(model, "config", None), "_attn_implementation", None)}


def _owns(run: RunDir) -> bool:
    """True when this process started (or resumed) the run's current record."""
    import os

    return run.status == "running" and (run.summary().get("process") or {}).get("pid") == os.getpid()


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


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
    from .rules import path_problems

    check_versions()
    problems = path_problems(config, output_dir)
    if problems:
        raise ConfigError(problems)
    output_root = Path(output_dir or config.training.output_dir).expanduser()
    indices = [model_index] if model_index is not None else list(range(len(config.models)))
    load_preference_data(config, True)  # bad data stops here, before any model is loaded (exit 2)
    _check_lora_targets(config, indices)
    results = [run_one(config, i, output_root) for i in indices]
    if len(config.models) > 1 and model_index is None and is_rank_zero():
        write_batch_record(output_root, results)
    return results


def batch_records(output_root: str | Path) -> list[Path]:
    """The batch folders (`batch-<time>/`, holding batch_summary.json and report.md) under output_root, oldest first."""
    root = Path(output_root).expanduser()
    return sorted((p for p in root.glob("batch-*") if (p / "batch_summary.json").is_file()),
                  key=lambda p: p.stat().st_mtime)


def write_batch_record(output_root: Path, results: list[RunResult]) -> Path:
    """The batch's own folder `batch-<time>/` under output_root: batch_summary.json and the comparison page
    report.md (dpokit/report.py). A later or concurrent batch into the same output_dir gets its own."""
    from .report import write_report

    batch = fresh_dir(output_root, "batch")
    atomic_write_json(batch / "batch_summary.json", {
        "finished": _now(),
        "models": [{k: v for k, v in asdict(r).items() if k != "summary"} for r in results],
    })
    say(f"\n== batch record: {batch / 'batch_summary.json'}")
    if any(r.run_dir for r in results):
        say(f"== report: {write_report([r.run_dir for r in results if r.run_dir], batch / 'report.md')}")
    return batch
