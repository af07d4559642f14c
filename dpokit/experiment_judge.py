"""Judging a finished run for an experiment: greedy answers with the adapter off and on, on the embedded
task's held-out prompts and the questions outside the task; pass rates, damage, degeneration, drift and
how far the adapter moved the weights. The base model's answers are cached in the results file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from .rundir import RunDir



def heldout_for(config, n: int):
    """(prompts, specs, families) the run is judged on: the embedded task's held-out rows of its seed
    when it trained on the task (embedded or generated rows), else the validation rows without specs."""
    from .config import EMBEDDED_DATASET, DatasetSection
    from .data import embedded_task, heldout_rows

    name = config.dataset.name
    if name.startswith("embedded:") or Path(name).name.startswith("tasks-seed"):
        rows = embedded_task(DatasetSection(name=EMBEDDED_DATASET, subset=config.dataset.subset), config.seed)["heldout"]
        rows = rows.select(range(min(n, len(rows))))
        return list(rows["prompt"]), list(rows["spec"]), list(rows["family"])
    rows = heldout_rows(config, n)
    return list(rows["prompt"]), None, None


def judge_run(run: RunDir, num_prompts: int, max_new_tokens: int, drift_prompts: int = 16,
              eval_checkpoints: bool = False, base_cache: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """Greedy answers with the adapter off and on, judged: held-out pass rates, outside-task damage,
    degeneration, drift. `base_cache` (key -> the base model's answers) is read and filled, so the base
    model answers the same prompts once."""
    from .drift import token_drift
    from .evaluate import generate
    from .tasks import OUTSIDE_TASK_PROMPTS

    config = run.config()
    model, tokenizer = run.load_trained()
    prompts, specs, families = heldout_for(config, num_prompts)
    questions = prompts + [q for q, _ in OUTSIDE_TASK_PROMPTS]
    base_key = hashlib.sha256(json.dumps([config.models[0].huggingface_id, config.seed, config.dataset.subset,
                                          questions, max_new_tokens]).encode()).hexdigest()[:20]
    if base_cache is not None and base_key in base_cache:
        base_all = base_cache[base_key]
    else:
        with model.disable_adapter():
            base_all = generate(model, tokenizer, questions, max_new_tokens)
        if base_cache is not None:
            base_cache[base_key] = base_all
    trained_all = generate(model, tokenizer, questions, max_new_tokens)
    out = _judged(prompts, specs, families, base_all, trained_all, OUTSIDE_TASK_PROMPTS)
    out["update_norm"] = relative_update(model)
    if drift_prompts:
        out["drift_kl"] = token_drift(run, num_prompts=drift_prompts, model=model, tokenizer=tokenizer)
    if eval_checkpoints:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        out["checkpoints"] = []
        for ckpt in run.checkpoints():
            set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
            answers = generate(model, tokenizer, questions, max_new_tokens)
            judged = _judged(prompts, specs, families, base_all, answers, OUTSIDE_TASK_PROMPTS)
            state = json.loads((ckpt / "trainer_state.json").read_text())
            epoch = state.get("epoch")
            out["checkpoints"].append({"step": state.get("global_step"), "epoch": round(epoch, 5) if epoch else epoch,
                                       **{k: judged.get(k) for k in ("trained_rate", "passed", "outside_lost",
                                                                     "newly_degenerate")}})
    del model
    return out


def relative_update(model) -> float:
    """How far the adapter moved the adapted weights: ||ΔW|| / ||W|| over all LoRA-adapted layers
    (Frobenius norms, ΔW = scale · B·A), 0 for an untouched adapter."""
    import torch

    delta_sq, weight_sq = 0.0, 0.0
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                delta = module.get_delta_weight("default").float()
                delta_sq += float((delta ** 2).sum())
                weight_sq += float((module.base_layer.weight.float() ** 2).sum())
    return (delta_sq / weight_sq) ** 0.5 if weight_sq else 0.0


def _judged(prompts, specs, families, base_all, trained_all, outside_prompts) -> dict[str, Any]:
    from .evaluate import outside_task_check, win_tie_loss
    from .judge import degeneration_flags, judge_many

    n = len(prompts)
    base, trained = base_all[:n], trained_all[:n]
    out: dict[str, Any] = {"prompts": n}
    base_flags = [bool(degeneration_flags(a)) for a in base]
    flags = [bool(degeneration_flags(a)) for a in trained]
    out.update(degenerate=sum(flags), degenerate_base=sum(base_flags),
               newly_degenerate=sum(t and not b for b, t in zip(base_flags, flags)))
    if specs is not None:
        b, t = judge_many(specs, base), judge_many(specs, trained)
        out.update(base_rate=b["pass_rate"] / 100, trained_rate=t["pass_rate"] / 100, base_passed=b["passed"],
                   passed=t["passed"], per_family={f: t["per_family"][f] / 100 for f in t["per_family"]},
                   **win_tie_loss(b["passed"], t["passed"]))
    outside = outside_task_check(base_all[n:], trained_all[n:], outside_prompts)
    out.update(outside_prompts=outside["prompts"], outside_base_correct=outside["base_correct"],
               outside_lost=outside["lost"], outside_degenerate=outside["degenerate"],
               outside_lost_rows=[{k: r[k] for k in ("prompt", "expected", "base", "trained")}
                                  for r in outside["rows"] if r["base_ok"] and not r["trained_ok"]])
    out["answers"] = [{"prompt": p, "family": f, "base": b[:200], "trained": t[:200]}
                      for p, f, b, t in zip(prompts, families or [None] * n, base, trained)]
    return out
