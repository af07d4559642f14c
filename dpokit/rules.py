"""Cross-field rules (errors) and the guide's tips (advice), checked before anything loads.

`check_rules` returns Problems that stop a run. `advise` returns plain-language warnings
(learning rate, effective batch, dataset size ...) that `--dry-run` and `train` print.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .errors import Problem
from .machine import DeviceInfo
from .methods import get_method
from .packages import package_problems
from .scaling import resolve_strategy
from .scaling_rules import checkpoint_precision_warnings, device_scaling_problems, scaling_problems, scaling_warnings


def check_rules(config) -> list[Problem]:
    """All cross-field problems of a schema-valid config that hold on any machine (empty = fine)."""
    problems: list[Problem] = []
    problems += _method_rules(config)
    problems += _evaluation_rules(config)
    problems += _tracking_rules(config)
    problems += package_problems(config)  # optional packages the config needs (dpokit/packages.py)
    problems += _length_rules(config)
    problems += _resume_rules(config)
    problems += _name_rules(config)
    problems += _scaling_rules(config)
    if config.training.fp16 and config.training.bf16:
        problems.append(Problem("training.fp16", "fp16 and bf16 are both true; pick one precision",
                                "bf16 on recent GPUs (A100, H100, RTX 30xx+), fp16 on older ones, neither on CPU"))
    return problems


def _method_rules(config) -> list[Problem]:
    """The method's own rules (dpokit/methods.py), then those that hold for every method."""
    pt, lora = config.post_training, config.lora
    out = get_method(pt.method).rules(config)
    if pt.ref_model_id and not pt.use_ref_model:
        out.append(Problem("post_training.ref_model_id", "is set but use_ref_model is false",
                           "set use_ref_model: true to use that reference, or remove ref_model_id"))
    if pt.ref_model_trust_remote_code and not pt.ref_model_id:
        out.append(Problem("post_training.ref_model_trust_remote_code", "is set but there is no ref_model_id",
                           "set ref_model_id, or remove ref_model_trust_remote_code (the policy's own "
                           "models[].trust_remote_code covers its base model)"))
    if lora.use_dora and lora.bias != "none":
        out.append(Problem("lora.bias", "DoRA does not support training biases in PEFT", "set bias: none"))
    return out


def _scaling_rules(config) -> list[Problem]:
    """The model_loading / quantization / distributed rules (dpokit/scaling_rules.py), and how they meet `gpu`."""
    t, gpu = config.training, config.gpu
    out = scaling_problems(config.distributed, config.quantization, config.model_loading, use_ddp=gpu.use_ddp,
                           fp16=t.fp16, bf16=t.bf16)
    strategy = resolve_strategy(config.distributed, gpu.use_ddp)
    if gpu.device_ids and len(set(gpu.device_ids)) != len(gpu.device_ids):
        out.append(Problem("gpu.device_ids", f"{gpu.device_ids} names a GPU twice", "list each GPU once"))
    elif gpu.device_ids and len(gpu.device_ids) > 1 and strategy == "single" and not config.distributed.accelerate_config:
        # One process that sees several GPUs: transformers' Trainer wraps the model in nn.DataParallel,
        # which TRL's preference trainers refuse (after the weights have loaded).
        out.append(Problem("gpu.device_ids", f"{len(gpu.device_ids)} GPUs for one process (gpu.use_ddp is false and "
                           "there is no distributed.strategy): transformers would wrap the model in nn.DataParallel, "
                           "which TRL's trainers refuse", "set gpu.use_ddp: true (one process per GPU), "
                           "distributed.strategy: fsdp / zero3, or list one GPU"))
    return out


def _precision_rules(config, device: DeviceInfo) -> list[Problem]:
    t = config.training
    out = []
    if t.fp16 and t.bf16:
        pass  # reported by check_rules
    elif t.fp16 and device.cuda_devices == 0 and config.gpu.on_missing == "stop":
        out.append(Problem("training.fp16", "fp16 mixed precision needs a CUDA GPU and there is none here",
                           "set fp16: false (fp32 on CPU), or run on a GPU machine"))
    elif t.bf16 and device.cuda_devices and not device.bf16_ok:
        out.append(Problem("training.bf16", "this GPU does not support bfloat16", "set bf16: false and fp16: true"))
    return out


