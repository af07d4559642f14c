"""LoRA targets of every model of a batch, checked against each model's own layers before any weights load.

The layers come from the model's layout (`memory.model_layout`: a weightless model built from its
config, cached), so a GPT-2 in a batch of Llamas is caught before the first model trains, and the
dry run and `train` check the same thing.
"""

from __future__ import annotations

from .errors import DpokitError, Problem


def lora_target_problems(config, indices=None) -> list[Problem]:
    """One Problem per model (of `indices`, default all) whose effective `lora.target_modules` match nothing.

    A model whose config cannot be read here (e.g. not downloaded) is skipped: its own run reports that."""
    from .memory import model_layout
    from .models import load_model_config, target_problem

    problems = []
    for index in range(len(config.models)) if indices is None else indices:
        effective = config.for_model(index)
        spec = effective.models[0]
        try:
            layout = model_layout(load_model_config(spec.huggingface_id, spec.trust_remote_code))
        except DpokitError:
            continue
        message = target_problem(layout.module_names, layout.linear_names, effective.lora.target_modules,
                                 layout.model_type, spec.name)
        if message:
            problems.append(Problem(effective.path_of("lora.target_modules"), message))
    return problems
