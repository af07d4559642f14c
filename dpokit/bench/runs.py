"""A public benchmark on a finished run: base (adapter off) vs trained (adapter on), recorded in the run.

`dpokit eval --run RUN --bench ifeval` and `evaluation.benchmarks: [ifeval]` at the end of training both
come here. The answers and scores go into the run's own directory (`bench_ifeval.json`,
`bench_ifeval_answers.jsonl`, written atomically) and a compact record into its summary.json under
`benchmarks.ifeval`, which `dpokit report` reads.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ..config import BENCHMARKS
from ..errors import DpokitError
from ..rundir import RunDir
from .harness import DEFAULT_BATCH_SIZE, DEFAULT_MAX_NEW_TOKENS

RESULT_FILES = {"ifeval": ("bench_ifeval.json", "bench_ifeval_answers.jsonl")}


def check_benchmark(name: str) -> str:
    """`name` if dpokit knows the benchmark, else a DpokitError with the closest name."""
    import difflib

    if name not in BENCHMARKS:
        close = difflib.get_close_matches(name, BENCHMARKS, n=1, cutoff=0.5)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise DpokitError(f"--bench: unknown benchmark '{name}'.{hint} Choose from {', '.join(BENCHMARKS)}")
    return name


def benchmark_run(run_dir: str | Path | RunDir, bench: str = "ifeval", limit: int | None = None,
                  max_new_tokens: int | None = None, seed: int = 0, batch_size: int = DEFAULT_BATCH_SIZE,
                  progress: bool = True, trust_remote_code: bool = False, model=None, tokenizer=None,
                  base: dict | None = None) -> dict[str, Any]:
    """Answer the benchmark with the run's model, adapter off and on; write the results into the run.

    `limit`/`max_new_tokens` default to the run's `evaluation.benchmark_limit` and
    `evaluation.benchmark_max_new_tokens`; the subset is `select_prompts(limit, seed)`. `model`,
    `tokenizer`: the run's PeftModel when the caller has it loaded already. `base`: a base pass
    (`run_ifeval`'s result) made earlier with the same model, prompts and settings, to reuse instead
    of answering again (checked: same prompt keys and settings). Returns `run_base_and_trained`'s
    result with `"files"` and `"record"` (what summary.json keeps) added.
    """
    from .harness import run_ifeval
    from .ifeval import compare, select_prompts

    check_benchmark(bench)
    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    run.require_adapter()
    config = run.config()
    limit = limit if limit is not None else config.evaluation.benchmark_limit
    max_new = max_new_tokens or config.evaluation.benchmark_max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    prompts = select_prompts(limit, seed)
    start = time.perf_counter()
    if model is None:
        model, tokenizer = run.load_trained(trust_remote_code=trust_remote_code)
    kwargs = {"max_new_tokens": max_new, "batch_size": batch_size}
    if base is None:
        with model.disable_adapter():
            base = run_ifeval(model, tokenizer, prompts, progress="IFEval, base" if progress else None, **kwargs)
    else:
        _check_reusable(base, prompts, max_new)
    trained = run_ifeval(model, tokenizer, prompts, progress="IFEval, trained" if progress else None, **kwargs)
    result = {"base": base, "trained": trained, "comparison": compare(base["score"], trained["score"])}
    files = write_run_results(run, result, prompts, seed, time.perf_counter() - start)
    return {**result, "files": files, "record": run.summary()["benchmarks"][bench]}


def _check_reusable(base: dict, prompts, max_new_tokens: int) -> None:
    keys = [a["key"] for a in base["answers"]]
    if keys != [p.key for p in prompts]:
        raise ValueError("benchmark_run(base=...): the base pass answered other prompts than this subset")
    if base["settings"]["max_new_tokens"] != max_new_tokens:
        raise ValueError(f"benchmark_run(base=...): the base pass used max_new_tokens="
                         f"{base['settings']['max_new_tokens']}, this one {max_new_tokens}")


def record(result: dict, seed: int, seconds: float) -> dict[str, Any]:
    """The compact figures summary.json keeps: settings, the four accuracies with intervals, averages, wins/losses."""
    first = result["base"]
    out: dict[str, Any] = {"prompts": first["score"]["num_prompts"], "subset_seed": seed,
                           "max_new_tokens": first["settings"]["max_new_tokens"], "dtype": first["settings"]["dtype"],
                           "seconds": round(seconds, 1)}
    for name in ("base", "trained"):
        score = result[name]["score"]
        out[name] = {"accuracy": score["accuracy"], "interval95": score["interval95"], "averages": score["averages"]}
    c = result["comparison"]
    out["comparison"] = {level: {k: c[level][k] for k in ("wins", "losses", "ties", "change")} for level in c}
    return out


def write_run_results(run: RunDir, result: dict, prompts, seed: int, seconds: float) -> dict[str, str]:
    """bench_ifeval.json + answers into the run (atomic), and `benchmarks.ifeval` into its summary.json."""
    from .harness import write_results

    paths = write_results(run.path, result, prompts)
    summary = run.summary()
    summary["benchmarks"] = {**summary.get("benchmarks", {}), "ifeval": record(result, seed, seconds)}
    run.write_summary(summary)
    return {k: str(v) for k, v in paths.items()}


def load_record(run: RunDir, bench: str = "ifeval") -> dict | None:
    """The run's recorded benchmark figures (summary.json `benchmarks.<bench>`), or None."""
    return (run.summary().get("benchmarks") or {}).get(bench)


def record_lines(rec: dict) -> list[str]:
    """A few readable lines of a recorded benchmark (for the console and the report)."""
    lines = [f"IFEval, {rec['prompts']} prompts (seeded subset, seed {rec['subset_seed']}), greedy, "
             f"{rec['max_new_tokens']} new tokens ({rec['dtype']}):"]
    for name in ("base", "trained"):
        acc, ci, avg = rec[name]["accuracy"], rec[name]["interval95"], rec[name]["averages"]
        lines.append(f"  {name:8s} prompt strict {acc['prompt_strict']:5.1f}% "
                     f"[{ci['prompt_strict'][0]:.1f}, {ci['prompt_strict'][1]:.1f}]  instruction strict "
                     f"{acc['instruction_strict']:5.1f}%  loose: prompt {acc['prompt_loose']:.1f}%, instruction "
                     f"{acc['instruction_loose']:.1f}%  avg prompt/inst strict {avg['strict']:.1f}")
    c = rec["comparison"]["strict"]
    lines.append(f"  trained vs base, prompt level strict: {c['wins']} wins / {c['ties']} ties / {c['losses']} "
                 f"losses ({c['change']['prompt_strict']:+.1f} points)")
    return lines


def print_benchmark(result: dict) -> None:
    """The console block after `dpokit eval --bench ifeval` or training with `evaluation.benchmarks`."""
    print("\n== IFEval (public benchmark: Google's checkable instructions, scored by its own checkers)")
    for line in record_lines(result["record"]):
        print(f"   {line}")
    print(f"   answers and verdicts: {result['files']['answers']}")


def report_cell(summary: dict) -> str:
    """The batch comparison's IFEval column: prompt-level strict accuracy, base → trained."""
    rec = (summary.get("benchmarks") or {}).get("ifeval")
    if not rec:
        return ""
    return (f"{rec['base']['accuracy']['prompt_strict']:.1f}% → {rec['trained']['accuracy']['prompt_strict']:.1f}% "
            f"(n={rec['prompts']})")


def report_section(runs: list[tuple[str, Path, dict]], top: int = 8) -> list[str]:
    """The report's IFEval section: per run (label, directory, summary), the four accuracies base → trained with
    intervals, wins/losses, and the instruction types that changed most (from the run's bench_ifeval.json)."""
    import json

    scored = [(label, path, s["benchmarks"]["ifeval"]) for label, path, s in runs
              if (s.get("benchmarks") or {}).get("ifeval")]
    if not scored:
        return []
    lines = ["## IFEval (public benchmark)", "",
             "Google's IFEval prompts (checkable instructions: case, length, format, keywords ...), answered "
             "greedily with the adapter off (base) and on (trained) and scored by the official checkers "
             "(`if-verifiable`). Percent, 95% intervals over prompts in brackets. The model card's 29.9 for "
             "SmolLM2-135M-Instruct is the mean of prompt- and instruction-level strict accuracy on all 541 "
             "prompts at up to 1280 tokens (docs/ifeval.md).", ""]
    cols = ["run", "prompts", "new tokens", "prompt strict", "prompt loose", "instruction strict",
            "instruction loose", "avg prompt/inst strict", "wins / ties / losses (prompt strict)"]
    rows = []
    for label, _, rec in scored:
        b, t = rec["base"], rec["trained"]

        def cell(k):
            return (f"{b['accuracy'][k]:.1f} [{b['interval95'][k][0]:.0f}, {b['interval95'][k][1]:.0f}] → "
                    f"{t['accuracy'][k]:.1f} [{t['interval95'][k][0]:.0f}, {t['interval95'][k][1]:.0f}]")
        c = rec["comparison"]["strict"]
        rows.append([label, rec["prompts"], rec["max_new_tokens"], *(cell(k) for k in
                     ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose")),
                     f"{b['averages']['strict']:.1f} → {t['averages']['strict']:.1f}",
                     f"{c['wins']} / {c['ties']} / {c['losses']}"])
    lines += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(x) for x in row) + " |" for row in rows]
    for label, path, _ in scored:
        detail = Path(path) / RESULT_FILES["ifeval"][0]
        if not detail.is_file():
            continue
        data = json.loads(detail.read_text(encoding="utf-8"))
        base, trained = data["base"]["per_instruction"], data["trained"]["per_instruction"]
        changes = sorted(((trained[k]["strict"] - base[k]["strict"], k) for k in base if k in trained),
                         key=lambda x: (-abs(x[0]), x[1]))[:top]
        if not changes:
            continue
        lines += ["", f"{label}: instruction types that changed most (strict, base → trained; all types in "
                  f"`{RESULT_FILES['ifeval'][0]}`, every answer in `{RESULT_FILES['ifeval'][1]}`):", "",
                  "| instruction | n | base | trained |", "|---|---|---|---|"]
        lines += [f"| `{k}` | {base[k]['n']} | {base[k]['strict']:.0f}% | {trained[k]['strict']:.0f}% |"
                  for _, k in changes]
    return lines + [""]


