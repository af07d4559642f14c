"""Build the TRL trainer for a validated config: the config -> TRL/PEFT argument mapping.

The guide's keys that TRL spells differently or no longer has are mapped here, explicitly:
`max_seq_length` -> `max_length`; `max_prompt_length` / `max_completion_length` truncate the
tokenized prompt (keeping its end) and completions (keeping their start) after TRL tokenizes
(dpokit/trl_hooks.py); `gradient_checkpointing` -> `activation_checkpointing` where transformers
renamed it; `lora_dropout` is restored after TRL's `disable_dropout` (which would zero it).
What differs between methods comes from the method's strategy object (dpokit/methods.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from .compat import checkpointing_kwargs, supported_kwargs
from .methods import get_method


def training_kwargs(config, run_dir: Path, has_eval: bool, use_cpu: bool) -> dict:
    """Keyword arguments for the method's TRL config class, from the guide's sections."""
    from .tracking import trainer_report_to

    t, ft, pt, lg = config.training, config.finetuning, config.post_training, config.logging
    method = get_method(pt.method)
    kw = dict(
        output_dir=str(run_dir),
        run_name=run_dir.name,
        seed=config.seed,
        data_seed=config.seed,
        num_train_epochs=t.num_epochs,
        max_steps=t.max_steps if t.max_steps is not None else -1,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        warmup_steps=t.warmup_steps,
        logging_steps=t.logging_steps,
        logging_first_step=True,
        # transformers' default replaces a NaN/inf step loss with the running average before it is
        # logged, which hides a blow-up from the user and from dpokit's health watch (that stops the
        # run and keeps the last good checkpoint): show the real value.
        logging_nan_inf_filter=False,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        eval_strategy="steps" if has_eval else "no",
        eval_steps=t.eval_steps if has_eval else None,
        fp16=t.fp16 and not use_cpu,
        bf16=t.bf16,
        optim=t.optim,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        use_cpu=use_cpu,
        report_to=trainer_report_to(config),
        # transformers' `info` dumps whole model configs: keep the libraries one step quieter
        log_level={"debug": "info", "info": "warning"}.get(lg.log_level, lg.log_level),
        load_best_model_at_end=ft.load_best_model_at_end and has_eval,
        metric_for_best_model=_metric_name(ft.metric_for_best_model) if has_eval else None,
        greater_is_better=ft.greater_is_better if has_eval else None,
        max_length=t.max_seq_length,
        beta=pt.beta,
        dataloader_num_workers=0,
        disable_tqdm=False,
    )
    kw.update(checkpointing_kwargs(method.config_class(), t.gradient_checkpointing))
    kw.update(method.trl_kwargs(config))
    from .scaling import resolve_strategy

    if resolve_strategy(config.distributed, config.gpu.use_ddp) == "ddp" and t.gradient_checkpointing:
        kw["ddp_find_unused_parameters"] = False  # DDP + checkpointing + LoRA
    return kw


def _metric_name(metric: str) -> str:
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def build_training_args(config, run_dir: Path, has_eval: bool, use_cpu: bool):
    """The TRL config object for the method (every key it does not know is an error, not dropped)."""
    cls = get_method(config.post_training.method).config_class()
    kw, unknown = supported_kwargs(cls, training_kwargs(config, run_dir, has_eval, use_cpu))
    if unknown:  # API drift: a TRL/transformers upgrade removed an argument we pass
        raise RuntimeError(f"{cls.__name__} no longer accepts {unknown}; dpokit's mapping needs updating "
                           "(see dpokit/compat.py for the tested versions)")
    return cls(**kw)


def trainer_class(method_name: str, limits: tuple[int | None, int | None] = (None, None)) -> type:
    """The TRL trainer for a method, with dpokit's hooks mixed in for (max_prompt_length, max_completion_length)."""
    method = get_method(method_name)
    base, hooks = method.trainer_class(), method.hooks()
    return type(f"Dpokit{base.__name__}", (hooks, base), {"dpokit_limits": limits})


def restore_lora_dropout(model, p: float) -> int:
    """TRL's disable_dropout zeroes every Dropout, the LoRA one included; give LoRA its configured p."""
    import torch

    n = 0
    for name, module in model.named_modules():
        if ".lora_dropout." in f".{name}." or name.endswith("lora_dropout"):
            for sub in module.modules():
                if isinstance(sub, torch.nn.Dropout):
                    sub.p = p
                    n += 1
    return n


def build_trainer(config, *, model, tokenizer, data, run_dir: Path, ref_model=None, callbacks=(),
                  use_cpu: bool = True, args=None):
    """A ready-to-train TRL trainer (DPO/KTO/ORPO) with the LoRA adapter from the config.

    `args`: the method's TRL config built beforehand (`build_training_args`, as ZeRO-3 and FSDP need
    before the model loads); None builds it here.

    Checks the installed library versions and TRL's private surface first (dpokit/trl_hooks.py),
    and after construction that TRL resolved what the config asked for (`check_resolved`).
    """
    from transformers import EarlyStoppingCallback

    from .models import lora_config
    from .tracking import tracking_callbacks

    method = get_method(config.post_training.method)
    run_dir = Path(run_dir)
    if args is None:
        args = build_training_args(config, run_dir, data.eval is not None, use_cpu)
    cls = trainer_class(method.name, (config.training.max_prompt_length, config.training.max_completion_length))
    cbs = list(callbacks)
    if config.finetuning.early_stopping_patience and data.eval is not None:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=config.finetuning.early_stopping_patience))
    cbs += tracking_callbacks(config, run_dir.name)
    train_rows = method.trainer_rows(data.train, config)
    eval_rows = method.trainer_rows(data.eval, config) if data.eval is not None else None
    kwargs = dict(model=model, args=args, train_dataset=train_rows, eval_dataset=eval_rows,
                  processing_class=tokenizer, peft_config=lora_config(config.lora), callbacks=cbs)
    if method.uses_reference:
        kwargs["ref_model"] = ref_model
    trainer = cls(**kwargs)
    if config.lora.lora_dropout > 0:
        restore_lora_dropout(trainer.model, config.lora.lora_dropout)
    check_resolved(trainer, config)
    return trainer


def check_resolved(trainer, config) -> None:
    """Assert that what TRL will run is what the config asked for (no silent fallback)."""
    pt = config.post_training
    args = trainer.args
    get_method(pt.method).check_resolved(trainer, config)
    if abs(float(args.beta) - pt.beta) > 1e-12:
        raise RuntimeError(f"TRL resolved beta {args.beta}, config asked for {pt.beta}")
    if args.max_length != config.training.max_seq_length:
        raise RuntimeError(f"TRL resolved max_length {args.max_length}, config asked for "
                           f"{config.training.max_seq_length}")


def resolved_trainer_settings(trainer) -> dict:
    """The settings TRL actually uses, for the run record."""
    args = trainer.args
    keys = ["beta", "loss_type", "loss_weights", "label_smoothing", "max_length", "max_completion_length",
            "learning_rate", "per_device_train_batch_size", "gradient_accumulation_steps", "max_steps",
            "num_train_epochs", "warmup_steps", "gradient_checkpointing", "bf16", "fp16", "optim",
            "precompute_ref_log_probs", "seed"]
    out = {k: getattr(args, k) for k in keys if hasattr(args, k)}
    return json.loads(json.dumps(out, default=str))
