"""Before/after evaluation: greedy answers with the adapter off (base) and on (trained).

For runs trained on the embedded task, the held-out prompts are judged (pass rates overall and
per family, win/tie/loss). For any run, a set of questions outside the task checks for damage
(answers the base got right must stay right; no empty or looping answers). Writes `eval.json`
and a readable `samples.md` into the run directory.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .console import bars_off
from .rundir import EVAL_FILE, SAMPLES_FILE, RunDir


def generate(model, tokenizer, prompts: list, max_new_tokens: int = 48, batch_size: int = 16,
             progress: str | None = None) -> list[str]:
    """Greedy completions for chat prompts (strings become one user message), batched with left padding."""
    import torch
    from tqdm.auto import tqdm

    has_template = tokenizer.chat_template is not None
    texts = []
    for p in prompts:
        if has_template:
            messages = [{"role": "user", "content": p}] if isinstance(p, str) else p
            texts.append(tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        else:
            texts.append(p if isinstance(p, str) else "\n".join(m["content"] for m in p))
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    outputs: list[str] = []
    model.eval()
    try:
        batches = range(0, len(texts), batch_size)
        for start in tqdm(batches, desc=progress or "Generating", disable=progress is None or bars_off(), leave=False):
            chunk = texts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=not has_template)
            enc = {k: v.to(model.device) for k, v in enc.items()}
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            outputs += [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in new]
    finally:
        tokenizer.padding_side = side
    return outputs


def win_tie_loss(base: list[bool], trained: list[bool]) -> dict[str, int]:
    """Win/tie/loss counts of trained vs base, prompt by prompt."""
    wins = sum(t and not b for b, t in zip(base, trained))
    losses = sum(b and not t for b, t in zip(base, trained))
    return {"wins": wins, "ties": len(base) - wins - losses, "losses": losses}


def outside_task_check(base_answers: list[str], trained_answers: list[str], prompts) -> dict[str, Any]:
    """Damage outside the trained task: right answers lost, and answers that became degenerate (empty,
    looping ...) with training. `degenerate` counts only those whose base answer was not: a flaw the base
    model already had is not damage done by training (`degenerate_base` / `degenerate_trained` count both)."""
    from .judge import degeneration_flags
    from .tasks import outside_answer_ok

    rows, kept, lost = [], 0, 0
    for (question, expected), b, t in zip(prompts, base_answers, trained_answers):
        b_ok, t_ok = outside_answer_ok(expected, b), outside_answer_ok(expected, t)
        kept += b_ok and t_ok
        lost += b_ok and not t_ok
        b_flags, t_flags = degeneration_flags(b), degeneration_flags(t)
        rows.append({"prompt": question, "expected": expected, "base": b, "trained": t, "base_ok": b_ok,
                     "trained_ok": t_ok, "flags": t_flags, "base_flags": b_flags,
                     "new_flags": [f for f in t_flags if f not in b_flags]})
    base_right = sum(r["base_ok"] for r in rows)
    return {"prompts": len(rows), "base_correct": base_right, "trained_correct": sum(r["trained_ok"] for r in rows),
            "lost": lost, "kept": kept, **degeneration_change(base_answers, trained_answers), "rows": rows}


def degeneration_change(base_answers: list[str], trained_answers: list[str]) -> dict[str, int]:
    """Degenerate answers as a change from base: `degenerate` = degenerate after training but not before."""
    from .judge import degeneration_flags

    base = [bool(degeneration_flags(b)) for b in base_answers]
    trained = [bool(degeneration_flags(t)) for t in trained_answers]
    return {"degenerate": sum(t and not b for b, t in zip(base, trained)), "degenerate_base": sum(base),
            "degenerate_trained": sum(trained), "degenerate_fixed": sum(b and not t for b, t in zip(base, trained))}


def _validation_preferences(run: RunDir, config, model, tokenizer) -> dict | None:
    """Reward accuracy and margins on the validation pairs, before and after (dpokit/preference_eval.py)."""
    from .preference_eval import evaluate_preferences, reference_for, validation_rows

    rows = validation_rows(config, tokenizer)
    if rows is None:
        return None
    return evaluate_preferences(model, tokenizer, config, rows, reference_for(config, run.model_spec(config)))


def evaluate_run(run_dir: str | Path | RunDir, num_prompts: int | None = None,
                 max_new_tokens: int | None = None, trust_remote_code: bool = False) -> dict:
    """Evaluate a finished run (base vs trained adapter); writes eval.json and samples.md.

    `trust_remote_code`: let the run's model run its own code (a run directory never passes that on)."""
    from .compat import quiet_library_noise
    from .judge import judge_many
    from .tasks import OUTSIDE_TASK_PROMPTS

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.require_adapter()
    config = run.config()
    quiet_library_noise(config.logging.log_level)
    n = num_prompts or config.evaluation.num_prompts
    max_new = max_new_tokens or config.evaluation.max_new_tokens
    start = time.perf_counter()

    model, tokenizer = run.load_trained(trust_remote_code=trust_remote_code)
    prompts, specs = heldout_prompts(config, n)
    outside = list(OUTSIDE_TASK_PROMPTS)
    questions = prompts + [q for q, _ in outside]
    with model.disable_adapter():
        base_all = generate(model, tokenizer, questions, max_new, progress="Base model answers")
    trained_all = generate(model, tokenizer, questions, max_new, progress="Trained model answers")
    base, trained = base_all[:len(prompts)], trained_all[:len(prompts)]
    result: dict[str, Any] = {"run_dir": str(run), "num_prompts": len(prompts), "max_new_tokens": max_new}
    if specs is not None:
        b, t = judge_many(specs, base), judge_many(specs, trained)
        result.update(task="embedded:instruct-tasks", base_score=b["pass_rate"], trained_score=t["pass_rate"],
                      improvement=round(t["pass_rate"] - b["pass_rate"], 2),
                      per_family={f: {"base": b["per_family"][f], "trained": t["per_family"][f]}
                                  for f in b["per_family"]},
                      **win_tie_loss(b["passed"], t["passed"]))
        result_passes = {"base": b["passed"], "trained": t["passed"]}
    result["outside_task"] = outside_task_check(base_all[len(prompts):], trained_all[len(prompts):], outside)
    result["heldout_degeneration"] = degeneration_change(base, trained)
    preference = _validation_preferences(run, config, model, tokenizer)
    if preference is not None:
        result["preference"] = preference
    result["eval_runtime_s"] = round(time.perf_counter() - start, 1)
    samples = [{"prompt": _text(p), "base": b, "trained": t} for p, b, t in zip(prompts, base, trained)]
    if specs is not None:
        for s, b_ok, t_ok in zip(samples, result_passes["base"], result_passes["trained"]):
            s.update(base_pass=b_ok, trained_pass=t_ok)
    run.write_json(EVAL_FILE, {**result, "samples": samples})
    run.write_text(SAMPLES_FILE, samples_markdown(result, samples))
    return result


