"""IFEval on all 541 prompts: the base SmolLM2-135M-Instruct and the quickstart's adapter over seeds.

    python benchmarks/ifeval_full.py                       # seeds 0 1 2 (make bench-ifeval)
    nohup env OMP_NUM_THREADS=1 python benchmarks/ifeval_full.py --seeds 0 1 2 > ifeval_full.log 2>&1 &

For each seed the quickstart is trained exactly as `make demo` does (`dpokit train --config
configs/quickstart.yaml --set seed=S`, in a fresh process, its own end-of-training IFEval subset
switched off), unless a completed run of that seed is already in --runs-root; then its adapter
answers all 541 prompts through the same code as `dpokit eval --bench ifeval` (greedy, chat
template, 256 new tokens, fp32, batches of 32), and the run directory gets bench_ifeval.json and
the answers. The adapter's answers are saved batch by batch next to the run
(RUNS_ROOT/seedS/trained_answers_256tok.jsonl) and a restarted script continues where it stopped;
while a pass is unfinished, `unfinished` in the results holds the figures on the prompts answered so far.

The base pass is shared by every seed (the adapter switched off is the base model): it is read
from benchmarks/results/ifeval_base.json (entry `all_256tok_float32`, answers in
ifeval_base_answers_all_256tok_float32.jsonl, made by benchmarks/ifeval_base.py with the same
model, dtype, template and token limit) and scored again with the current scorer; if that entry
or its answers are missing, or the settings differ, the base is answered once here.

Results go to benchmarks/results/ifeval_full.json after every seed (nothing is lost if the run is
stopped): per seed the four accuracies with 95% intervals, the strict average the model card's
29.9 is compared with, wins/losses against the base, the embedded judge's before/after and the
outside-task damage of the same run, times and machine state; then the mean and sd over the
seeds done.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, PYTHON, ROOT, atomic_write_text, machine, say  # noqa: E402

RESULTS = BENCH / "results" / "ifeval_full.json"
BASE_RESULTS = BENCH / "results" / "ifeval_base.json"
BASE_ANSWERS = BENCH / "results" / "ifeval_base_answers_all_256tok_float32.jsonl"


def base_pass(max_new_tokens: int, prompts) -> tuple[dict, str]:
    """(the base pass as `run_ifeval` returns it, where it came from)."""
    from dpokit.bench.ifeval import score_answers

    record = json.loads(BASE_RESULTS.read_text()) if BASE_RESULTS.exists() else {}
    entry = record.get(f"all_{max_new_tokens}tok_float32")
    if entry and BASE_ANSWERS.exists() and entry["settings"]["max_new_tokens"] == max_new_tokens:
        rows = [json.loads(line) for line in BASE_ANSWERS.read_text().splitlines() if line.strip()]
        by_key = {r["key"]: r["answer"] for r in rows}
        if set(by_key) >= {p.key for p in prompts}:
            answers = [by_key[p.key] for p in prompts]
            return ({"settings": entry["settings"], "generation": entry["generation"],
                     "score": score_answers(prompts, answers),
                     "answers": [{"key": p.key, "answer": a} for p, a in zip(prompts, answers)]},
                    f"{BASE_ANSWERS.relative_to(ROOT)} (benchmarks/ifeval_base.py, rescored)")
    from dpokit.bench.harness import run_ifeval
    from dpokit.models import load_model, load_tokenizer

    model_id = "embedded:smollm2-135m-instruct"
    result = run_ifeval(load_model(model_id), load_tokenizer(model_id), prompts, max_new_tokens=max_new_tokens,
                        progress="IFEval, base")
    return result, "answered here"


def trained_pass(run: Path, prompts, max_new_tokens: int, batch_size: int, partial: Path, on_batch) -> dict:
    """The adapter's answers to `prompts`, one batch at a time, each batch saved to `partial` (JSON lines) as it
    finishes and skipped when the script runs again: a stopped benchmark loses at most one batch.

    The batches are the ones `generate_greedy` makes for the whole set (longest prompts first, `batch_size` at
    a time), so the answers are the same as one `run_ifeval` call's. Returns `run_ifeval`'s shape."""
    import torch

    from dpokit.bench.ifeval import score_answers
    from dpokit.generation import chat_texts, generate_greedy
    from dpokit.rundir import RunDir

    model, tokenizer = RunDir(run).load_trained()
    done = {}
    if partial.exists():
        for line in partial.read_text().splitlines():
            row = json.loads(line)
            if row["max_new_tokens"] == max_new_tokens:
                done[row["key"]] = row
    texts = chat_texts(tokenizer, [p.prompt for p in prompts])
    lengths = [len(tokenizer(t, add_special_tokens=tokenizer.chat_template is None)["input_ids"]) for t in texts]
    order = sorted(range(len(prompts)), key=lambda i: (-lengths[i], i))  # generate_greedy's own order
    seconds = sum(r["seconds"] for r in done.values())
    for first in range(0, len(order), batch_size):
        rows = [i for i in order[first:first + batch_size]]
        if all(prompts[i].key in done for i in rows):
            continue
        stats: dict = {}
        answers = generate_greedy(model, tokenizer, [prompts[i].prompt for i in rows], max_new_tokens=max_new_tokens,
                                  batch_size=batch_size, strip=False, stats=stats)
        seconds += stats["seconds"]
        for i, a in zip(rows, answers):
            done[prompts[i].key] = {"key": prompts[i].key, "answer": a, "max_new_tokens": max_new_tokens,
                                    "seconds": round(stats["seconds"] / len(rows), 3)}
        atomic_write_text(partial, "".join(json.dumps(done[k]) + "\n" for k in done))
        on_batch(len(done))
    answers = [done[p.key]["answer"] for p in prompts]
    at_limit = sum(len(tokenizer(a, add_special_tokens=False)["input_ids"]) >= max_new_tokens for a in answers)
    settings = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "decoding": "greedy",
                "chat_template": tokenizer.chat_template is not None, "system_prompt": None,
                "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
                "torch_threads": torch.get_num_threads()}
    return {"settings": settings, "generation": {"prompts": len(prompts), "answers_at_limit_approx": at_limit,
                                                 "seconds": round(seconds, 2), "batches_saved_to": str(partial)},
            "score": score_answers(prompts, answers), "answers": [{"key": p.key, "answer": a}
                                                                  for p, a in zip(prompts, answers)]}


def partial_entry(base: dict, prompts, partial: Path) -> dict:
    """Figures on the prompts answered so far (base on the same prompts), while a pass is unfinished."""
    from dpokit.bench.ifeval import compare, score_answers

    rows = {json.loads(line)["key"]: json.loads(line)["answer"] for line in partial.read_text().splitlines()}
    chosen = [p for p in prompts if p.key in rows]
    base_answers = {a["key"]: a["answer"] for a in base["answers"]}
    b = score_answers(chosen, [base_answers[p.key] for p in chosen])
    t = score_answers(chosen, [rows[p.key] for p in chosen])
    c = compare(b, t)["strict"]
    return {"answered": len(chosen), "note": "unfinished pass: the longest prompts come first, so these are not a "
            "random subset", "base": figures(b), "trained": figures(t),
            "comparison_strict": {k: c[k] for k in ("wins", "losses", "ties", "change")}}


def completed_run(folder: Path) -> Path | None:
    for summary in sorted(folder.glob("*/summary.json")):
        if json.loads(summary.read_text()).get("status") == "completed":
            return summary.parent
    return None


def train_seed(seed: int, folder: Path) -> tuple[Path, float]:
    """Train the quickstart for `seed` as a user does (its own IFEval subset off: the full pass follows)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
    folder.mkdir(parents=True, exist_ok=True)
    cmd = [PYTHON, "-m", "dpokit", "train", "--config", "configs/quickstart.yaml", "--set", f"seed={seed}",
           "--set", "evaluation.benchmarks=[]", "--output-dir", str(folder)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    (folder / "train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RuntimeError(f"seed {seed}: training failed (exit {proc.returncode}); log: {folder / 'train.log'}")
    return completed_run(folder), time.perf_counter() - start


def seed_entry(seed: int, run: Path, result: dict, wall: float, train_wall: float | None, state: dict) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    ev = summary.get("eval") or {}
    t = result["trained"]
    return {"seed": seed, "run_dir": str(run), "trained": figures(t["score"]),
            "comparison": {lvl: {k: result["comparison"][lvl][k] for k in ("wins", "losses", "ties", "change")}
                           for lvl in ("strict", "loose")},
            "generation": t["generation"], "settings": t["settings"],
            "embedded_judge": {k: ev.get(k) for k in ("num_prompts", "base_score", "trained_score", "improvement")},
            "outside_task_lost": ev.get("outside_task_lost"),
            "train_wall_s": round(train_wall, 1) if train_wall else None,
            "train_runtime_s": summary.get("train_runtime_s"), "ifeval_wall_s": round(wall, 1),
            "machine": {**state, "load_avg_at_end": os.getloadavg()}}


def figures(score: dict) -> dict:
    return {"accuracy": score["accuracy"], "interval95": score["interval95"], "averages": score["averages"],
            "per_instruction": score["per_instruction"]}


def aggregate(base: dict, seeds: list[dict]) -> dict:
    def stat(values):
        values = list(values)
        return [round(statistics.mean(values), 2), round(statistics.stdev(values), 2) if len(values) > 1 else None]

    keys = ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")
    out = {"seeds": [s["seed"] for s in seeds],
           "trained_mean_sd": {k: stat(s["trained"]["accuracy"][k] for s in seeds) for k in keys},
           "trained_avg_strict_mean_sd": stat(s["trained"]["averages"]["strict"] for s in seeds),
           "change_prompt_strict_mean_sd": stat(s["trained"]["accuracy"]["prompt_strict"]
                                                - base["accuracy"]["prompt_strict"] for s in seeds)}
    out["target_prompt_strict_plus_3"] = out["change_prompt_strict_mean_sd"][0] >= 3
    out["target_not_lower_than_base_minus_1"] = out["change_prompt_strict_mean_sd"][0] >= -1
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--runs-root", type=Path, default=ROOT / "outputs" / "bench-ifeval",
                    help="quickstart runs go to RUNS_ROOT/seedS/ (a completed one there is reused)")
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="a seeded subset instead of all 541 (a quick check)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    import torch

    from dpokit.bench.ifeval import PUBLISHED, select_prompts

    prompts = select_prompts(args.limit, 0)
    state = machine()
    say(f"IFEval on {len(prompts)} prompts, base + quickstart seeds {args.seeds}, {args.max_new_tokens} new tokens, "
        f"{torch.get_num_threads()} thread(s), load average {state['load_avg_at_start']}")
    record = json.loads(args.out.read_text()) if args.out.exists() else {}
    base, base_source = base_pass(args.max_new_tokens, prompts)
    record.update({"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "published": PUBLISHED,
                   "base": {**figures(base["score"]), "source": base_source, "settings": base["settings"]}})
    seeds = {s["seed"]: s for s in record.get("seeds", []) if s.get("trained")}
    b = base["score"]
    say(f"base: prompt strict {b['accuracy']['prompt_strict']:.1f} {b['interval95']['prompt_strict']}, "
        f"avg prompt/inst strict {b['averages']['strict']:.1f} (published {PUBLISHED['ifeval']}); from {base_source}")
    for seed in args.seeds:
        folder = args.runs_root / f"seed{seed}"
        run, train_wall = completed_run(folder) if folder.exists() else None, None
        if run is None:
            say(f"seed {seed}: training the quickstart -> {folder} (load {os.getloadavg()})")
            run, train_wall = train_seed(seed, folder)
        seed_state = machine()
        say(f"seed {seed}: IFEval with the adapter of {run} (load {seed_state['load_avg_at_start']})")
        start = time.perf_counter()
        partial = folder / f"trained_answers_{args.max_new_tokens}tok.jsonl"

        def on_batch(answered, seed=seed, partial=partial):
            say(f"seed {seed}: {answered}/{len(prompts)} answered ({time.perf_counter() - start:.0f} s, "
                f"load {os.getloadavg()})")
            record.setdefault("unfinished", {})[str(seed)] = partial_entry(base, prompts, partial)
            atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")

        trained = trained_pass(run, prompts, args.max_new_tokens, 32, partial, on_batch)
        from dpokit.bench.ifeval import compare
        from dpokit.bench.runs import write_run_results
        from dpokit.rundir import RunDir

        result = {"base": base, "trained": trained, "comparison": compare(base["score"], trained["score"])}
        result["files"] = write_run_results(RunDir(run), result, prompts, 0, time.perf_counter() - start)
        (record.get("unfinished") or {}).pop(str(seed), None)
        seeds[seed] = seed_entry(seed, run, result, time.perf_counter() - start, train_wall, seed_state)
        t = seeds[seed]["trained"]
        say(f"seed {seed}: prompt strict {t['accuracy']['prompt_strict']:.1f} {t['interval95']['prompt_strict']}, "
            f"instruction strict {t['accuracy']['instruction_strict']:.1f}, avg strict {t['averages']['strict']:.1f}; "
            f"{seeds[seed]['comparison']['strict']['wins']} wins / {seeds[seed]['comparison']['strict']['losses']} "
            f"losses ({seeds[seed]['ifeval_wall_s']:.0f} s)")
        record["seeds"] = [seeds[s] for s in sorted(seeds)]
        record["summary"] = aggregate(base["score"], record["seeds"])
        atomic_write_text(args.out, json.dumps(record, indent=2) + "\n")
    say(json.dumps(record.get("summary"), indent=1))
    return record


if __name__ == "__main__":
    main()
