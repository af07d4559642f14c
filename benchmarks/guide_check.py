"""Write docs/guide_check.md: every tip of the config guide with the verdict the executed lessons reached.

    python benchmarks/guide_check.py out/notebooks            # after `make notebooks`
    python benchmarks/guide_check.py out/notebooks --out docs/guide_check.md --strict

Reads the executed notebooks in the folder (papermill outputs), collects the verdict tables each
lesson displayed with `dpokit.guide.show_verdicts`, and writes one row per tip of `dpokit.guide.TIPS`:
the verdict, the measured figure with its interval, why, and the notebook section it came from. Nothing
in the page is typed by hand: a tip no executed notebook tested is listed as such (and `--strict` then
exits 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpokit.guide import TIPS, collect  # noqa: E402
from dpokit.stats import QUALIFIED  # noqa: E402


def gather(folder: Path) -> tuple[dict[str, list[dict]], list[dict]]:
    """Verdicts by tip id, and a line per notebook read (name, parameters, duration, start time)."""
    by_tip: dict[str, list[dict]] = {}
    notebooks = []
    for path in sorted(folder.glob("*.ipynb")):
        nb = json.loads(path.read_text(encoding="utf-8"))
        meta = nb.get("metadata", {}).get("papermill", {})
        payloads = collect(nb)
        parameters = meta.get("parameters", {})
        real = real_parameters(path.stem, parameters)
        size = "real" if real else "CI-size" if not parameters or set(parameters) <= {"figures_dir"} else "other parameters"
        notebooks.append({"name": path.stem, "verdicts": sum(len(p["verdicts"]) for p in payloads),
                          "parameters": parameters, "duration": meta.get("duration"), "real": real, "size": size,
                          "start": meta.get("start_time"), "failed": bool(meta.get("exception"))})
        for payload in payloads:
            for v in payload["verdicts"]:
                by_tip.setdefault(v["tip"], []).append({**v, "notebook": payload["notebook"], "real": real, "size": size})
    return by_tip, notebooks


def recorded_cost(results: Path) -> str:
    """One sentence: how many lesson runs the results file holds and how long they took when trained."""
    if not results.exists():
        return f"No run is recorded in `{results.name}` yet: `make notebooks` trains every lesson run."
    runs = [r for r in (json.loads(line) for line in results.read_text(encoding="utf-8").splitlines() if line.strip())
            if r.get("kind") == "run" and r.get("wall_s")]
    if not runs:
        return f"No run is recorded in `{results.name}` yet: `make notebooks` trains every lesson run."
    hours = sum(r["wall_s"] for r in runs) / 3600
    loads = sorted(r["load_start"] for r in runs if r.get("load_start") is not None)
    load = f"; median load average when they started {loads[len(loads) // 2]:.1f} on {runs[0].get('cpus', '?')} CPUs" if loads else ""
    return (f"From scratch (without `{results.relative_to(ROOT).as_posix() if results.is_relative_to(ROOT) else results}`) "
            f"`make notebooks` also trains and judges the {len(runs)} recorded lesson runs: {hours:.1f} h of wall time "
            f"when they were made{load}.")


def real_parameters(name: str, parameters: dict) -> bool:
    """True when the notebook ran with its real-run parameters (notebooks/params/<name>.yaml), not CI's small defaults."""
    import yaml

    params_file = ROOT / "notebooks" / "params" / f"{name}.yaml"
    wanted = yaml.safe_load(params_file.read_text(encoding="utf-8")) if params_file.exists() else None
    if not wanted:
        return False

    def same(a, b):
        return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str) or str(a) == str(b)

    return all(k in parameters and same(parameters[k], v) for k, v in wanted.items())


def combined(parts: list[dict]) -> str:
    """One verdict for a tip: the parts' verdict when they agree, else qualified."""
    kinds = {p["verdict"] for p in parts}
    return kinds.pop() if len(kinds) == 1 else QUALIFIED


def cell(text: str) -> str:
    return (text or "—").replace("|", "\\|").replace("\n", " ")


