"""Per-model overrides in a batch: each model's effective config checked by the same rules.

A `models` entry may set its own keys of the sections in `config.PER_MODEL_SECTIONS` (its
family's LoRA `target_modules`, its precision ...). `Config.for_model(i)` merges them into the
shared sections; this module validates every model's merged config with the schema and the
cross-field rules, and names each problem where the user can fix it: `models.N.<section>.<key>`
when the model's entry set that key, the shared path otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError

from .errors import Problem


def override_problems(config, shared: list[Problem], check_rules: Callable, from_validation: Callable) -> list[Problem]:
    """Problems of each model's effective config, except those the shared config already reported.

    `check_rules` (dpokit.rules.check_rules) and `from_validation` (config.problems_from_validation) are
    passed in by `config.load_config`, so this module imports neither the schema nor the rules."""
    seen = {(p.where, p.message) for p in shared}
    out: list[Problem] = []
    for index, spec in enumerate(config.models):
        overrides = spec.overrides()
        if not overrides:
            continue  # the model trains with the shared sections, already checked
        try:
            effective = config.for_model(index)
        except ValidationError as e:
            found = from_validation(e)
        else:
            found = check_rules(effective)
        keys = {f"{section}.{key}" for section, values in overrides.items() for key in values}
        for problem in found:
            if (problem.where, problem.message) in seen:
                continue
            seen.add((problem.where, problem.message))
            out.append(_for_model(problem, index, spec.name, keys))
    return out


def _for_model(problem: Problem, index: int, name: str, keys: set[str]) -> Problem:
    """The problem located where the model's entry set the key, or marked as this model's combination."""
    if problem.where in keys:
        return Problem(f"models.{index}.{problem.where}", problem.message, problem.hint)
    return Problem(problem.where, f"{problem.message} (for models.{index} '{name}', with its own "
                   f"{', '.join(sorted(keys))})", problem.hint)