def heldout_prompts(config, n: int):
    """(prompts, judge specs or None) of up to `n` held-out rows (dpokit.data.heldout_rows)."""
    from .data import heldout_rows

    rows = heldout_rows(config, n)
    return list(rows["prompt"]), (list(rows["spec"]) if "spec" in rows.column_names else None)


def _text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return " / ".join(f"{m['role']}: {m['content']}" for m in prompt)


def samples_markdown(result: dict, samples: list[dict], limit: int = 30) -> str:
    lines = [f"# Before / after — {result['run_dir']}", ""]
    if "base_score" in result:
        lines += [f"Held-out pass rate: base **{result['base_score']:.1f}%** → trained **{result['trained_score']:.1f}%** "
                  f"({result['wins']} wins, {result['ties']} ties, {result['losses']} losses)", ""]
    o = result["outside_task"]
    lines += [f"Outside the task: base right on {o['base_correct']}/{o['prompts']}, trained on "
              f"{o['trained_correct']}/{o['prompts']}; {o['lost']} lost; {o['degenerate']} answers became "
              f"degenerate with training (degenerate answers: base {o.get('degenerate_base', 0)}, "
              f"trained {o.get('degenerate_trained', o['degenerate'])}).", ""]
    if "preference" in result:
        from .preference_eval import describe

        lines += [f"Validation pairs: {describe(result['preference'])}.", ""]
    for s in samples[:limit]:
        lines += [f"**Prompt:** {s['prompt']}", "", f"- base: `{s['base']}`", f"- trained: `{s['trained']}`", ""]
    return "\n".join(lines)


def print_report(result: dict, samples: int = 6) -> None:
    """The before/after table a learner reads at the end of the quickstart."""
    print("\n== before / after (greedy answers on held-out prompts)")
    if "base_score" in result:
        print(f"   pass rate: base {result['base_score']:.1f}%  ->  trained {result['trained_score']:.1f}%   "
              f"({result['wins']} wins / {result['ties']} ties / {result['losses']} losses)")
        print("   per family:            base   trained")
        for fam, s in result["per_family"].items():
            print(f"     {fam:<20} {s['base']:5.1f}%  {s['trained']:6.1f}%")
    o = result["outside_task"]
    print(f"   outside the task: {o['trained_correct']}/{o['prompts']} right after training "
          f"(base {o['base_correct']}), {o['lost']} lost, {o['degenerate']} newly degenerate "
          f"(base had {o.get('degenerate_base', 0)})")
    if "preference" in result:
        from .preference_eval import describe

        print(f"   {describe(result['preference'])}")
    path = Path(result["run_dir"])
    shown = RunDir(path).read_json(EVAL_FILE)["samples"][:samples]
    for s in shown:
        print(f"   · {s['prompt'][:70]}\n       base:    {s['base'][:70]!r}\n       trained: {s['trained'][:70]!r}")
    print(f"   all answers: {path / 'samples.md'}")