def render(by_tip: dict[str, list[dict]], notebooks: list[dict], folder: Path,
           results: Path = ROOT / "benchmarks" / "results" / "guide_runs.jsonl") -> tuple[str, list[str]]:
    rows, missing, kinds, measured, measured_real = [], [], Counter(), 0, 0
    for i, t in enumerate(TIPS, 1):
        parts = by_tip.get(t.id, [])
        if not parts:
            missing.append(t.id)
            rows.append(f"| {i} | {cell(t.section)} | {cell(t.text)} | — | — | no notebook has tested this tip | — |")
            continue
        verdict = combined(parts)
        kinds[verdict] += 1
        measured += any(p.get("measured") and p.get("figure") for p in parts)
        measured_real += any(p.get("measured") and p.get("figure") and p.get("real") for p in parts)
        labelled = len(parts) > 1
        figure = "<br>".join(cell((f"*{p['part']}* ({p['verdict']}): " if labelled and p.get("part") else
                                   f"({p['verdict']}) " if labelled else "") + (p.get("figure") or "—")) for p in parts)
        why = "<br>".join(cell(p.get("why", "")) for p in parts)
        where = "<br>".join(cell(f"{p['notebook']} {p.get('section', '')}".strip()
                                 + ("" if p.get("real") else f" ({p.get('size')} run)")) for p in parts)
        rows.append(f"| {i} | {cell(t.section)} | {cell(t.text)} | **{verdict}** | {figure} | {why} | {where} |")
    lines = [
        "# The config guide, tested",
        "",
        "Every tip of the post-training config guide, with the verdict this kit's lessons reached by measuring",
        "it on the embedded model (SmolLM2-135M-Instruct with a LoRA adapter, on a CPU). Generated by",
        f"`python benchmarks/guide_check.py {folder.as_posix()}` from the executed notebooks (`make notebooks`); "
        "not edited by hand.",
        "",
        "A tip is **confirmed** or **corrected** only when the 95% intervals of the two settings compared do not",
        "overlap (Wilson intervals for pass rates over every judged prompt of every seed, Student-t intervals",
        "over seeds for the rest); when they overlap it is **not distinguishable at this scale**. **Qualified**",
        "means it holds only under a condition the row states (or its parts disagree); **not testable here**",
        "says why. Measured figures are `value [95% interval]`.",
        "",
        f"**{len(TIPS)} tips; {len(TIPS) - len(missing)} with a verdict, {measured} of them with a figure measured by "
        f"this kit, {measured_real} from runs with the real-run parameters.** Verdicts: "
        + ", ".join(f"{n} {k}" for k, n in kinds.most_common()) + ".",
        "",
        "| # | guide section | tip | verdict | measured (95% interval) | why | where |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## How the figures were made",
        "",
        "A notebook run with its real-run parameters (`notebooks/params/<name>.yaml`, what `make notebooks` uses) "
        "is marked *real*; one run with the notebook's small defaults (CI's size: a few steps, one seed) is marked "
        "*CI-size*, and its verdicts can only say that one seed decides nothing; any other parameters are marked as such.",
        "",
        "| notebook | parameters used | verdicts | run time | parameters |",
        "|---|---|---|---|---|",
    ]
    for nb in notebooks:
        duration = f"{nb['duration'] / 60:.1f} min" if nb.get("duration") else "—"
        params = ", ".join(f"{k}={json.dumps(v)}" for k, v in nb["parameters"].items()) or "defaults"
        status = " (failed)" if nb["failed"] else ""
        kind = nb["size"]
        lines.append(f"| {nb['name']}{status} | {kind} | {nb['verdicts']} | {duration} | {cell(params)} |")
    total = sum(nb["duration"] or 0 for nb in notebooks)
    lines += ["", f"All {len(notebooks)} notebooks together: {total / 60:.0f} min of execution."]
    lines += ["", "Run times include the training recorded in `benchmarks/results/guide_runs.jsonl` only when a run "
              "was trained during that execution; runs already in the file are read back. Every run record in that "
              "file carries its start and end time and the machine's load average.", "", recorded_cost(results),
              "", f"Written {datetime.now().isoformat(timespec='minutes')}.", ""]
    return "\n".join(lines), missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", nargs="?", default="out/notebooks", help="executed notebooks (papermill outputs)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "guide_check.md"))
    parser.add_argument("--strict", action="store_true", help="exit 1 when a tip has no verdict")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not folder.is_dir():
        print(f"{folder}: no such folder of executed notebooks (run `make notebooks` first)", file=sys.stderr)
        return 2
    by_tip, notebooks = gather(folder)
    text, missing = render(by_tip, notebooks, folder)
    Path(args.out).write_text(text, encoding="utf-8")
    print(f"wrote {args.out}: {len(TIPS)} tips, {len(TIPS) - len(missing)} with a verdict")
    if missing:
        print(f"no verdict for: {', '.join(missing)}", file=sys.stderr)
    return 1 if missing and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