def _evaluation_rules(config) -> list[Problem]:
    ft, t = config.finetuning, config.training
    has_eval = config.dataset.validation_split > 0
    out = []
    if ft.load_best_model_at_end:
        if not has_eval:
            out.append(Problem("finetuning.load_best_model_at_end", "needs evaluation, but dataset.validation_split is 0",
                               "set dataset.validation_split (e.g. 0.1) or load_best_model_at_end: false"))
        elif t.save_steps % t.eval_steps:
            out.append(Problem("training.save_steps", f"{t.save_steps} is not a multiple of eval_steps ({t.eval_steps}); "
                               "the best model can only be restored from a checkpoint saved at an evaluation",
                               f"set save_steps to a multiple of {t.eval_steps}"))
    if ft.early_stopping_patience is not None:
        if not has_eval:
            out.append(Problem("finetuning.early_stopping_patience", "needs evaluation, but dataset.validation_split is 0",
                               "set dataset.validation_split > 0 or remove early_stopping_patience"))
        elif not ft.load_best_model_at_end:
            out.append(Problem("finetuning.early_stopping_patience", "needs load_best_model_at_end: true "
                               "(early stopping keeps the best checkpoint)", "set finetuning.load_best_model_at_end: true"))
    metric = ft.metric_for_best_model.removeprefix("eval_")
    known = get_method(config.post_training.method).metrics
    if metric not in known:
        import difflib

        close = difflib.get_close_matches(metric, known, n=1)
        hint = f"did you mean 'eval_{close[0]}'? " if close else ""
        out.append(Problem("finetuning.metric_for_best_model", f"'{ft.metric_for_best_model}' is not a metric that "
                           f"{config.post_training.method} logs", hint + "known: " + ", ".join("eval_" + m for m in known)))
    return out


def _tracking_rules(config) -> list[Problem]:
    out = []
    packages = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow-skinny"),
                "wandb": ("wandb", "wandb")}
    for backend in config.logging.report_to:
        module, pip_name = packages[backend]
        if backend == "tensorboard":
            ok = importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX")
        else:
            ok = importlib.util.find_spec(module)
        if not ok:
            out.append(Problem("logging.report_to", f"'{backend}' is requested but the package is not installed",
                               f"pip install {pip_name}  (or: pip install 'dpokit[tracking]'), or remove it"))
        if backend == "wandb":
            mode = os.environ.get("WANDB_MODE", "").lower()
            if not os.environ.get("WANDB_API_KEY") and mode not in ("offline", "disabled", "dryrun") \
                    and not _wandb_logged_in():
                out.append(Problem("logging.report_to", "wandb needs WANDB_API_KEY, or offline mode",
                                   "export WANDB_MODE=offline (sync later with `wandb sync`), or set WANDB_API_KEY"))
    return out


def _wandb_logged_in() -> bool:
    """`wandb login` stores the key in ~/.netrc rather than the environment."""
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def _length_rules(config) -> list[Problem]:
    t = config.training
    out = []
    if t.max_prompt_length is not None and t.max_prompt_length >= t.max_seq_length:
        out.append(Problem("training.max_prompt_length", f"{t.max_prompt_length} leaves no room for the completion "
                           f"within max_seq_length ({t.max_seq_length})",
                           "make max_prompt_length smaller than max_seq_length"))
    return out


def _resume_rules(config) -> list[Problem]:
    r = config.finetuning.resume_from_checkpoint
    if r and r != "latest" and not Path(r).exists():
        return [Problem("finetuning.resume_from_checkpoint", f"'{r}' does not exist",
                        "give a checkpoint directory (run_dir/checkpoint-N), 'latest', or null")]
    return []


NAME_MAX = 255  # bytes in one path component on Linux, macOS and Windows filesystems
RUN_DIR_SUFFIX = len("-YYYYmmdd-HHMMSS-999")


def _name_rules(config) -> list[Problem]:
    """Run directories are named `<model>-<method>-<time>`: a name the filesystem refuses would fail after
    the data loaded."""
    out = []
    for i, spec in enumerate(config.models):
        length = len(f"{spec.name}-{config.post_training.method}".encode()) + RUN_DIR_SUFFIX
        if length > NAME_MAX:
            room = NAME_MAX - RUN_DIR_SUFFIX - len(config.post_training.method.encode()) - 1
            out.append(Problem(f"models.{i}.name", f"is {len(spec.name.encode())} bytes long; its run directory name "
                               f"would exceed the filesystem's {NAME_MAX} bytes", f"use at most {room} bytes"))
    return out


