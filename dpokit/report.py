"""Plots of a run's metrics over steps, and one comparison page across runs.

`plot_run(run_dir)` writes PNGs into `run_dir/plots/`; `write_report(run_dirs, out_path)` writes a
Markdown page (final-metrics table, overlaid curves, before/after answers and judge scores when the
runs were evaluated, and the metric glossary). Figures are drawn with matplotlib's object API on
its Agg canvas, so no display is ever needed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .console import bars_off
from .errors import DpokitError
from .files import atomic_write_text
from .rundir import CONFIG_FILE, EVAL_FILE, RunDir

GLOSSARY = """\
| metric | what it means |
|---|---|
| `loss` | The preference loss, averaged over the batch. For sigmoid DPO it is −log σ(margin); it starts at ln 2 ≈ 0.693 because the LoRA adapter starts at zero, so the policy equals the reference. |
| `rewards/chosen` | Implicit reward of the preferred answer: **reward = β × (log p_policy(answer \\| prompt) − log p_ref(answer \\| prompt))**, log-probabilities summed over the answer's tokens, averaged over the batch. Above 0: the trained model finds the answer more likely than the reference does. |
| `rewards/rejected` | The same for the dispreferred answer; it should go down. |
| `rewards/margins` | `rewards/chosen − rewards/rejected`: the quantity DPO pushes up. A growing margin with *both* rewards falling means the model pushes the rejected answers down faster than it pulls the chosen ones up. |
| `rewards/accuracies` | Fraction of pairs in the batch whose chosen reward is strictly greater than the rejected one. It reads 0.0 at step 1 (all rewards are 0 and the test is strict) and can only be 0 or 1 with batch size 1. |
| `logps/chosen`, `logps/rejected` | Log-probability of the whole answer under the trained model (nats, summed over tokens). Watch `logps/chosen`: if it falls, the model is forgetting its good answers. |
| `logits/chosen`, `logits/rejected` | Mean output logit over the answer tokens; a diagnostic only. |
| `grad_norm` | L2 norm of the gradient before clipping to `max_grad_norm`. Spikes warn of instability. |
| `learning_rate` | The optimizer's learning rate at that step (after warm-up and the schedule). |
| `eval_*` | The same metrics on the validation split (no training on it). |
| `kl` (KTO) | KTO's estimate of the KL divergence between policy and reference, its reference point for rewards. |
| `nll_loss`, `log_odds_ratio` (ORPO) | ORPO's two terms: the SFT loss on chosen answers, and the log odds ratio of chosen over rejected. ORPO has no reference model; its rewards are β × the answer's mean per-token log p_policy. |
| held-out pass rate | Share of held-out prompts whose greedy answer the deterministic judge accepts, for the base model (adapter off) and the trained one (adapter on). Wins/ties/losses compare the two prompt by prompt. |
| reward accuracy / margin, before → after | On every validation pair, scored after training with the adapter off (before) and on (after): the share of pairs whose chosen reward is strictly above the rejected one, and the mean of chosen − rejected reward. With a reference model the reward is β × (log p_policy − log p_ref): before training the untrained adapter *is* the reference, every reward is 0, so "before" reads accuracy 0 and margin 0 by construction (not a measurement of the data). ORPO's reward is β × the mean per-token log p_policy, so its "before" is the base model's own. `eval_rewards/*` in the metrics table are TRL's values at the last evaluation during training. |
| chosen more likely (base → trained) | Share of validation pairs whose chosen answer has the higher log-probability (summed over its tokens) under the model itself: the base model's own preference before training, the trained model's after — the before/after comparison that is meaningful for every method. Long answers have lower summed log-probabilities, so on data where the chosen answers are the longer ones the base figure can be far below 50%. |
| newly degenerate | Answers that are degenerate (empty, looping, repeated lines, chat markup, mostly symbols) after training while the base answer to the same prompt was not: damage done by training. A flaw the base model already had is counted apart (base / trained). |
"""

REWARD_UNIT = "β·Δ log p (nats)"


@dataclass(frozen=True)
class PlotSpec:
    name: str
    title: str
    keys: tuple[str, ...]
    ylabel: str


PLOTS = (
    PlotSpec("loss", "Loss", ("loss",), "loss (nats)"),
    PlotSpec("rewards", "Rewards: chosen vs rejected", ("rewards/chosen", "rewards/rejected"), f"reward ({REWARD_UNIT})"),
    PlotSpec("margins", "Reward margin (chosen − rejected)", ("rewards/margins",), f"margin ({REWARD_UNIT})"),
    PlotSpec("accuracy", "Reward accuracy", ("rewards/accuracies",), "pairs with chosen > rejected (fraction)"),
    PlotSpec("logps", "Log-probability of the answers", ("logps/chosen", "logps/rejected"), "log p_policy (nats)"),
    PlotSpec("learning_rate", "Learning rate", ("learning_rate",), "learning rate"),
    PlotSpec("grad_norm", "Gradient norm (before clipping)", ("grad_norm",), "gradient L2 norm"),
)
XLABEL = "optimizer step"


@dataclass
class RunRecord:
    """What a run directory holds, read once: summary, metrics per step, config, evaluation."""

    path: Path
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    config: dict[str, Any]
    evaluation: dict[str, Any] | None
    label: str = ""

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one metric; a step logged twice (resumed run) keeps its last value."""
        points = {r["step"]: r[key] for r in self.records if isinstance(r.get(key), (int, float))}
        steps = sorted(points)
        return steps, [points[s] for s in steps]


