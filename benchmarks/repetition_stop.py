"""Would stopping looping answers early change IFEval scores? Measured on answers already generated.

Small greedy models often loop: they repeat a phrase or a line until the token limit, which is
most of the generation time. A repetition stop (end an answer once its last `period` tokens have
repeated `repeats` times in a row, for some period up to --max-period) would save that time, but
only if the IFEval verdicts stay the same. Greedy decoding is deterministic, so an answer decoded
with the stop is exactly the prefix of the full answer up to where the stop fires: this script
cuts the saved full answers there and scores both versions.

    python benchmarks/ifeval_base.py --limit 100 --answers /tmp/answers.jsonl
    python benchmarks/repetition_stop.py /tmp/answers.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def loop_end(tokens: list[int], max_period: int, repeats: int) -> int | None:
    """Length of the prefix after which the stop fires (None: it never fires)."""
    for end in range(1, len(tokens) + 1):
        for period in range(1, max_period + 1):
            span = period * repeats
            if span > end:
                break
            window = tokens[end - span:end]
            if all(window[k] == window[k + period] for k in range(span - period)):
                return end
    return None


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("answers", type=Path, help="JSON lines {key, answer} from ifeval_base.py --answers")
    parser.add_argument("--max-period", type=int, default=64, help="longest repeated unit, in tokens")
    parser.add_argument("--repeats", type=int, default=3, help="times the unit must repeat in a row")
    args = parser.parse_args(argv)

    from dpokit.bench.ifeval import load_prompts, score_answers
    from dpokit.models import load_tokenizer

    tokenizer = load_tokenizer("embedded:smollm2-135m-instruct")
    rows = [json.loads(line) for line in args.answers.read_text().splitlines() if line.strip()]
    by_key = {p.key: p for p in load_prompts()}
    prompts = [by_key[r["key"]] for r in rows]
    full = [r["answer"] for r in rows]
    cut, tokens_full, tokens_cut, fired = [], 0, 0, 0
    for answer in full:
        ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        end = loop_end(ids, args.max_period, args.repeats)
        fired += end is not None
        tokens_full += len(ids)
        tokens_cut += len(ids) if end is None else end
        cut.append(answer if end is None else tokenizer.decode(ids[:end], skip_special_tokens=True))
    before, after = score_answers(prompts, full), score_answers(prompts, cut)
    changed = [(b["key"], b["prompt_strict"], a["prompt_strict"], b["prompt_loose"], a["prompt_loose"])
               for b, a in zip(before["rows"], after["rows"]) if (b["strict"], b["loose"]) != (a["strict"], a["loose"])]
    result = {"answers": len(rows), "max_period": args.max_period, "repeats": args.repeats, "stop_fired": fired,
              "tokens_saved_percent": round(100 * (1 - tokens_cut / max(tokens_full, 1)), 1),
              "accuracy_full": before["accuracy"], "accuracy_with_stop": after["accuracy"],
              "prompts_with_changed_verdicts": len(changed)}
    print(f"{len(rows)} answers; the stop fires on {fired}, saving {result['tokens_saved_percent']}% of the "
          f"answer tokens (period <= {args.max_period}, {args.repeats} repeats)")
    for level in before["accuracy"]:
        print(f"  {level:20s} full {before['accuracy'][level]:6.2f}   with stop {after['accuracy'][level]:6.2f}")
    print(f"  prompts whose verdicts change: {len(changed)}")
    for key, bs, as_, bl, al in changed:
        print(f"    key {key}: prompt strict {bs} -> {as_}, loose {bl} -> {al}")
    return result


if __name__ == "__main__":
    main()
