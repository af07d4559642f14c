"""`dpokit train --dry-run` (`dry_run`): validate and explain a config without loading weights or training.

For each model: parameter counts and trainable LoRA parameters (from a weightless 'meta' model),
the LoRA targets checked against the model, the detected data format and split sizes, one pair
rendered with its prompt/chosen/rejected boundaries and token counts, what the length limits
cut, effective batch and steps, the reference model, and the guide's tips as warnings.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from .errors import DataError, ModelError
from .machine import DeviceInfo
from .methods import get_method
from .rules import advise, device_problems, path_problems
from .schedule import schedule


@contextmanager
def _no_dataset_progress_bars():
    """datasets' progress bars off while the dry run loads data, restored afterwards."""
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def dry_run(config, model_index: int | None = None, output_dir: str | None = None, plan_target: str | None = None,
            argv: list[str] | None = None) -> int:
    """Print the explanation; returns 2 if a model or the data cannot be used as configured (or the --plan
    target cannot be read), else 0. `plan_target`: a GPU target for the memory planner (`--plan`, "here" for
    this machine's GPUs); `argv`: the dpokit command line the launch plan re-runs (default: train --config)."""
    from .compat import quiet_library_noise

    quiet_library_noise(config.logging.log_level)
    with _no_dataset_progress_bars():
        return _dry_run(config, model_index, output_dir, plan_target, argv)


def _dry_run(config, model_index: int | None, output_dir: str | None, plan_target: str | None = None,
             argv: list[str] | None = None) -> int:
    from .planning import explain_launch, read_target

    device = DeviceInfo.detect()
    target = read_target(plan_target, device) if plan_target else None  # a bad target stops here (exit 2)
    print("== resolved config (defaults < YAML < --set)\n")
    print(config.to_yaml())
    failures = 0
    indices = [model_index] if model_index is not None else range(len(config.models))
    for i in indices:
        failures += _explain_model(config, i, device, target)
    explain_launch(config, argv or ["train"], device, output_dir, target)
    root = Path(output_dir or config.training.output_dir).expanduser()
    print(f"\n== runs would be written under {root.resolve()} (a fresh directory per model; nothing is overwritten)")
    paths = path_problems(config, output_dir)
    for p in paths:
        print(f"   ERROR: {p}")
    for i in indices:
        for p in device_problems(config.for_model(i), device):
            print(f"   ! on this machine the run of models[{i}] ({config.models[i].name}) would stop: {p}")
    found = [f"{failures} model(s) have problems"] if failures else []
    found += [f"{len(paths)} output folder(s) cannot be used"] if paths else []
    print("\n== dry run: no weights loaded, nothing trained" + "".join(f"; {f}" for f in found))
    return 2 if found else 0


def _explain_model(config, index: int, device: DeviceInfo, target=None) -> int:
    from .data import load_preference_data

    overrides = config.models[index].overrides()
    config = config.for_model(index)  # this model's effective config: its own lora/precision applied
    spec = config.models[0]
    pt = config.post_training
    method = get_method(pt.method)
    print(f"== model {index}: {spec.name} ({spec.huggingface_id})")
    if overrides:
        print("   its own settings (models[{}]): {}".format(index, ", ".join(
            f"{section}.{key}={value}" for section, values in overrides.items() for key, value in values.items())))
    print(f"   method: {pt.method} — {method.summary}")
    if method.loss_types:
        print(f"   loss_type: {pt.loss_types}" + (f" weights {pt.loss_weights}" if pt.loss_weights else ""))
    if spec.trust_remote_code:
        print("   trust_remote_code: true — this model's own Python code will run")
    _explain_reference(config, spec)
    tokenizer, problem, weights = None, 0, None
    try:
        tokenizer, weights = _explain_weights(config, spec)
    except ModelError as e:
        unreachable = "cannot be reached" in str(e) or "not in the local" in str(e)
        print(f"   {'note' if unreachable else 'ERROR'}: {e}")
        problem = 0 if unreachable else 1
    from .planning import describe_loading

    for line in describe_loading(config, weights[0] if weights else None, device):
        print(f"   {line}")
    if target is not None:
        from .planning import explain_plan

        explain_plan(config, spec, weights, target)
    try:
        has_template = tokenizer.chat_template is not None if tokenizer is not None else False
        data = load_preference_data(config, has_template)
    except DataError as e:
        offline = "cannot be fetched" in str(e)
        print(f"   {'note' if offline else 'ERROR'}: {e}")
        _explain_schedule(config, None, device)
        return 1 if not offline else problem
    n_train, n_eval = len(data.train), (len(data.eval) if data.eval is not None else 0)
    print(f"   data: {data.source}: {n_train} train / {n_eval} validation rows"
          + (f" / {len(data.heldout)} held-out task prompts" if data.heldout is not None else ""))
    for note in data.notes:
        print(f"   data {note}")
    stats = None
    if tokenizer is not None:
        stats, error = _explain_tokens(config, tokenizer, data)
        problem = max(problem, error)
    _explain_schedule(config, n_train, device)
    if stats is not None and weights is not None:
        _explain_time(config, weights, stats, n_train, n_eval, device)
    return problem


