"""Summaries of experiment records: one row per setting with `dpokit.stats` intervals, and error-bar plots."""

from __future__ import annotations

from typing import Any



def runs(records: list[dict], status: str | None = None) -> list[dict]:
    """The run records (not the cached base answers), optionally of one status."""
    return [r for r in records if r.get("kind") == "run" and (status is None or r.get("status") == status)]


def summarise(records: list[dict], by, confidence: float = 0.95) -> "pd.DataFrame":
    """One row per value of `by` (a record field such as "learning_rate", or a function of a record),
    over the seeds of that value: `dpokit.stats.Estimate`s with their intervals.

    pass / base: pooled Wilson over every judged prompt of every seed (fractions); gain: the per-seed
    improvement (trained − base, fraction) with a t interval over seeds; d, accuracy, drift_kl, update_norm,
    outside_lost, newly_degenerate: means with t intervals over seeds; outside_lost_rate and
    newly_degenerate_rate: the same counts pooled over seeds as proportions with Wilson intervals (what the
    verdicts compare). `runs`, `stopped`: counts."""
    import pandas as pd

    from .stats import mean_interval, pooled_wilson, wilson

    key = by if callable(by) else (lambda r: r.get(by))
    groups: dict[Any, list[dict]] = {}
    for r in runs(records):
        groups.setdefault(key(r), []).append(r)
    rows = []
    for value, group in groups.items():
        done = [r for r in group if r.get("status") == "completed"]
        judged = [r for r in done if r.get("passed") is not None]
        row = {"value": value, "runs": len(group), "completed": len(done),
               "stopped": sum(r.get("status") == "stopped" for r in group),
               "seeds": sorted(r["seed"] for r in done)}
        if judged:
            row["pass"] = pooled_wilson([r["passed"] for r in judged], confidence)
            row["base"] = pooled_wilson([r["base_passed"] for r in judged], confidence)
            row["gain"] = mean_interval([r["trained_rate"] - r["base_rate"] for r in judged], confidence, "%")
        for name in ("d", "accuracy", "drift_kl", "outside_lost", "newly_degenerate", "margin", "loss", "update_norm"):
            values = [r.get(name) for r in done if r.get(name) is not None]
            if values:
                row[name] = mean_interval(values, confidence)
        row["outside_lost_total"] = sum(r.get("outside_lost", 0) for r in done)
        row["outside_asked"] = sum(r.get("outside_base_correct", 0) for r in done)
        row["newly_degenerate_total"] = sum(r.get("newly_degenerate", 0) for r in done)
        row["answers_judged"] = sum(r.get("prompts", 0) for r in done)
        # counts as pooled proportions with a Wilson interval: a count that came out the same in every seed
        # (0 lost, 0 lost, 0 lost) would otherwise get a t interval of width zero
        if row["outside_asked"]:
            row["outside_lost_rate"] = wilson(row["outside_lost_total"], row["outside_asked"], confidence)
        if row["answers_judged"]:
            row["newly_degenerate_rate"] = wilson(row["newly_degenerate_total"], row["answers_judged"], confidence)
        row["train_s"] = sum(r.get("train_runtime_s") or 0 for r in done) / max(len(done), 1)
        row["wall_s"] = sum(r.get("wall_s") or 0 for r in group)
        rows.append(row)
    table = pd.DataFrame(rows)
    return table.sort_values("value").set_index("value") if len(table) else table


def plot_estimates(ax, x, estimates, scale: float = 1.0, **kwargs):
    """Points with asymmetric error bars from `Estimate`s (missing ones skipped); `scale` e.g. 100 for %."""
    import math

    pts = [(xi, e) for xi, e in zip(x, estimates) if e is not None and not (isinstance(e, float) and math.isnan(e))]
    if not pts:
        return None
    xs = [p[0] for p in pts]
    vals = [p[1].value * scale for p in pts]
    low = [(p[1].value - p[1].low) * scale if p[1].has_interval else 0 for p in pts]
    high = [(p[1].high - p[1].value) * scale if p[1].has_interval else 0 for p in pts]
    kwargs.setdefault("fmt", "o-")
    kwargs.setdefault("capsize", 3)
    return ax.errorbar(xs, vals, yerr=[low, high], **kwargs)
