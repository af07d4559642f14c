"""Answer IFEval prompts with a model and score them: the glue between generation and scoring.

The model is given, never loaded here (the caller chooses it, its adapter and its dtype). The
results are JSON-ready and carry what produced them: generation settings, timings, the answers.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from .ifeval import IFEvalPrompt, compare, score_answers

DEFAULT_MAX_NEW_TOKENS = 256  # lighteval's IFEval task allows 1280: see docs/ifeval.md for the difference
DEFAULT_BATCH_SIZE = 32


def run_ifeval(model, tokenizer, prompts: Sequence[IFEvalPrompt], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               batch_size: int = DEFAULT_BATCH_SIZE, progress: str | None = None) -> dict[str, Any]:
    """Greedy answers to `prompts` (chat template, no system prompt of our own) and their IFEval score.

    Returns {"settings", "generation" (counts and seconds), "score" (see `score_answers`),
    "answers" (one {"key", "answer"} per prompt)}. Answers are kept unstripped, as lighteval does.
    """
    import torch

    from ..generation import generate_greedy

    stats: dict[str, Any] = {}
    start = time.perf_counter()
    answers = generate_greedy(model, tokenizer, [p.prompt for p in prompts], max_new_tokens=max_new_tokens,
                              batch_size=batch_size, progress=progress, strip=False, stats=stats)
    score = score_answers(prompts, answers)
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "decoding": "greedy",
                "chat_template": tokenizer.chat_template is not None, "system_prompt": None,
                "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                "torch_threads": torch.get_num_threads()}
    return {"settings": settings, "generation": {**stats, "total_seconds": round(time.perf_counter() - start, 2)},
            "score": score, "answers": [{"key": p.key, "answer": a} for p, a in zip(prompts, answers)]}


def run_base_and_trained(peft_model, tokenizer, prompts: Sequence[IFEvalPrompt], progress: bool = False,
                         **kwargs) -> dict[str, Any]:
    """IFEval for a LoRA run: the adapter off (base) and on (trained), and the prompt-by-prompt comparison.

    `kwargs` go to `run_ifeval` (max_new_tokens, batch_size); `progress` shows a bar for each pass.
    """
    with peft_model.disable_adapter():
        base = run_ifeval(peft_model, tokenizer, prompts, progress="IFEval, base" if progress else None, **kwargs)
    trained = run_ifeval(peft_model, tokenizer, prompts, progress="IFEval, trained" if progress else None, **kwargs)
    return {"base": base, "trained": trained, "comparison": compare(base["score"], trained["score"])}


def write_results(run_dir, result: dict[str, Any], prompts: Sequence[IFEvalPrompt]) -> dict[str, Any]:
    """Write `bench_ifeval.json` (settings, scores, comparison) and `bench_ifeval_answers.jsonl` (per prompt:
    the prompt, each answer and its verdicts) into `run_dir`, atomically. `result` is from
    `run_base_and_trained` or `run_ifeval`. Returns the paths."""
    import json
    from pathlib import Path

    from ..files import atomic_write_text
    from .ifeval import PUBLISHED

    run_dir = Path(run_dir)
    passes = {name: result[name] for name in ("base", "trained") if name in result} or {"model": result}
    summary = {"benchmark": "ifeval", "published": PUBLISHED,
               **{name: {"settings": r["settings"], "generation": r["generation"],
                         **{k: v for k, v in r["score"].items() if k != "rows"}} for name, r in passes.items()}}
    if "comparison" in result:
        summary["comparison"] = result["comparison"]
    lines = []
    for i, p in enumerate(prompts):
        line: dict[str, Any] = {"key": p.key, "prompt": p.prompt, "instructions": list(p.instruction_ids)}
        for name, r in passes.items():
            row = r["score"]["rows"][i]
            line[name] = {"answer": r["answers"][i]["answer"], "strict": row["strict"], "loose": row["loose"]}
        lines.append(json.dumps(line, ensure_ascii=False))
    paths = {"json": run_dir / "bench_ifeval.json", "answers": run_dir / "bench_ifeval_answers.jsonl"}
    atomic_write_text(paths["json"], json.dumps(summary, indent=2) + "\n")
    atomic_write_text(paths["answers"], "\n".join(lines) + "\n")
    return paths


def summary_lines(result: dict[str, Any]) -> list[str]:
    """A few lines for a terminal or a report: the four accuracies per pass, and wins/losses."""
    passes = {name: result[name] for name in ("base", "trained") if name in result} or {"model": result}
    first = next(iter(passes.values()))
    settings = first["settings"]
    lines = [f"IFEval, {first['score']['num_prompts']} prompts, greedy, {settings['max_new_tokens']} new tokens "
             f"({settings['dtype']}):"]
    for name, r in passes.items():
        acc, avg = r["score"]["accuracy"], r["score"]["averages"]
        lines.append(f"  {name:8s} prompt strict {acc['prompt_strict']:5.1f}%  loose {acc['prompt_loose']:5.1f}%   "
                     f"instruction strict {acc['instruction_strict']:5.1f}%  loose {acc['instruction_loose']:5.1f}%   "
                     f"avg prompt/inst strict {avg['strict']:.1f}")
    if "comparison" in result:
        c = result["comparison"]["strict"]
        lines.append(f"  trained vs base (prompt level, strict): {c['wins']} wins / {c['ties']} ties / "
                     f"{c['losses']} losses")
    return lines