def load_run(run_dir: str | Path) -> RunRecord:
    """Read a run directory written by `dpokit train` (raises DpokitError if it is not one)."""
    import yaml

    run = RunDir(Path(run_dir).expanduser().resolve())
    if not run.is_run():
        raise DpokitError(f"RUN_DIR: {run.path} is not a dpokit run directory (no summary.json); "
                          "give a directory written by `dpokit train`")
    config_file = run.file(CONFIG_FILE)
    try:
        config = yaml.safe_load(config_file.read_text(encoding="utf-8")) if config_file.exists() else {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise DpokitError(f"{config_file}: damaged ({str(e).splitlines()[0]})") from None
    if not isinstance(config or {}, dict):
        raise DpokitError(f"{config_file}: damaged (not a mapping of config sections)")
    record = RunRecord(run.path, run.summary(), run.metrics(), config or {}, run.read_json(EVAL_FILE))
    record.label = record.summary.get("model") or run.name
    return record


# ----------------------------------------------------------------------------- plots


def _figure(spec: PlotSpec, runs: list[RunRecord], title: str):
    """One metric (or a chosen/rejected pair) over steps; training lines, evaluation markers."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.add_subplot()
    many = len(runs) > 1  # one colour per run (chosen solid, rejected dashed), else one per metric
    for i, run in enumerate(runs):
        for j, key in enumerate(spec.keys):
            colour, style = (f"C{i % 10}", ("-", "--")[j]) if many else (f"C{j}", "-")
            part = key.split("/")[-1] if len(spec.keys) > 1 else ""
            label = " ".join(x for x in (run.label if many else "", part) if x) or key
            steps, values = run.series(key)
            if steps:
                ax.plot(steps, values, style, color=colour, marker="." if len(steps) < 30 else None, label=label)
            steps, values = run.series(f"eval_{key}")
            if steps:
                ax.plot(steps, values, "o", color=colour, markerfacecolor="none", label=f"{label} (eval)")
    ax.set_title(title)
    ax.set_xlabel(XLABEL)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(spec.ylabel)
    if spec.name == "accuracy":
        ax.set_ylim(-0.05, 1.05)
    if spec.name == "learning_rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
    ax.grid(alpha=0.3)
    if len(ax.get_legend_handles_labels()[0]) > 1:
        ax.legend(fontsize="small")
    return fig


def _has_data(spec: PlotSpec, runs: list[RunRecord]) -> bool:
    return any(run.series(k)[0] or run.series(f"eval_{k}")[0] for run in runs for k in spec.keys)


def run_figures(run_dir: str | Path) -> dict[str, Any]:
    """matplotlib Figures of a run's metrics by plot name (only metrics its method logged)."""
    run = run_dir if isinstance(run_dir, RunRecord) else load_run(run_dir)
    method = run.summary.get("method") or (run.config.get("post_training") or {}).get("method", "")
    title = " · ".join(x for x in (run.summary.get("model", run.path.name), method) if x)
    return {s.name: _figure(s, [run], f"{s.title} — {title}") for s in PLOTS if _has_data(s, [run])}


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write the run's plots as PNGs into run_dir/plots/; returns their paths."""
    run = load_run(run_dir)
    out = run.path / "plots"
    out.mkdir(exist_ok=True)
    paths = []
    for name, fig in run_figures(run).items():
        paths.append(out / f"{name}.png")
        fig.savefig(paths[-1], dpi=110)
    return paths


# ----------------------------------------------------------------------------- report


def expand_run_dirs(paths: list[str | Path]) -> list[Path]:
    """Run directories as given; a folder that is not a run but holds runs stands for all of them."""
    out: list[Path] = []
    for p in map(lambda x: Path(x).expanduser().resolve(), paths):
        if not RunDir(p).is_run() and p.is_dir():
            inner = sorted(d for d in p.iterdir() if RunDir(d).is_run())
            if inner:
                out += inner
                continue
        out.append(p)
    return out


def readable_runs(run_dirs: list[Path], explicit: list[str | Path] = ()) -> list[Path]:
    """The runs that can be read. A damaged run found inside a folder is skipped with a warning; one named
    explicitly (in `explicit`) is an error."""
    import sys

    named = {Path(p).expanduser().resolve() for p in explicit}
    ok = []
    for run in run_dirs:
        try:
            load_run(run)
            ok.append(run)
        except DpokitError as e:
            if Path(run).resolve() in named:
                raise
            print(f"warning: skipping {run}: {e}", file=sys.stderr)
    if not ok:
        raise DpokitError(f"report: none of {len(run_dirs)} run director{'y' if len(run_dirs) == 1 else 'ies'} "
                          "could be read")
    return ok


def load_runs(run_dirs: list[str | Path]) -> list[RunRecord]:
    """The runs (folders of runs expanded), labelled so that a sweep's runs tell apart."""
    runs = [load_run(d) for d in expand_run_dirs(list(run_dirs))]
    if not runs:
        raise DpokitError("report: no run directories given")
    _label_runs(runs)
    return runs


def comparison_figures(runs: list[str | Path] | list[RunRecord]) -> dict[str, Any]:
    """matplotlib Figures with every run's curve overlaid, by plot name."""
    records = runs if runs and isinstance(runs[0], RunRecord) else load_runs(runs)
    records = [r for r in records if r.records]
    return {s.name: _figure(s, records, s.title) for s in PLOTS if _has_data(s, records)}


def write_report(run_dirs: list[str | Path], out_path: str | Path) -> Path:
    """Write one Markdown comparison page of the runs (with its PNGs in `<name>_plots/` beside it)."""
    from tqdm.auto import tqdm

    from .bench.runs import report_section as benchmark_section

    runs = load_runs(run_dirs)
    out_path = Path(out_path).expanduser().resolve()
    plot_dir = out_path.parent / f"{out_path.stem}_plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    for run in tqdm(runs, desc="Plotting runs", disable=len(runs) < 3 or bars_off(), leave=False):
        if run.records:  # each run's own plots too, for runs recorded before plots existed
            plot_run(run.path)

    lines = [f"# dpokit report — {len(runs)} run(s)", "",
             f"Written {datetime.now().isoformat(timespec='seconds')}. Runs: "
             + ", ".join(f"[{r.label}]({_rel(r.path, out_path)})" for r in runs) + ".", "",
             "## Final metrics", "", *_metrics_table(runs), ""]
    lines += ["## Curves", "", "Training values are lines; evaluation values (validation split) are "
              "open circles. Each run's own plots are in its `plots/` folder.", ""]
    for name, fig in comparison_figures(runs).items():
        png = plot_dir / f"{name}.png"
        fig.savefig(png, dpi=110)
        lines += [f"![{fig.axes[0].get_title()}]({_rel(png, out_path)})", ""]
    scored = [r for r in runs if _preference(r)]
    if scored:
        lines += ["## Validation pairs: before → after", "", *_preference_table(scored), ""]
    evaluated = [r for r in runs if r.evaluation and "outside_task" in r.evaluation]
    if evaluated:
        lines += ["## Before / after", "", *_judge_table(evaluated), "", *_samples_table(evaluated), ""]
    lines += benchmark_section([(r.label, r.path, r.summary) for r in runs])
    lines += ["## Glossary", "", GLOSSARY]
    return atomic_write_text(out_path, "\n".join(lines))


SWEEP_KEYS = ("post_training.method", "post_training.loss_type", "post_training.beta", "training.learning_rate",
              "lora.r", "training.max_steps", "training.num_epochs", "seed")


def _label_runs(runs: list[RunRecord]) -> None:
    """Short unique labels: the model name, plus the settings that differ between runs (a sweep)."""
    flat = [_flatten(r.config) for r in runs]
    differing = [k for k in SWEEP_KEYS if len({json.dumps(f.get(k), default=str) for f in flat}) > 1]
    for run, f in zip(runs, flat):
        extra = ", ".join(f"{k.split('.')[-1]}={_short(f.get(k))}" for k in differing)
        run.label = f"{run.summary.get('model', run.path.name)}" + (f" ({extra})" if extra else "")
    if len({r.label for r in runs}) < len(runs):
        for run in runs:
            run.label = run.path.name


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _metrics_table(runs: list[RunRecord]) -> list[str]:
    from .bench.runs import report_cell as benchmark_cell

    cols = ["run", "status", "method", "steps", "time (s)", "loss", "rewards/chosen", "rewards/rejected",
            "rewards/margins", "rewards/accuracies", "eval_loss", "eval_rewards/accuracies", "eval_rewards/margins",
            "held-out pass: base → trained", "IFEval prompt strict: base → trained"]
    rows = []
    for r in runs:
        s, final = r.summary, r.summary.get("final_metrics") or {}
        method = s.get("method") or _flatten(r.config).get("post_training.method", "")
        loss = s.get("loss_type") or []
        if isinstance(loss, list) and loss:
            method = f"{method} ({'+'.join(loss)})"
        ev = r.evaluation or s.get("eval") or {}
        passed = (f"{ev['base_score']:.1f}% → {ev['trained_score']:.1f}%" if "base_score" in ev else "")
        status = (RunDir(r.path).effective_status() or "?") + (f": {_cell(s['error'], 80)}" if s.get("error") else "")
        rows.append([r.label, status, method, s.get("steps", ""), s.get("train_runtime_s", ""),
                     *(_num(final.get(k)) for k in cols[5:13]), passed, benchmark_cell(s)])
    return _table(cols, rows)


def _preference(run: RunRecord) -> dict | None:
    """The run's validation-pair scores (eval.json, or the copy in summary.json), None if it has none."""
    return (run.evaluation or {}).get("preference") or (run.summary.get("eval") or {}).get("preference")


def _preference_table(runs: list[RunRecord]) -> list[str]:
    cols = ["run", "pairs", "reward accuracy", "reward margin", "chosen more likely: base → trained",
            "log p margin (nats): base → trained", "change of log p (nats): chosen / rejected"]
    rows = []
    for r in runs:
        p = _preference(r)
        b, a = p["before"], p["after"]
        rows.append([r.label, p["pairs"], f"{b['reward_accuracy']:.2f} → {a['reward_accuracy']:.2f}",
                     f"{b['reward_margin']:+.3f} → {a['reward_margin']:+.3f}",
                     f"{_pct(100 * p['prefers_chosen']['base'])} → {_pct(100 * p['prefers_chosen']['trained'])}",
                     f"{p['logp_margin']['base']:+.2f} → {p['logp_margin']['trained']:+.2f}",
                     f"{p['logp']['chosen']['change']:+.2f} / {p['logp']['rejected']['change']:+.2f}"
                     if "logp" in p else ""])
    return ["Every validation pair scored after training with the adapter off (before) and on (after); the "
            "reward is the method's (see the glossary: with a reference model, \"before\" is 0 by construction).",
            "", *_table(cols, rows)]


def _judge_table(runs: list[RunRecord]) -> list[str]:
    cols = ["run", "held-out prompts", "base pass", "trained pass", "wins / ties / losses",
            "outside-task answers lost", "newly degenerate (base / trained)"]
    rows = []
    for r in runs:
        e, o = r.evaluation, r.evaluation.get("outside_task") or {}
        degenerate = (f"{o['degenerate']} ({o['degenerate_base']} / {o['degenerate_trained']})"
                      if "degenerate_base" in o else o.get("degenerate", ""))
        rows.append([r.label, e.get("num_prompts", ""), _pct(e.get("base_score")), _pct(e.get("trained_score")),
                     f"{e['wins']} / {e['ties']} / {e['losses']}" if "wins" in e else "",
                     f"{o.get('lost', '')} of {o.get('base_correct', '')}" if o else "", degenerate])
    out = ["Greedy answers on held-out prompts with the adapter off (base) and on (trained), scored by the "
           "task's deterministic judge.", "", *_table(cols, rows)]
    families = sorted({f for r in runs for f in (r.evaluation.get("per_family") or {})})
    if families:
        fam_rows = [[f] + [f"{_pct(r.evaluation['per_family'][f]['base'])} → "
                           f"{_pct(r.evaluation['per_family'][f]['trained'])}"
                           if f in (r.evaluation.get("per_family") or {}) else "" for r in runs] for f in families]
        out += ["", "Per task family (base → trained):", "", *_table(["family"] + [r.label for r in runs], fam_rows)]
    return out


def _samples_table(runs: list[RunRecord], limit: int = 8) -> list[str]:
    """Answers side by side: one base column per model, one trained column per run."""
    by_prompt: dict[str, dict[str, str]] = {}
    columns: list[str] = []
    for r in runs:
        base_col, trained_col = f"base ({r.summary.get('model', '')})", f"trained: {r.label}"
        for col in (base_col, trained_col):
            if col not in columns:
                columns.append(col)
        for s in r.evaluation.get("samples", []):
            row = by_prompt.setdefault(s["prompt"], {})
            row.setdefault(base_col, _answer(s, "base"))
            row[trained_col] = _answer(s, "trained")
    prompts = list(by_prompt)[:limit]
    if not prompts:
        return []
    rows = [[_cell(p, 120)] + [by_prompt[p].get(c, "") for c in columns] for p in prompts]
    return [f"The first {len(prompts)} held-out prompts (all answers: each run's `samples.md`).", "",
            *_table(["prompt"] + columns, rows)]


def _answer(sample: dict, side: str) -> str:
    mark = {True: "✓ ", False: "✗ "}.get(sample.get(f"{side}_pass"), "")
    return mark + f"`{_cell(sample.get(side, ''), 160)}`"


def _table(cols: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def _cell(text, limit: int) -> str:
    text = " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _num(v) -> str:
    return "" if v is None else f"{v:.4g}"


def _pct(v) -> str:
    return "" if v is None else f"{v:.1f}%"


def _short(v) -> str:
    if isinstance(v, list):
        return "+".join(map(str, v))
    return f"{v:g}" if isinstance(v, float) else str(v)


def _rel(target: Path, page: Path) -> str:
    return Path(os.path.relpath(target, page.parent)).as_posix()
