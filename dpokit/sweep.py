"""Sweeps for the notebooks: train a grid of configs, judge the runs, read them back as one table.

A sweep point is a dict of dotted overrides (`{"post_training.beta": 0.5}`) applied to a base
config; each point is an ordinary `dpokit.train` run with its own run directory. `judge_runs`
answers held-out prompts with every run's adapter and measures its drift from the reference
(dpokit/drift.py).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from .rundir import RunDir


def grid(**axes: list) -> list[dict[str, Any]]:
    """Every combination of the axes: grid(**{"post_training.beta": [0.1, 0.5], "seed": [0]}) -> 2 points."""
    return [dict(zip(axes, values)) for values in itertools.product(*axes.values())]


def run_grid(config, points: list[dict[str, Any]], output_dir: str | Path, num_prompts: int | None = None,
             max_new_tokens: int | None = None, drift: bool = True) -> "pd.DataFrame":
    """Train the config once per point (its overrides applied), then `judge_runs`; one row per run.

    A failing point is recorded (status, error) and the sweep goes on, like a multi-model batch."""
    import pandas as pd

    from .config import load_config
    from .run import train

    base, rows = config.model_dump(mode="json"), []
    for i, point in enumerate(points, 1):
        print(f"\n### sweep point {i}/{len(points)}: {point}", flush=True)
        cfg = load_config(data=base, overrides={**point, "evaluation.enabled": False})  # judged below, together
        [result] = train(cfg, model_index=0, output_dir=str(output_dir))
        row = dict(point, status=result.status, error=result.error, run_dir=result.run_dir)
        if result.status == "completed":
            row.update(run_record(result.run_dir))
        rows.append(row)
    table = pd.DataFrame(rows)
    done = [r["run_dir"] for r in rows if r["status"] == "completed"]
    if done:
        judged = judge_runs(done, num_prompts or config.evaluation.num_prompts,
                            max_new_tokens or config.evaluation.max_new_tokens, drift=drift,
                            trust_remote_code=config.models[0].trust_remote_code)
        table = table.merge(judged, on="run_dir", how="left")
    return table


def judge_runs(run_dirs: list[str | Path], num_prompts: int, max_new_tokens: int = 48,
               drift: bool = True, trust_remote_code: bool = False) -> "pd.DataFrame":
    """Greedy answers of each run's adapter on held-out prompts, judged; one row per run.

    The base model's answers (adapter off) are generated once per base model and data, not once per
    run. Columns: base_score / trained_score (percent passed, embedded task only), wins / losses
    against the base, degenerate (answers with degeneration flags whose base answer had none: a change from
    base, see `evaluate.degeneration_change`), drift_kl, and the answers.
    `trust_remote_code`: let the runs' models run their own code (a run directory never passes that on)."""
    import pandas as pd

    from .drift import token_drift
    from .evaluate import degeneration_change, generate, heldout_prompts, win_tie_loss
    from .judge import judge_many

    rows, base_answers = [], {}
    for run in map(RunDir, run_dirs):
        config = run.config()
        model, tokenizer = run.load_trained(trust_remote_code=trust_remote_code)
        prompts, specs = heldout_prompts(config, num_prompts)
        key = (model.peft_config["default"].base_model_name_or_path, config.dataset.name, config.dataset.subset,
               config.seed)
        if key not in base_answers:
            with model.disable_adapter():
                base_answers[key] = generate(model, tokenizer, prompts, max_new_tokens)
        answers = generate(model, tokenizer, prompts, max_new_tokens)
        row: dict[str, Any] = {"run_dir": str(run), "prompts": len(prompts), "answers": answers,
                               "base_answers": base_answers[key],
                               "degenerate": degeneration_change(base_answers[key], answers)["degenerate"]}
        if specs is not None:
            b, t = judge_many(specs, base_answers[key]), judge_many(specs, answers)
            row.update(base_score=b["pass_rate"], trained_score=t["pass_rate"], passed=t["passed"],
                       **{k: v for k, v in win_tie_loss(b["passed"], t["passed"]).items() if k != "ties"})
        if drift:
            row["drift_kl"] = token_drift(run, model=model, tokenizer=tokenizer)
        rows.append(row)
    return pd.DataFrame(rows)


def training_log(run_dir: str | Path) -> "pd.DataFrame":
    """The training log of a run as a table: the metrics.jsonl rows that carry a training `loss`."""
    import pandas as pd

    records = RunDir(run_dir).metrics()
    return pd.DataFrame([r for r in records if "loss" in r]).reset_index(drop=True)


def run_record(run_dir: str | Path) -> dict[str, Any]:
    """One flat row for a finished run: its settings and final training metrics.

    Final metrics are means over the last quarter of the logged steps (one batch is noisy).
    `logratio_chosen` / `logratio_rejected` are the rewards divided by beta: the mean change of
    log p(answer) against the reference, in nats, comparable across betas."""
    run = RunDir(run_dir)
    summary = run.summary()
    settings, final = summary.get("trl_settings", {}), dict(summary.get("final_metrics", {}))
    log = training_log(run)
    if len(log):
        final.update(log.tail(max(1, len(log) // 4)).mean(numeric_only=True).to_dict())
    beta = float(settings.get("beta") or 0) or None
    row = {"status": summary.get("status"), "model": summary.get("model"), "run_dir": str(run),
           "loss_type": "+".join(summary.get("loss_type") or []) or summary.get("method"), "beta": beta,
           "learning_rate": settings.get("learning_rate"), "steps": summary.get("steps"),
           "train_runtime_s": summary.get("train_runtime_s"), "loss": final.get("loss"),
           "margin": final.get("rewards/margins"), "accuracy": final.get("rewards/accuracies"),
           "reward_chosen": final.get("rewards/chosen"), "reward_rejected": final.get("rewards/rejected")}
    if beta and row["reward_chosen"] is not None:
        row.update(logratio_chosen=row["reward_chosen"] / beta, logratio_rejected=row["reward_rejected"] / beta)
    return row