def _explain_reference(config, spec) -> None:
    pt = config.post_training
    print(f"   reference: {get_method(pt.method).reference_note(config, spec.huggingface_id)}")
    if pt.precompute_ref_log_probs:
        print("   reference log-probs: computed once before training (precompute_ref_log_probs)")


def _explain_weights(config, spec):
    # Parameter and LoRA counts come from the model's layout (dpokit.memory.model_layout: a weightless
    # meta model, cached by config), not from wrapping it with PEFT: the same numbers
    # (tests/test_memory.py checks them against PEFT) without importing peft or, once cached, the
    # model's code.
    from .memory import estimate_memory, fit_on_this_machine, format_estimate, lora_parameter_count, model_layout
    from .models import check_target_names, load_model_config, load_tokenizer

    model_config = load_model_config(spec.huggingface_id, spec.trust_remote_code)
    layout = model_layout(model_config)
    check_target_names(layout.module_names, layout.linear_names, config.lora.target_modules, layout.model_type,
                       where=config.path_of("lora.target_modules"), model_name=spec.name)
    total, lora = layout.num_parameters, config.lora
    trainable = lora_parameter_count(layout.linears, lora.target_modules, lora.r, lora.use_dora)
    print(f"   model: {layout.model_type}, {total / 1e6:.1f}M parameters; LoRA r={lora.r} on "
          f"{lora.target_modules}: {trainable:,} trainable ({100 * trainable / total:.2f}%)")
    estimate = estimate_memory(config, 0, model_config=model_config, layout=layout)
    for line in format_estimate(estimate):
        print(f"   {line}")
    verdict = fit_on_this_machine(estimate)
    if verdict:
        print(f"   ! {verdict}")
    return load_tokenizer(spec.huggingface_id, spec.trust_remote_code), (model_config, layout)


def _explain_tokens(config, tokenizer, data) -> tuple[dict, int]:
    """Print one rendered pair and what the length limits cut; the length statistics, and 1 if the limits
    leave nothing to learn."""
    from .tokens import length_report, length_verdict, tokenize_pair

    t = config.training
    row = data.train[0]
    ids = tokenize_pair(tokenizer, row)
    print("   one pair as the model sees it (token counts; ⟦ ⟧ marks the completion):")
    for side in ("chosen", "rejected"):
        text = tokenizer.decode(ids["prompt_ids"]) + "⟦" + tokenizer.decode(ids[f"{side}_ids"]) + "⟧"
        print(f"     {side} [{len(ids['prompt_ids'])} prompt + {len(ids[f'{side}_ids'])} completion tokens]: "
              f"{_clip(text)}")
    stats = length_report(tokenizer, data.train, t.max_prompt_length, t.max_completion_length, t.max_seq_length)
    n = stats["rows"]
    print(f"   lengths over {n} rows: prompt max {max(stats['prompt_len'])}, completion max "
          f"{max(stats['chosen_len'] + stats['rejected_len'])} tokens; cut by max_prompt_length="
          f"{t.max_prompt_length}: {stats['prompt_truncated']}, by max_completion_length={t.max_completion_length}: "
          f"{stats['completion_truncated']}, by max_seq_length={t.max_seq_length}: {stats['total_truncated']}")
    if stats["double_bos"]:
        print(f"   ! {stats['double_bos']} rows start with BOS twice (the text already has one and the tokenizer "
              "adds another): strip it from the data")
    error, notes = length_verdict(t, stats)
    for note in notes:
        print(f"   ! {note}")
    if error:
        print(f"   ERROR: {error}")
    return stats, 1 if error else 0


def _explain_schedule(config, n_train: int | None, device: DeviceInfo) -> None:
    t = config.training
    plan = schedule(config, device.cuda_devices, n_train)
    if t.max_steps is not None:
        steps = f"{t.max_steps} optimizer steps (max_steps)"
    elif plan.total_steps is not None:
        steps = f"{plan.total_steps} optimizer steps ({t.num_epochs:g} epoch(s))"
    else:
        steps = "steps unknown until the data loads"
    print(f"   schedule: {plan.describe()}; {steps}")
    for note in advise(config, device, n_train):
        print(f"   ! {note}")


def _explain_time(config, weights, stats: dict, n_train: int, n_eval: int, device: DeviceInfo) -> None:
    """Expected seconds per optimizer step and for the run (dpokit/timing.py)."""
    from .timing import estimate_time, format_time_estimate

    model_config, layout = weights
    plan = schedule(config, device.cuda_devices, n_train)
    estimate = estimate_time(config, model_config, layout, stats, n_train, n_eval, plan.total_steps, device.device)
    for line in format_time_estimate(estimate):
        print(f"   {line}")


def _clip(text: str, n: int = 400) -> str:
    text = text.replace("\n", "⏎")
    return text if len(text) <= n else text[: n // 2] + " … " + text[-n // 2:]
