"""IFEval for the base embedded SmolLM2-135M-Instruct, beside the model card's published figure.

Answers a seeded subset (or all 541) of the packaged IFEval prompts greedily and records the four
accuracies, the prompt/instruction averages the model card's "Average prompt/inst" is made of,
the settings, the time and the machine state in benchmarks/results/ifeval_base.json (one entry
per setting, merged). Run one pass at a time on an otherwise idle machine, e.g. in the background:

    nohup python benchmarks/ifeval_base.py --limit 100 --dtype bf16 > ifeval100.log 2>&1 &
    python benchmarks/ifeval_base.py --dtype bf16 --answers benchmarks/results/ifeval_base_answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import BENCH, atomic_write_text, machine, merge_results, say  # noqa: E402

RESULTS = BENCH / "results" / "ifeval_base.json"
MODEL_ID = "embedded:smollm2-135m-instruct"


def other_python_processes() -> int:
    """Python processes running besides this one (a busy machine makes the time meaningless)."""
    out = subprocess.run(["ps", "-eo", "pid,comm"], capture_output=True, text=True).stdout.splitlines()[1:]
    return sum(1 for line in out if "python" in line and int(line.split()[0]) != os.getpid())


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="prompts (seeded subset); default all 541")
    parser.add_argument("--seed", type=int, default=0, help="subset seed (dpokit.bench.ifeval.select_prompts)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "auto"], default="auto",
                        help="auto: bf16 where the CPU has native bfloat16, else fp32")
    parser.add_argument("--answers", type=Path, help="also write the answers here (JSON lines: key, answer)")
    parser.add_argument("--rescore", nargs=2, metavar=("ENTRY", "ANSWERS"),
                        help="no generation: score a saved answers file again and update ENTRY's scores")
    args = parser.parse_args(argv)
    if args.rescore:
        return rescore(*args.rescore)

    import torch

    from dpokit.bench.harness import run_ifeval
    from dpokit.bench.ifeval import PUBLISHED, select_prompts
    from dpokit.generation import greedy_dtype
    from dpokit.models import load_model, load_tokenizer

    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "auto": greedy_dtype()}[args.dtype]
    state = {**machine(), "other_python_processes_at_start": other_python_processes()}
    prompts = select_prompts(args.limit, seed=args.seed)
    say(f"IFEval, base {MODEL_ID}: {len(prompts)} prompts (seed {args.seed}), max_new_tokens={args.max_new_tokens}, "
        f"batch {args.batch_size}, {str(dtype).replace('torch.', '')}, {torch.get_num_threads()} thread(s), "
        f"load average {state['load_avg_at_start']}, "
        f"{state['other_python_processes_at_start']} other python process(es)")
    start = time.perf_counter()
    tokenizer = load_tokenizer(MODEL_ID)
    model = load_model(MODEL_ID, dtype=dtype)
    result = run_ifeval(model, tokenizer, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                        progress="IFEval answers")
    wall = time.perf_counter() - start
    state["load_avg_at_end"] = os.getloadavg()
    state["other_python_processes_at_end"] = other_python_processes()
    score = result["score"]
    entry = {
        "model": MODEL_ID + " (GGUF Q4_1 weights dequantized; see docs/ifeval.md)",
        "prompts": len(prompts), "subset_seed": args.seed if args.limit else None,
        "settings": result["settings"], "generation": result["generation"], "wall_seconds": round(wall, 1),
        **scores(score), "machine": state,
    }
    name = (f"{'all' if args.limit is None else f'subset{len(prompts)}_seed{args.seed}'}_"
            f"{args.max_new_tokens}tok_{result['settings']['dtype']}")
    merge_results({name: entry}, RESULTS)
    if args.answers:
        atomic_write_text(args.answers, "".join(json.dumps(a) + "\n" for a in result["answers"]))
    acc, avg = score["accuracy"], score["averages"]
    say(f"\n{name}: {wall:.0f} s ({wall / len(prompts):.2f} s/prompt), "
        f"{result['generation']['answers_at_limit']} of {len(prompts)} answers hit max_new_tokens")
    say(f"  prompt-level strict {acc['prompt_strict']:.1f}%  loose {acc['prompt_loose']:.1f}%")
    say(f"  instruction-level strict {acc['instruction_strict']:.1f}%  loose {acc['instruction_loose']:.1f}%")
    say(f"  average prompt/inst: strict {avg['strict']:.1f}  loose {avg['loose']:.1f}  "
        f"(published {PUBLISHED['ifeval']}, {PUBLISHED['label']})")
    return entry


def scores(score: dict) -> dict:
    """The score fields of a results entry."""
    from dpokit.bench.ifeval import PUBLISHED

    return {"accuracy": score["accuracy"], "interval95": score["interval95"], "averages": score["averages"],
            "per_instruction": score["per_instruction"], "published": PUBLISHED,
            "vs_published": {k: round(v - PUBLISHED["ifeval"], 2) for k, v in score["averages"].items()}}


def rescore(entry: str, answers: str) -> dict:
    """Score saved answers with the current scoring code and update that entry's scores (not its timings)."""
    from dpokit.bench.ifeval import load_prompts, score_answers

    record = json.loads(RESULTS.read_text())
    if entry not in record:
        raise SystemExit(f"--rescore: no entry {entry!r} in {RESULTS}; entries: {', '.join(record)}")
    rows = [json.loads(line) for line in Path(answers).read_text().splitlines() if line.strip()]
    if len(rows) != record[entry]["prompts"]:
        raise SystemExit(f"--rescore: {answers} has {len(rows)} answers, entry {entry} has {record[entry]['prompts']}")
    by_key = {p.key: p for p in load_prompts()}
    score = score_answers([by_key[r["key"]] for r in rows], [r["answer"] for r in rows])
    updated = {**record[entry], **scores(score), "rescored_from": Path(answers).name}
    merge_results({entry: updated}, RESULTS)
    say(f"{entry}: {record[entry]['accuracy']} -> {score['accuracy']}")
    return updated


if __name__ == "__main__":
    main()
