"""Greedy generation speed on the embedded SmolLM2-135M-Instruct: each speed-up against the naive loop.

Answers a fixed seeded subset of IFEval prompts (the workload of `dpokit eval --bench ifeval`)
with each variant, in one process and on the same loaded weights, and prints tokens/s, seconds
per prompt, the ratio against the naive version, and how many answers equal the naive ones.

    naive            dpokit/evaluate.py's generate as it was: prompts in file order, batch 8, fp32
    generate-b8      dpokit.generation.generate_greedy with drop_finished=False: length-sorted
                     batches of 8, each decoded by transformers' generate, fp32
    generate-b32     the same with batches of 32
    loop-b32         generate_greedy's default: batches of 32 decoded by dpokit's loop, which
                     takes each finished answer out of the batch, fp32
    loop-b32-bf16    the same with the model in bfloat16 (fast only on CPUs with native bf16)
    loop-b64-bf16    batches of 64, bfloat16
    ...-unsorted     any of these with the prompts batched in file order instead of by length

Variants run in the order given, then again in reverse (--repeats 2, the default), and each time
is the mean of its runs, so a machine whose load drifts does not favour whichever ran first.
Both wall time and the process' CPU time are measured: on a shared machine, wall time depends on
what else runs, while with 1 thread (OMP_NUM_THREADS=1) the CPU time is the work itself. The load
average is printed and recorded.

    python benchmarks/bench_generation.py --prompts 32 --max-new-tokens 256
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, atomic_write_text, machine, merge_results, say  # noqa: E402

RESULTS = BENCH / "results" / "generation.json"

VARIANTS = ("naive", "generate-b8", "generate-b32", "loop-b32", "loop-b32-bf16", "loop-b64-bf16")
PATTERN = r"(generate|loop)-b(\d+)(-bf16)?(-unsorted)?"


def naive_generate(model, tokenizer, prompts, max_new_tokens: int, batch_size: int = 8):
    """dpokit.evaluate.generate as it stood (copied, not imported: that module is being rewritten),
    returning the answers and the number of new tokens before the end-of-turn token."""
    import torch

    texts = [tokenizer.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True,
                                           tokenize=False) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    outputs, tokens = [], 0
    model.eval()
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                            add_special_tokens=False)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            for ids in out[:, enc["input_ids"].shape[1]:].tolist():
                cut = ids.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in ids else len(ids)
                tokens += cut
                outputs.append(tokenizer.decode(ids[:cut], skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return outputs, tokens


def run_variant(name: str, models: dict, tokenizer, prompts, max_new_tokens: int):
    from dpokit.generation import generate_greedy

    start, cpu = time.perf_counter(), time.process_time()
    if name == "naive":
        answers, tokens = naive_generate(models["fp32"], tokenizer, prompts, max_new_tokens)
    else:
        engine, batch, bf16, unsorted = re.fullmatch(PATTERN, name).groups()
        stats: dict = {}
        answers = generate_greedy(models["bf16" if bf16 else "fp32"], tokenizer, prompts,
                                  max_new_tokens=max_new_tokens, batch_size=int(batch), stats=stats,
                                  drop_finished=engine == "loop", sort_by_length=not unsorted)
        tokens = stats["new_tokens"]
        say(f"    {stats['answers_at_limit']} of {len(prompts)} answers reached max_new_tokens")
    return answers, tokens, time.perf_counter() - start, time.process_time() - cpu


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=32, help="IFEval prompts (seeded subset, seed 0)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--variants", default=",".join(VARIANTS),
                        help="comma-separated: naive, or (generate|loop)-b<batch size>[-bf16][-unsorted]")
    parser.add_argument("--repeats", type=int, default=2, help="runs per variant (alternating order)")
    parser.add_argument("--out", type=Path, help="also write the answers and figures to this JSON file")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = {v for v in variants if v != "naive" and not re.fullmatch(PATTERN, v)}
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(sorted(unknown))}; "
                     "use naive or (generate|loop)-b<N>[-bf16][-unsorted]")

    import torch

    from dpokit.bench.ifeval import select_prompts
    from dpokit.models import load_model, load_tokenizer

    model_id = "embedded:smollm2-135m-instruct"
    tokenizer = load_tokenizer(model_id)
    models = {"fp32": load_model(model_id)}
    if any(v.endswith("bf16") for v in variants):
        models["bf16"] = load_model(model_id, dtype=torch.bfloat16)
    prompts = [p.prompt for p in select_prompts(args.prompts, seed=0)]
    state = machine()
    say(f"{len(prompts)} IFEval prompts (seed 0), max_new_tokens={args.max_new_tokens}, "
        f"torch threads {torch.get_num_threads()}, load average {state['load_avg_at_start']}")

    times: dict[str, list[float]] = {v: [] for v in variants}
    cpu_times: dict[str, list[float]] = {v: [] for v in variants}
    answers, tokens = {}, {}
    for r in range(args.repeats):
        for name in variants if r % 2 == 0 else variants[::-1]:
            out, n, seconds, cpu = run_variant(name, models, tokenizer, prompts, args.max_new_tokens)
            times[name].append(seconds)
            cpu_times[name].append(cpu)
            say(f"  run {r + 1}: {name:18s} {seconds:7.1f} s wall  {cpu:7.1f} s CPU  {n / seconds:6.1f} tok/s")
            if name in answers and answers[name] != out:
                say(f"  note: {name} gave different answers on run {r + 1} (non-deterministic kernels?)")
            answers[name], tokens[name] = out, n

    reference = "naive" if "naive" in variants else variants[0]
    figures = {}
    say(f"\n{'variant':18s} {'wall s':>7s} {'s/prompt':>8s} {'tok/s':>6s} {'speed-up':>8s} {'CPU s':>7s} "
        f"{'speed-up':>8s}  same answers as {reference}")
    for name in variants:
        seconds, cpu = statistics.mean(times[name]), statistics.mean(cpu_times[name])
        same = sum(a == b for a, b in zip(answers[name], answers[reference]))
        ratio = statistics.mean(times[reference]) / seconds
        cpu_ratio = statistics.mean(cpu_times[reference]) / cpu
        figures[name] = {"seconds": round(seconds, 1), "seconds_per_prompt": round(seconds / len(prompts), 2),
                         "tokens": tokens[name], "tokens_per_s": round(tokens[name] / seconds, 1),
                         "speedup_vs_" + reference: round(ratio, 2), "cpu_seconds": round(cpu, 1),
                         "cpu_speedup_vs_" + reference: round(cpu_ratio, 2), "same_answers": same,
                         "runs_s": [round(t, 1) for t in times[name]],
                         "runs_cpu_s": [round(t, 1) for t in cpu_times[name]]}
        say(f"{name:18s} {seconds:7.1f} {seconds / len(prompts):8.2f} {tokens[name] / seconds:6.1f} {ratio:7.2f}x "
            f"{cpu:7.1f} {cpu_ratio:7.2f}x  {same}/{len(prompts)}")
    say("(on a busy machine read the CPU columns: with 1 thread, CPU time is the work done, whatever else runs)")
    try:
        state["load_avg_at_end"] = os.getloadavg()
    except OSError:
        pass
    record = {"prompts": len(prompts), "max_new_tokens": args.max_new_tokens, "machine": state, "variants": figures}
    merge_results({f"{len(prompts)}x{args.max_new_tokens}_threads{torch.get_num_threads()}": record}, RESULTS)
    if args.out:
        atomic_write_text(args.out, json.dumps({**record, "answers": answers}, indent=1) + "\n")
    return record


if __name__ == "__main__":
    main()