def path_problems(config, output_dir: str | None = None) -> list[Problem]:
    """Output folders that are files or cannot be created here (checked without creating anything)."""
    out = []
    for where, value in (("training.output_dir", output_dir or config.training.output_dir),
                         ("logging.logging_dir", config.logging.logging_dir)):
        path = Path(value).expanduser()
        if path.exists() and not path.is_dir():
            out.append(Problem(where, f"'{value}' is a file, not a folder", "point it at a folder (it is created "
                               "if missing)"))
            continue
        existing = next((p for p in (path, *path.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            out.append(Problem(where, f"'{value}' cannot be created: '{existing}' is a file", "choose another folder"))
        elif existing is not None and not os.access(existing, os.W_OK | os.X_OK):
            out.append(Problem(where, f"'{value}' cannot be written: no write permission in '{existing}'",
                               "choose a folder you can write to"))
    return out


def device_problems(config, device: DeviceInfo | None = None) -> list[Problem]:
    """What this machine cannot do of the config (errors for training, warnings for a dry run)."""
    device = device or DeviceInfo.detect()
    out = _precision_rules(config, device)
    gpu = config.gpu
    out += device_scaling_problems(config.distributed, config.model_loading, use_ddp=gpu.use_ddp,
                                   cuda_devices=device.cuda_devices, on_missing=gpu.on_missing)
    if config.model_loading.dtype == "fp16" and device.cuda_devices == 0 and gpu.on_missing == "stop":
        out.append(Problem("model_loading.dtype", "fp16 weights need a CUDA GPU (a CPU cannot train in fp16) and "
                           "there is none here", "set model_loading.dtype: auto (fp32 on a CPU), or gpu.on_missing: "
                           "cpu to fall back to fp32 on the CPU"))
    wanted = len(gpu.device_ids) if gpu.device_ids else 0
    if not wanted or (gpu.on_missing == "cpu" and device.cuda_devices == 0):
        return out
    missing = missing_gpus(gpu.device_ids, device.cuda_devices)
    if missing and gpu.on_missing == "cpu":  # some GPUs here: the CPU fallback cannot mix with them
        present = [i for i in gpu.device_ids if i not in missing] or list(range(device.cuda_devices))
        return out + [Problem("gpu.device_ids", f"GPU(s) {missing} requested but this machine has "
                              f"{device.cuda_devices} CUDA device(s); gpu.on_missing: cpu falls back to the CPU "
                              "only on a machine with no GPU (processes cannot train half on GPUs, half on the "
                              "CPU, and a silent smaller world size would change the effective batch)",
                              f"set device_ids: {present} (and raise gradient_accumulation_steps to keep the "
                              "effective batch), or device_ids: null to use every visible GPU")]
    if missing:
        return out + [Problem("gpu.device_ids", f"GPU(s) {missing} requested but this machine has "
                        f"{device.cuda_devices} CUDA device(s)",
                        "set gpu.on_missing: cpu to fall back to the CPU, or device_ids: null to use what is visible")]
    return out


def missing_gpus(device_ids: list[int], cuda_devices: int) -> list[int]:
    """The requested GPUs this process cannot see. Inside a process dpokit launched with
    CUDA_VISIBLE_DEVICES set to `device_ids`, they are renumbered 0..n-1: then only their count matters."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible == ",".join(str(i) for i in device_ids):
        return [] if cuda_devices >= len(device_ids) else device_ids[cuda_devices:]
    return [i for i in device_ids if i >= cuda_devices]


def scaling_advice(config, device: DeviceInfo, world_size: int) -> list[str]:
    """What the scaling sections say before a run starts (dpokit.scaling_rules.scaling_warnings), and the
    CPU fallback of several requested GPUs."""
    pt, gpu = config.post_training, config.gpu
    method = get_method(pt.method)
    found = scaling_warnings(config.distributed, config.quantization, use_ddp=gpu.use_ddp, world_size=world_size,
                             method_uses_reference=method.uses_reference, use_ref_model=pt.use_ref_model,
                             ref_model_id=pt.ref_model_id, precompute_ref_log_probs=pt.precompute_ref_log_probs,
                             optim=config.training.optim, use_dora=config.lora.use_dora)
    if device.cuda_devices == 0:  # a sharding strategy cannot start here (device_problems says why): no process count
        found = [p for p in found if not p.message.endswith("with one process shards nothing")]
    notes = [f"{p.where}: {p.message}" + (f" ({p.hint})" if p.hint else "") for p in found]
    if device.cuda_devices == 0 and gpu.device_ids and gpu.on_missing == "cpu" and world_size > 1:
        notes.append(f"gpu.on_missing: cpu with {len(gpu.device_ids)} requested GPUs starts {world_size} CPU "
                     "processes (torchrun, gloo), each holding a full copy of the model, its optimizer state and "
                     f"activations: about {world_size}x the memory estimate in RAM, on CPU cores they share (set "
                     "gpu.use_ddp: false for one CPU process)")
    return notes


def model_precision_advice(config, model_config, device: DeviceInfo) -> list[str]:
    """fp16 on a model published in bfloat16 (its checkpoint's dtype, from the transformers config)."""
    from .scaling import config_model_dtype

    raw = getattr(model_config, "dtype", None) or getattr(model_config, "torch_dtype", None)
    published = str(raw).removeprefix("torch.") if raw is not None else None
    found = checkpoint_precision_warnings(published, config_model_dtype(config, device.cuda_devices),
                                          config.training.fp16 and device.cuda_devices > 0)
    return [f"{p.where}: {p.message} ({p.hint})" for p in found]


def advise(config, device: DeviceInfo | None = None, n_train_rows: int | None = None) -> list[str]:
    """The guide's tips as warnings for this config (nothing here stops a run).

    `n_train_rows`: training pairs after cleaning and the validation split, when known."""
    from .schedule import schedule

    device = device or DeviceInfo.detect()
    t, pt = config.training, config.post_training
    plan = schedule(config, device.cuda_devices, n_train_rows)
    notes = []
    if t.learning_rate > 1e-5:
        notes.append(f"learning_rate {t.learning_rate:g} > 1e-5: the guide warns of collapse with full fine-tuning; "
                     "LoRA tolerates more (the quickstart uses 1e-4), but watch for degenerate answers")
    if t.learning_rate < 1e-7:
        notes.append(f"learning_rate {t.learning_rate:g} < 1e-7: learning will be very slow")
    if not 16 <= plan.effective_batch <= 32:
        notes.append(f"effective batch size {plan.effective_batch} (= {plan.per_device_batch} x {plan.accumulation}"
                     f" x {plan.world_size} process(es)) is outside the guide's 16-32 for DPO")
    if device.cuda_devices == 0 and t.bf16 and not device.cpu_bf16_native:
        notes.append("bf16 on a CPU without bfloat16 instructions (AVX512-BF16/AMX/Arm BF16) is emulated and "
                     "usually much slower than fp32" + (" (this CPU has none)" if device.cpu_bf16_native is False
                                                       else "") + "; set bf16: false for CPU runs")
    elif device.cuda_devices == 0 and t.bf16:
        notes.append("bf16 on this CPU uses its native bfloat16 instructions: faster than fp32 (about 2x for "
                     "the quickstart model on a 2-core AVX512-BF16 CPU), with slightly different numerics")
    elif device.cuda_devices == 0 and not t.fp16 and device.cpu_bf16_native:
        notes.append("this CPU has native bfloat16 instructions: bf16: true can train about 2x faster than "
                     "fp32 here (16 s vs 33 s for 12 quickstart steps on a 2-core AVX512-BF16 CPU)")
    if t.fp16 and device.cuda_devices == 0 and config.gpu.on_missing == "cpu":
        notes.append("fp16 is ignored on the CPU fallback: training runs in fp32")
    notes += get_method(pt.method).advice(config)
    notes += scaling_advice(config, device, plan.world_size)
    if n_train_rows is not None:
        if n_train_rows < 1000:
            notes.append(f"{n_train_rows} training rows (< 1K): may overfit; watch eval loss, consider more epochs")
        elif n_train_rows > 100_000:
            notes.append(f"{n_train_rows} training rows (> 100K): subsample (dataset.max_samples) for faster iteration")
    if t.warmup_steps and plan.total_steps is not None and t.warmup_steps >= plan.total_steps:
        limit = f"max_steps {t.max_steps}" if t.max_steps is not None else f"the ~{plan.total_steps} optimizer steps"
        notes.append(f"warmup_steps {t.warmup_steps} >= {limit}: the learning rate never reaches its peak")
    if (wanted := (config.gpu.device_ids or [])) and device.cuda_devices == 0:
        missing = [i for i in wanted if i >= device.cuda_devices]
        if missing and config.gpu.on_missing == "cpu":
            notes.append(f"GPU(s) {missing} are not on this machine: falling back to the CPU (gpu.on_missing: cpu)")
    return notes