def run_configured_benchmarks(run: RunDir, config, summary: dict, trust_remote_code: bool = False) -> dict:
    """The benchmarks `evaluation.benchmarks` asks for at the end of training, printed (beside the judge's
    figure when the run has one) and recorded; returns the run's updated summary."""
    for bench in config.evaluation.benchmarks:
        result = benchmark_run(run, bench, trust_remote_code=trust_remote_code)
        print_benchmark(result)
    summary = run.summary()
    print_two_figures(summary)
    return summary


def print_two_figures(summary: dict) -> None:
    """What the embedded judge's figure and the IFEval figure each measure, side by side."""
    ev, rec = summary.get("eval") or {}, (summary.get("benchmarks") or {}).get("ifeval")
    if not rec:
        return
    b, t = rec["base"]["accuracy"]["prompt_strict"], rec["trained"]["accuracy"]["prompt_strict"]
    print("\n== two figures, two questions")
    if "base_score" in ev:
        print(f"   embedded judge: {ev['base_score']:.1f}% -> {ev['trained_score']:.1f}% of {ev['num_prompts']} "
              "held-out prompts of the task it trained on (same kinds of instruction, new values): did it learn "
              "the task?")
    print(f"   IFEval:         {b:.1f}% -> {t:.1f}% of {rec['prompts']} prompts (prompt-level strict) someone "
          "else wrote, with instructions it never trained on: does it follow instructions in general?")
    if rec["prompts"] < 541:
        print(f"   ({rec['prompts']} prompts give a wide interval: {rec['trained']['interval95']['prompt_strict']} "
              "for the trained figure; all 541: `make bench-ifeval`)")
