"""Build the TRL trainer for a validated config: the config -> TRL/PEFT argument mapping.

The guide's keys that TRL spells differently or no longer has are mapped here, explicitly:
`max_seq_length` -> `max_length`; `max_prompt_length` / `max_completion_length` truncate the
tokenized prompt (keeping its end) and completions (keeping their start) after TRL tokenizes;
`gradient_checkpointing` -> `activation_checkpointing` where transformers renamed it;
`lora_dropout` is restored after TRL's `disable_dropout` (which would otherwise zero it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import TrainerCallback

from .compat import checkpointing_kwargs, supported_kwargs
from .methods import METHODS


def training_kwargs(config, run_dir: Path, has_eval: bool, use_cpu: bool) -> dict:
    """Keyword arguments for the method's TRL config class, from the guide's sections."""
    t, ft, pt, lg = config.training, config.finetuning, config.post_training, config.logging
    method = METHODS[pt.method]
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
        report_to=[b for b in lg.report_to if b != "tensorboard"] or "none",
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
    if pt.method in ("dpo", "ipo"):
        kw.update(loss_type=pt.loss_types, loss_weights=pt.loss_weights, label_smoothing=pt.label_smoothing,
                  precompute_ref_log_probs=pt.precompute_ref_log_probs)
    elif pt.method == "kto":
        kw.update(loss_type="kto" if pt.loss_types == ["kto_pair"] else pt.loss_types[0],
                  precompute_ref_log_probs=pt.precompute_ref_log_probs)
    elif pt.method == "orpo":
        kw.update(max_completion_length=t.max_completion_length)
    if config.gpu.use_ddp and t.gradient_checkpointing:
        kw["ddp_find_unused_parameters"] = False  # DDP + checkpointing + LoRA
    return kw


def _metric_name(metric: str) -> str:
    return metric if metric.startswith("eval_") else f"eval_{metric}"


def build_training_args(config, run_dir: Path, has_eval: bool, use_cpu: bool):
    """The TRL config object for the method (every key it does not know is an error, not dropped)."""
    cls = METHODS[config.post_training.method].config_class()
    kw, unknown = supported_kwargs(cls, training_kwargs(config, run_dir, has_eval, use_cpu))
    if unknown:  # API drift: a TRL/transformers upgrade removed an argument we pass
        raise RuntimeError(f"{cls.__name__} no longer accepts {unknown}; dpokit's mapping needs updating "
                           "(see dpokit/compat.py for the tested versions)")
    return cls(**kw)


def truncate_ids(ids: list[int], limit: int | None, keep: str, bos_id: int | None = None) -> list[int]:
    """Keep the first (`keep='start'`) or last (`keep='end'`) `limit` tokens; a leading BOS stays."""
    if limit is None or len(ids) <= limit:
        return ids
    if keep == "start":
        return ids[:limit]
    if bos_id is not None and ids and ids[0] == bos_id and limit > 1:
        return [bos_id] + ids[-(limit - 1):]
    return ids[-limit:]


class _TruncationMixin:
    """After TRL tokenizes (DPO/KTO), apply the guide's max_prompt_length and max_completion_length."""

    dpokit_limits: tuple[int | None, int | None] = (None, None)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        max_prompt, max_completion = self.dpokit_limits
        if max_prompt is None and max_completion is None:
            return dataset
        # KTO's KL_completion_ids are the batch's completions rotated by one: cut them the same way, or
        # the KL estimate would see longer answers than the loss does.
        completion_keys = [k for k in ("chosen_ids", "rejected_ids", "completion_ids", "KL_completion_ids")
                           if k in dataset.column_names]
        bos = getattr(self._tokenizer, "bos_token_id", None)

        def cut(example):
            out = {"prompt_ids": truncate_ids(example["prompt_ids"], max_prompt, "end", bos)}
            for k in completion_keys:
                out[k] = truncate_ids(example[k], max_completion, "start")
            return out

        return dataset.map(cut, desc=f"Truncating {dataset_name} prompts/completions (max_prompt_length, "
                                     "max_completion_length)")

    def _precompute_ref_logps(self, dataset, name, batch_size):
        """TRL's reference pass (precompute_ref_log_probs), through dpokit's on-disk cache (refcache.py)."""
        from .refcache import precompute_with_cache

        parent = super()._precompute_ref_logps

        def compute():
            with completion_tokens_only():
                return parent(dataset, name, batch_size)

        return precompute_with_cache(self, dataset, name, compute)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        with completion_tokens_only():
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)


class completion_tokens_only:
    """Context in which TRL's fused LM head scores only the completion tokens on CPU too (same log-probs).

    TRL projects every position through the LM head (prompt and padding too, then zeroes them)
    unless the device runs Triton, to keep tile shapes fixed for compilers. Eager CPU has no such
    constraint: skipping the positions it throws away made a CPU step ~20% faster and shrank the
    head's temporaries by the prompt's share (benchmarks/bench_step.py).
    """

    def __enter__(self):
        import trl.trainer.utils as trl_utils

        self._original = getattr(trl_utils, "_use_triton", None)
        if self._original is not None:  # a TRL without this switch is left as it is
            original = self._original
            trl_utils._use_triton = lambda device: device.type == "cpu" or original(device)
        return self

    def __exit__(self, *exc):
        import trl.trainer.utils as trl_utils

        if self._original is not None:
            trl_utils._use_triton = self._original
        return False


