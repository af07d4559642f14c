"""Cross-field rules (errors) and the guide's tips (advice), checked before anything loads.

`check_rules` returns Problems that stop a run. `advise` returns plain-language warnings
(learning rate, effective batch, dataset size ...) that `--dry-run` and `train` print.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import Problem
from .methods import LABEL_SMOOTHING_LOSSES, METHODS, RENAMED_LOSS_TYPES


@dataclass(frozen=True)
class DeviceInfo:
    """What this machine can do: CUDA devices and their precision support, and the CPU's bf16 support."""

    cuda_devices: int
    bf16_ok: bool
    cpu_bf16_native: bool | None = None  # None: unknown (no /proc/cpuinfo, e.g. macOS)

    @classmethod
    def detect(cls) -> "DeviceInfo":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        return cls(cuda_devices=n, bf16_ok=bool(n and torch.cuda.is_bf16_supported()),
                   cpu_bf16_native=cpu_has_native_bf16())


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool | None:
    """Whether the CPU has bfloat16 matrix instructions (x86 AVX512-BF16 or AMX-BF16, Arm BF16), from
    /proc/cpuinfo; None where that file does not exist. Without them torch emulates bf16 (slow)."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
                cpuinfo = f.read()
        except OSError:
            return None
    flags = " ".join(line.split(":", 1)[1] for line in cpuinfo.splitlines()
                     if line.split(":", 1)[0].strip().lower() in ("flags", "features") and ":" in line)
    return bool(re.search(r"(?<!\S)(avx512_bf16|amx_bf16|bf16)(?!\S)", flags))


def check_rules(config) -> list[Problem]:
    """All cross-field problems of a schema-valid config that hold on any machine (empty = fine)."""
    problems: list[Problem] = []
    problems += _method_rules(config)
    problems += _evaluation_rules(config)
    problems += _tracking_rules(config)
    problems += _length_rules(config)
    problems += _resume_rules(config)
    if config.training.fp16 and config.training.bf16:
        problems.append(Problem("training.fp16", "fp16 and bf16 are both true; pick one precision",
                                "bf16 on recent GPUs (A100, H100, RTX 30xx+), fp16 on older ones, neither on CPU"))
    return problems


def _method_rules(config) -> list[Problem]:
    pt = config.post_training
    method = METHODS[pt.method]
    out = []
    requested = [pt.loss_type] if isinstance(pt.loss_type, str) else (pt.loss_type or [])
    for lt in requested:
        if lt in RENAMED_LOSS_TYPES and lt not in method.loss_types:
            if not (lt == "kto_pair" and pt.method == "kto"):
                out.append(Problem("post_training.loss_type", f"'{lt}' is not available", RENAMED_LOSS_TYPES[lt]))
            continue
        if not method.loss_types:
            out.append(Problem("post_training.loss_type", f"method '{pt.method}' has no loss_type (got '{lt}')",
                               "remove `loss_type` (ORPO's loss is fixed: SFT + odds-ratio term)"))
        elif lt not in method.loss_types:
            hint = f"method '{pt.method}' accepts: {', '.join(method.loss_types)}"
            if pt.method == "ipo":
                hint += " (for other DPO variants use `method: dpo` with that loss_type)"
            if pt.method == "dpo" and lt in ("kto", "apo_zero_unpaired"):
                hint = f"'{lt}' is a KTO loss: set `method: kto`"
            out.append(Problem("post_training.loss_type", f"'{lt}' is not a loss type of method '{pt.method}'", hint))
    if pt.loss_weights is not None:
        if pt.method not in ("dpo", "ipo"):
            out.append(Problem("post_training.loss_weights", f"only DPO combines loss types; method is '{pt.method}'",
                               "remove `loss_weights`"))
        elif len(pt.loss_weights) != len(pt.loss_types):
            out.append(Problem("post_training.loss_weights",
                               f"{len(pt.loss_weights)} weights for {len(pt.loss_types)} loss types {pt.loss_types}",
                               "give one weight per loss type, e.g. loss_type: [sigmoid, sft] with loss_weights: [1, 1]"))
    if pt.label_smoothing > 0:
        used = LABEL_SMOOTHING_LOSSES.intersection(pt.loss_types)
        if not used:
            out.append(Problem("post_training.label_smoothing",
                               f"{pt.label_smoothing} would be ignored: TRL applies label smoothing only to the "
                               f"robust, exo_pair and aot losses, and the loss is {pt.loss_types or pt.method}",
                               "set `loss_type: robust` (conservative DPO under label noise) or set label_smoothing: 0"))
        elif "robust" in used and pt.label_smoothing >= 0.5:
            out.append(Problem("post_training.label_smoothing", f"{pt.label_smoothing} is not in [0, 0.5) for robust",
                               "it is the probability a label is flipped; the robust-DPO paper uses 0.1"))
    elif "exo_pair" in pt.loss_types:
        out.append(Problem("post_training.label_smoothing", "exo_pair needs label_smoothing > 0",
                           "the EXO paper recommends label_smoothing: 0.001"))
    if not method.uses_reference and pt.ref_model_id:
        out.append(Problem("post_training.ref_model_id", f"{pt.method} is reference-free, so a reference model "
                           "would not be used", "remove `ref_model_id`"))
    if pt.ref_model_id and not pt.use_ref_model:
        out.append(Problem("post_training.ref_model_id", "is set but use_ref_model is false",
                           "set use_ref_model: true to use that reference, or remove ref_model_id"))
    if pt.method == "kto" and config.training.per_device_train_batch_size < 2:
        out.append(Problem("training.per_device_train_batch_size", "KTO needs at least 2 rows per device batch "
                           "(its KL term pairs each prompt with another row's completion)",
                           "set per_device_train_batch_size: 2 or more"))
    if pt.precompute_ref_log_probs and not method.uses_reference:
        out.append(Problem("post_training.precompute_ref_log_probs", f"{pt.method} has no reference model",
                           "remove precompute_ref_log_probs"))
    lora = config.lora
    if lora.use_dora and lora.bias != "none":
        out.append(Problem("lora.bias", "DoRA does not support training biases in PEFT", "set bias: none"))
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
    known = METHODS[config.post_training.method].metrics
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


def device_problems(config, device: DeviceInfo | None = None) -> list[Problem]:
    """What this machine cannot do of the config (errors for training, warnings for a dry run)."""
    device = device or DeviceInfo.detect()
    out = _precision_rules(config, device)
    gpu = config.gpu
    wanted = len(gpu.device_ids) if gpu.device_ids else 0
    if not wanted or gpu.on_missing == "cpu":
        return out
    missing = [i for i in gpu.device_ids if i >= device.cuda_devices]
    if missing:
        return out + [Problem("gpu.device_ids", f"GPU(s) {missing} requested but this machine has "
                        f"{device.cuda_devices} CUDA device(s)",
                        "set gpu.on_missing: cpu to fall back to the CPU, or device_ids: null to use what is visible")]
    return out


def advise(config, device: DeviceInfo | None = None, n_train_rows: int | None = None) -> list[str]:
    """The guide's tips as warnings for this config (nothing here stops a run)."""
    device = device or DeviceInfo.detect()
    t, pt = config.training, config.post_training
    notes = []
    if t.learning_rate > 1e-5:
        notes.append(f"learning_rate {t.learning_rate:g} > 1e-5: the guide warns of collapse with full fine-tuning; "
                     "LoRA tolerates more (the quickstart uses 1e-4), but watch for degenerate answers")
    if t.learning_rate < 1e-7:
        notes.append(f"learning_rate {t.learning_rate:g} < 1e-7: learning will be very slow")
    n_proc = max(1, len(config.gpu.device_ids or []) if config.gpu.use_ddp else 1)
    eff = t.per_device_train_batch_size * t.gradient_accumulation_steps * n_proc
    if not 16 <= eff <= 32:
        notes.append(f"effective batch size {eff} (= {t.per_device_train_batch_size} x {t.gradient_accumulation_steps}"
                     f" x {n_proc} process(es)) is outside the guide's 16-32 for DPO")
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
    if not METHODS[pt.method].uses_reference and (pt.use_ref_model or pt.beta != 0.1):
        notes.append(f"{pt.method} is reference-free: use_ref_model is not used, and beta is ORPO's λ "
                     "(weight of the odds-ratio term)")
    if n_train_rows is not None:
        if n_train_rows < 1000:
            notes.append(f"{n_train_rows} training rows (< 1K): may overfit; watch eval loss, consider more epochs")
        elif n_train_rows > 100_000:
            notes.append(f"{n_train_rows} training rows (> 100K): subsample (dataset.max_samples) for faster iteration")
    if t.max_steps is None and t.warmup_steps and n_train_rows:
        steps = int(n_train_rows * t.num_epochs) // max(1, eff)
        if t.warmup_steps >= steps:
            notes.append(f"warmup_steps {t.warmup_steps} >= the ~{steps} optimizer steps: the learning rate never "
                         "reaches its peak")
    elif t.max_steps is not None and t.warmup_steps >= t.max_steps:
        notes.append(f"warmup_steps {t.warmup_steps} >= max_steps {t.max_steps}: the learning rate never peaks")
    if wanted := (config.gpu.device_ids or []):
        missing = [i for i in wanted if i >= device.cuda_devices]
        if missing and config.gpu.on_missing == "cpu":
            notes.append(f"GPU(s) {missing} are not on this machine: falling back to the CPU (gpu.on_missing: cpu)")
    return notes