class _OrpoTruncation:
    """ORPO tokenizes row by row; cut the prompt (keep its end) and completions (keep their start)."""

    dpokit_limits: tuple[int | None, int | None] = (None, None)

    def tokenize_row(self, feature, model=None):
        row = super().tokenize_row(feature, model)
        max_prompt, max_completion = self.dpokit_limits
        n_prompt = len(row["prompt_input_ids"])
        bos = getattr(self.processing_class, "bos_token_id", None)
        prompt = truncate_ids(row["prompt_input_ids"], max_prompt, "end", bos)
        row["prompt_input_ids"], row["prompt_attention_mask"] = prompt, [1] * len(prompt)
        for side in ("chosen", "rejected"):
            answer = truncate_ids(row[f"{side}_input_ids"][n_prompt:], max_completion, "start")
            labels = truncate_ids(row[f"{side}_labels"][n_prompt:], max_completion, "start")
            row[f"{side}_input_ids"] = prompt + answer
            row[f"{side}_attention_mask"] = [1] * (len(prompt) + len(answer))
            row[f"{side}_labels"] = [-100] * len(prompt) + labels
        return row


def trainer_class(method_name: str, limits: tuple[int | None, int | None] = (None, None)) -> type:
    """The TRL trainer for a method, with dpokit's (max_prompt_length, max_completion_length) mixed in."""
    base = METHODS[method_name].trainer_class()
    mixin = _OrpoTruncation if method_name == "orpo" else _TruncationMixin
    return type(f"Dpokit{base.__name__}", (mixin, base), {"dpokit_limits": limits})


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


def build_trainer(config, model_spec, *, model, tokenizer, data, run_dir: Path, ref_model=None,
                  callbacks=(), use_cpu: bool = True):
    """A ready-to-train TRL trainer (DPO/KTO/ORPO) with the LoRA adapter from the config."""
    from transformers import EarlyStoppingCallback

    from .models import lora_config

    method = METHODS[config.post_training.method]
    args = build_training_args(config, run_dir, data.eval is not None, use_cpu)
    cls = trainer_class(method.name, (config.training.max_prompt_length, config.training.max_completion_length))
    cbs = list(callbacks)
    if config.finetuning.early_stopping_patience and data.eval is not None:
        cbs.append(EarlyStoppingCallback(early_stopping_patience=config.finetuning.early_stopping_patience))
    cbs += tracking_callbacks(config, run_dir)
    kwargs = dict(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                  processing_class=tokenizer, peft_config=lora_config(config.lora), callbacks=cbs)
    if method.uses_reference:
        kwargs["ref_model"] = ref_model
    trainer = cls(**kwargs)
    if config.lora.lora_dropout > 0:
        restore_lora_dropout(trainer.model, config.lora.lora_dropout)
    check_resolved(trainer, config)
    return trainer


def tracking_callbacks(config, run_dir: Path) -> list:
    """TensorBoard writes under logging.logging_dir/<run name> (transformers 5 dropped logging_dir);
    MLflow and W&B default to stores under logging_dir unless the user's environment says otherwise."""
    out = []
    logging_dir = Path(config.logging.logging_dir).expanduser().resolve()
    if "tensorboard" in config.logging.report_to:
        from torch.utils.tensorboard import SummaryWriter
        from transformers.integrations import TensorBoardCallback

        out.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=str(logging_dir / run_dir.name))))
    if "mlflow" in config.logging.report_to:
        uri = _default_env("MLFLOW_TRACKING_URI", (logging_dir / "mlruns").as_uri())
        if uri.startswith("file:"):  # MLflow 3 refuses its local file store unless asked for explicitly
            _default_env("MLFLOW_ALLOW_FILE_STORE", "true")
    if "wandb" in config.logging.report_to:
        logging_dir.mkdir(parents=True, exist_ok=True)
        _default_env("WANDB_DIR", str(logging_dir))  # offline runs land in logging_dir/wandb/
        _default_env("WANDB_PROJECT", "dpokit")
        out.append(FinishWandbRun())
    return out


class FinishWandbRun(TrainerCallback):
    """Close the W&B run when training ends (transformers leaves it open), so each model of a batch
    gets its own run instead of logging into the first one."""

    def on_train_end(self, args, state, control, **kwargs):
        import wandb

        if state.is_world_process_zero and wandb.run is not None:
            wandb.finish()


def _default_env(name: str, value: str) -> str:
    """Set an environment variable a tracking library reads, unless the user set it; returns the value used.

    A value dpokit set for an earlier run in the same process is replaced (a marker remembers it).
    """
    marker = f"DPOKIT_DEFAULT_{name}"
    if os.environ.get(name) in (None, "", os.environ.get(marker)):
        os.environ[name] = os.environ[marker] = value
    return os.environ[name]


def check_resolved(trainer, config) -> None:
    """Assert that what TRL will run is what the config asked for (no silent fallback)."""
    pt = config.post_training
    args = trainer.args
    if pt.method in ("dpo", "ipo"):
        got = list(getattr(trainer, "loss_types", args.loss_type))
        if got != pt.loss_types:
            raise RuntimeError(f"TRL resolved loss_type {got}, config asked for {pt.loss_types}")
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
