"""Experiments over seeds, recorded point by point: what the lessons' verdicts rest on.

`run_experiment(base, points, seeds, results_file, output_dir)` trains the base config once per
(point, seed), judges every run on the embedded task's held-out prompts and the questions outside
the task, and appends one JSON line per finished run to `results_file` as soon as it is done. A
re-run skips every (point, seed) whose resolved config and evaluation settings are already in the
file, so an interrupted sweep loses at most the run in progress, and a lesson executed again with
the same parameters reads its figures back instead of training again.

A point is a dict of dotted overrides (`{"training.learning_rate": 5e-6}`), plus one key of its own:
`task_rows: N` trains on N pairs of the embedded task generated for the run's seed
(`dpokit.tasks.build_task_rows`; beyond the default 360 prompts start to repeat). Runs are always
judged on the embedded task's held-out prompts of their seed, which no training row shares values with.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from .rundir import RunDir

DEFAULT_TASK_ROWS = 360  # what `embedded:instruct-tasks` trains on (dpokit.tasks.build_task_dataset)
TRAIN_KEYS = ("loss", "rewards/margins", "rewards/accuracies", "rewards/chosen", "rewards/rejected",
              "logps/chosen", "logps/rejected", "grad_norm", "learning_rate", "kl", "nll_loss", "log_odds_ratio")
EVAL_KEYS = ("eval_loss", "eval_rewards/margins", "eval_rewards/accuracies", "eval_rewards/chosen",
             "eval_rewards/rejected")


def sweep_base(config_path: str | Path, model_id: str | None = None, dataset_name: str | None = None,
               max_steps: int = 48, batch_size: int = 4, max_samples: int | None = None, **overrides):
    """The centre of the lessons' sweeps: `config_path` (the quickstart) trained for `max_steps` at
    `batch_size` pairs per step, logged every step, warm-up 10% of the steps, reference log-probs
    computed once and cached (they depend on the data, not on the swept settings), no tracker.
    `overrides`: more dotted keys (`**{"post_training.loss_type": "sigmoid"}`)."""
    from .config import load_config

    extra: dict[str, Any] = {}
    if model_id:
        extra["models"] = [{"name": model_id.removeprefix("embedded:").split("/")[-1], "huggingface_id": model_id}]
    if dataset_name:
        extra["dataset.name"] = dataset_name
    return load_config(config_path, overrides={
        **extra, "dataset.max_samples": max_samples,
        "post_training.precompute_ref_log_probs": True,
        "training.max_steps": max_steps, "training.save_steps": max_steps, "training.logging_steps": 1,
        "training.per_device_train_batch_size": batch_size, "training.gradient_accumulation_steps": 1,
        "training.warmup_steps": max(1, round(0.1 * max_steps)),
        "logging.report_to": ["none"], **overrides})


def task_size_point(n: int) -> dict[str, Any]:
    """The point for a training set of `n` generated task pairs ({} for the embedded default size)."""
    return {} if n == DEFAULT_TASK_ROWS else {"task_rows": int(n)}


def point_label(point: dict[str, Any]) -> str:
    """A short readable label: "learning_rate=5e-06, r=4" (last part of each dotted key)."""
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}={v}"
                     for k, v in point.items()) or "base"


# ----------------------------------------------------------------------------- the results file


def read_results(results_file: str | Path) -> list[dict]:
    """Every record of a results file (JSON lines; a line cut short by a killed process is skipped)."""
    path = Path(results_file)
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def append_result(results_file: str | Path, record: dict) -> None:
    """Append one record as a line and flush it to disk before returning."""
    path = Path(results_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
        f.flush()
        os.fsync(f.fileno())


def config_key(config, **extra) -> str:
    """A content key for a run: the resolved config without where it writes, plus `extra` settings."""
    data = config.model_dump(mode="json")
    data["training"].pop("output_dir", None)
    data.pop("logging", None)
    data.pop("evaluation", None)
    blob = json.dumps({"config": data, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- running


def run_experiment(base, points: list[dict[str, Any]], seeds: list[int], results_file: str | Path,
                   output_dir: str | Path, num_prompts: int = 60, max_new_tokens: int = 48,
                   eval_checkpoints: bool = False, drift_prompts: int = 16,
                   keep_checkpoints: bool = False, quiet: bool = True) -> list[dict]:
    """Train and judge every (point, seed) not yet in `results_file`; return the records of all of them.

    `eval_checkpoints`: also judge every checkpoint the run saved (e.g. one per epoch).
    `keep_checkpoints`: leave the runs' checkpoint folders (optimizer state; deleted by default once judged).
    `quiet`: write what training prints to `output_dir/logs/` and print one line per run instead.
    A run that fails is recorded with its error and not retried until its record is removed."""
    from .config import load_config
    from .run import train

    results_file, output_dir = Path(results_file), Path(output_dir)
    base_data = base.model_dump(mode="json")
    eval_settings = {"num_prompts": num_prompts, "max_new_tokens": max_new_tokens,
                     "eval_checkpoints": eval_checkpoints, "drift_prompts": min(drift_prompts, num_prompts)}
    out: list[dict] = []
    todo = [(dict(p), s) for s in seeds for p in points]  # seed by seed: a partial sweep still has every point
    for i, (point, seed) in enumerate(todo, 1):
        overrides = {k: v for k, v in point.items() if k != "task_rows"}
        config = load_config(data=base_data, overrides={**overrides, "seed": seed, "evaluation.enabled": False,
                                                        "training.output_dir": str(output_dir)})
        key = config_key(config, task_rows=point.get("task_rows"), **eval_settings)
        done = {r["key"]: r for r in read_results(results_file) if r.get("kind") == "run"}
        if key in done:
            print(f"### {i}/{len(todo)} {point_label(point)}, seed {seed}: recorded earlier "
                  f"({done[key]['status']}, {done[key].get('finished', '?')})", flush=True)
            out.append(done[key])
            continue
        print(f"\n### {i}/{len(todo)} {point_label(point)}, seed {seed}", flush=True)
        if point.get("task_rows"):
            data_file = write_task_rows(output_dir / "data", seed, int(point["task_rows"]), config.dataset.subset)
            config = load_config(data=config.model_dump(mode="json"),
                                 overrides={"dataset.name": str(data_file), "dataset.max_samples": None})
        log = output_dir / "logs" / f"{key}.log" if quiet else None
        record = _run_point(config, point, seed, key, results_file, output_dir, eval_settings, keep_checkpoints,
                            train, log)
        append_result(results_file, record)
        print(f"    {describe(record)}", flush=True)
        out.append(record)
    return out


def describe(record: dict) -> str:
    """One line on a finished record: status, time, margin, pass rate, damage."""
    if record.get("status") != "completed":
        return f"{record.get('status')}: {str(record.get('error'))[:200]} ({record.get('wall_s')} s)"
    parts = [f"completed in {record['wall_s']:.0f} s (train {record.get('train_runtime_s', 0):.0f} s, "
             f"load {record.get('load_start')})"]
    if record.get("d") is not None:
        parts.append(f"d={record['d']:.2f} nats")
    if record.get("trained_rate") is not None:
        parts.append(f"pass {100 * record['base_rate']:.0f}% -> {100 * record['trained_rate']:.0f}%")
    parts.append(f"outside lost {record.get('outside_lost')}, newly degenerate {record.get('newly_degenerate')}")
    return "; ".join(parts)


def _run_point(config, point, seed, key, results_file, output_dir, eval_settings, keep_checkpoints, train,
               log: Path | None) -> dict:
    started, load_start, t0 = _now(), _load(), time.perf_counter()
    record: dict[str, Any] = {"kind": "run", "key": key, "point": point, "label": point_label(point), "seed": seed,
                              "started": started, "load_start": load_start, "cpus": os.cpu_count(), "code": _code_version(),
                              "omp_threads": os.environ.get("OMP_NUM_THREADS"),
                              "config": config.model_dump(mode="json")}
    try:
        with quiet_output(log):
            [result] = train(config, model_index=0, output_dir=str(output_dir))
    except Exception as e:  # bad input for this point: record it, go on with the others
        result = None
        record.update(status="failed", error=f"{type(e).__name__}: {e}")
    if result is not None:
        record.update(status=result.status, error=result.error, run_dir=result.run_dir)
    train_s = time.perf_counter() - t0
    if record["status"] in ("completed", "stopped"):  # stopped: the health watch ended it (e.g. a NaN loss)
        record.update(run_facts(RunDir(result.run_dir)))
    if record["status"] == "completed":
        run = RunDir(result.run_dir)
        t1 = time.perf_counter()
        with quiet_output(log):
            record.update(judge_run(run, results_file, eval_settings["num_prompts"], eval_settings["max_new_tokens"],
                                    eval_settings["drift_prompts"], eval_settings["eval_checkpoints"]))
        record["eval_s"] = round(time.perf_counter() - t1, 1)
        if not keep_checkpoints:
            for ckpt in run.checkpoints():
                shutil.rmtree(ckpt, ignore_errors=True)
    record.update(wall_s=round(time.perf_counter() - t0, 1), train_wall_s=round(train_s, 1),
                  load_end=_load(), finished=_now())
    return record


def write_task_rows(folder: Path, seed: int, n: int, subset: str | None = None) -> Path:
    """`n` generated training pairs of the embedded task for `seed`, as JSON lines (prompt/chosen/rejected)."""
    from .tasks import build_task_rows

    families = [f.strip() for f in subset.split(",") if f.strip()] if subset else None
    path = folder / f"tasks-seed{seed}-n{n}{'-' + '_'.join(families) if families else ''}.jsonl"
    if not path.exists():
        train, _ = build_task_rows(seed=seed, n_train=n, families=families)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps({k: r[k] for k in ("prompt", "chosen", "rejected")}) + "\n"
                               for r in train), encoding="utf-8")
        tmp.replace(path)
    return path


def run_facts(run: RunDir) -> dict[str, Any]:
    """Settings, final training figures and the logged curves of a finished (or stopped) run.

    Final figures are means over the last quarter of the logged steps (one batch is noisy), each over the
    steps that logged it (KTO logs a side's reward only in batches that hold rows of that side).
    `d` = margin / β and the log-ratios = rewards / β, in nats (comparable across β)."""
    summary, env = run.summary(), run.read_json("environment.json", {}) or {}
    cfg = run.config()
    t, settings = cfg.training, summary.get("trl_settings", {})
    logged = [r for r in run.metrics() if "loss" in r]
    tail = logged[-max(1, len(logged) // 4):] if logged else []

    def final(key):
        values = [r[key] for r in tail if isinstance(r.get(key), (int, float))]
        return sum(values) / len(values) if values else None

    beta = float(settings.get("beta") or cfg.post_training.beta)
    facts: dict[str, Any] = {"method": cfg.post_training.method, "loss_type": "+".join(cfg.post_training.loss_types),
                             "beta": beta, "learning_rate": t.learning_rate, "steps": summary.get("steps"),
                             "train_runtime_s": summary.get("train_runtime_s"), "loss": final("loss"),
                             "margin": final("rewards/margins"), "accuracy": final("rewards/accuracies"),
                             "reward_chosen": final("rewards/chosen"), "reward_rejected": final("rewards/rejected")}
    for side in ("chosen", "rejected"):
        if facts[f"reward_{side}"] is not None:
            facts[f"logratio_{side}"] = facts[f"reward_{side}"] / beta
    if facts["margin"] is not None:
        facts["d"] = facts["margin"] / beta
    train_rows = (env.get("dataset") or {}).get("train_rows")
    facts.update(train_rows=train_rows, eval_rows=(env.get("dataset") or {}).get("eval_rows"), lora_r=cfg.lora.r,
                 effective_batch=t.per_device_train_batch_size * t.gradient_accumulation_steps,
                 torch_threads=env.get("torch_threads"))
    facts["pairs_seen"] = facts["effective_batch"] * (summary.get("steps") or 0)
    facts["epochs"] = round(facts["pairs_seen"] / train_rows, 3) if train_rows else None
    if cfg.dataset.name.endswith(".jsonl"):
        lines = Path(cfg.dataset.name).read_text(encoding="utf-8").splitlines()
        facts["distinct_prompts"] = len({json.loads(x)["prompt"] for x in lines})
    curves = []
    for rec in run.metrics():
        keys = TRAIN_KEYS if "loss" in rec else EVAL_KEYS if "eval_loss" in rec else ()
        if keys:
            curves.append({"step": rec.get("step"), "epoch": _round(rec.get("epoch")),
                           **{k: _round(rec[k]) for k in keys if k in rec}})
    facts["curves"] = curves
    return facts


# ----------------------------------------------------------------------------- judging


def heldout_for(config, n: int):
    """(prompts, specs, families) the run is judged on: the embedded task's held-out rows of its seed
    when it trained on the task (embedded or generated rows), else the validation rows without specs."""
    from .config import EMBEDDED_DATASET, DatasetSection
    from .data import embedded_task, heldout_rows

    name = config.dataset.name
    if name.startswith("embedded:") or Path(name).name.startswith("tasks-seed"):
        rows = embedded_task(DatasetSection(name=EMBEDDED_DATASET, subset=config.dataset.subset), config.seed)["heldout"]
        rows = rows.select(range(min(n, len(rows))))
        return list(rows["prompt"]), list(rows["spec"]), list(rows["family"])
    rows = heldout_rows(config, n)
    return list(rows["prompt"]), None, None


def judge_run(run: RunDir, results_file: str | Path, num_prompts: int, max_new_tokens: int,
              drift_prompts: int = 16, eval_checkpoints: bool = False) -> dict[str, Any]:
    """Greedy answers with the adapter off and on, judged: held-out pass rates, outside-task damage,
    degeneration, drift. The base model's answers are cached in `results_file` (one record per seed)."""
    from .drift import token_drift
    from .evaluate import generate
    from .tasks import OUTSIDE_TASK_PROMPTS

    config = run.config()
    model, tokenizer = run.load_trained()
    prompts, specs, families = heldout_for(config, num_prompts)
    questions = prompts + [q for q, _ in OUTSIDE_TASK_PROMPTS]
    base_key = hashlib.sha256(json.dumps([config.models[0].huggingface_id, config.seed, config.dataset.subset,
                                          questions, max_new_tokens]).encode()).hexdigest()[:20]
    cached = {r["key"]: r for r in read_results(results_file) if r.get("kind") == "base"}
    if base_key in cached:
        base_all = cached[base_key]["answers"]
    else:
        with model.disable_adapter():
            base_all = generate(model, tokenizer, questions, max_new_tokens)
        append_result(results_file, {"kind": "base", "key": base_key, "seed": config.seed, "answers": base_all,
                                     "finished": _now()})
    trained_all = generate(model, tokenizer, questions, max_new_tokens)
    out = _judged(prompts, specs, families, base_all, trained_all, OUTSIDE_TASK_PROMPTS)
    out["update_norm"] = relative_update(model)
    if drift_prompts:
        out["drift_kl"] = token_drift(run, num_prompts=drift_prompts, model=model, tokenizer=tokenizer)
    if eval_checkpoints:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        out["checkpoints"] = []
        for ckpt in run.checkpoints():
            set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
            answers = generate(model, tokenizer, questions, max_new_tokens)
            judged = _judged(prompts, specs, families, base_all, answers, OUTSIDE_TASK_PROMPTS)
            state = json.loads((ckpt / "trainer_state.json").read_text())
            out["checkpoints"].append({"step": state.get("global_step"), "epoch": _round(state.get("epoch")),
                                       **{k: judged.get(k) for k in ("trained_rate", "passed", "outside_lost",
                                                                     "newly_degenerate")}})
    del model
    return out


def relative_update(model) -> float:
    """How far the adapter moved the adapted weights: ||ΔW|| / ||W|| over all LoRA-adapted layers
    (Frobenius norms, ΔW = scale · B·A), 0 for an untouched adapter."""
    import torch

    delta_sq, weight_sq = 0.0, 0.0
    with torch.no_grad():
        for module in model.modules():
            if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
                delta = module.get_delta_weight("default").float()
                delta_sq += float((delta ** 2).sum())
                weight_sq += float((module.base_layer.weight.float() ** 2).sum())
    return (delta_sq / weight_sq) ** 0.5 if weight_sq else 0.0


def _judged(prompts, specs, families, base_all, trained_all, outside_prompts) -> dict[str, Any]:
    from .evaluate import outside_task_check, win_tie_loss
    from .judge import degeneration_flags, judge_many

    n = len(prompts)
    base, trained = base_all[:n], trained_all[:n]
    out: dict[str, Any] = {"prompts": n}
    base_flags = [bool(degeneration_flags(a)) for a in base]
    flags = [bool(degeneration_flags(a)) for a in trained]
    out.update(degenerate=sum(flags), degenerate_base=sum(base_flags),
               newly_degenerate=sum(t and not b for b, t in zip(base_flags, flags)))
    if specs is not None:
        b, t = judge_many(specs, base), judge_many(specs, trained)
        out.update(base_rate=b["pass_rate"] / 100, trained_rate=t["pass_rate"] / 100, base_passed=b["passed"],
                   passed=t["passed"], per_family={f: t["per_family"][f] / 100 for f in t["per_family"]},
                   **win_tie_loss(b["passed"], t["passed"]))
    outside = outside_task_check(base_all[n:], trained_all[n:], outside_prompts)
    out.update(outside_prompts=outside["prompts"], outside_base_correct=outside["base_correct"],
               outside_lost=outside["lost"], outside_degenerate=outside["degenerate"],
               outside_lost_rows=[{k: r[k] for k in ("prompt", "expected", "base", "trained")}
                                  for r in outside["rows"] if r["base_ok"] and not r["trained_ok"]])
    out["answers"] = [{"prompt": p, "family": f, "base": b[:200], "trained": t[:200]}
                      for p, f, b, t in zip(prompts, families or [None] * n, base, trained)]
    return out


# ----------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def quiet_output(log: Path | None):
    """Send what training prints to `log`, with the libraries' progress displays off; all restored after
    (None: leave everything as it is).

    In a notebook, progress bars and the Trainer's progress table are displayed as widgets/HTML, past
    stdout (and tqdm's notebook bars ignore TQDM_DISABLE): datasets' and transformers' bars are switched
    off, and the Trainer gets its plain printer callback (its log lines go to `log`) instead of a progress bar."""
    if log is None:
        yield
        return
    import datasets
    import transformers
    import transformers.trainer as hf_trainer
    from transformers.trainer_callback import PrinterCallback

    bars = [(datasets.utils.logging.is_progress_bar_enabled(), datasets.utils.logging.disable_progress_bar,
             datasets.utils.logging.enable_progress_bar),
            (transformers.utils.logging.is_progress_bar_enabled(), transformers.utils.logging.disable_progress_bar,
             transformers.utils.logging.enable_progress_bar)]
    for _, off, _on in bars:
        off()
    progress = hf_trainer.DEFAULT_PROGRESS_CALLBACK
    hf_trainer.DEFAULT_PROGRESS_CALLBACK = PrinterCallback
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with log.open("a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            yield
    finally:
        hf_trainer.DEFAULT_PROGRESS_CALLBACK = progress
        for was_on, _off, on in bars:
            if was_on:
                on()


def _code_version() -> str | None:
    """The dpokit checkout's commit (with "+changes" when the working tree differs), None outside git."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "dpokit"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}+changes" if head and dirty else head or None


def _round(x, digits: int = 5):
    return round(x, digits) if isinstance(x, float) else x


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def _load() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:  # pragma: no cover - not on every platform
        return None


# ----------------------------------------------------------------------------- summaries


def runs(records: list[dict], status: str | None = None) -> list[dict]:
    """The run records (not the cached base answers), optionally of one status."""
    return [r for r in records if r.get("kind") == "run" and (status is None or r.get("status") == status)]


def summarise(records: list[dict], by, confidence: float = 0.95) -> "pd.DataFrame":
    """One row per value of `by` (a record field such as "learning_rate", or a function of a record),
    over the seeds of that value: `dpokit.stats.Estimate`s with their intervals.

    pass / base: pooled Wilson over every judged prompt of every seed (fractions); gain: the per-seed
    improvement (trained − base, fraction) with a t interval over seeds; d, accuracy, drift_kl,
    outside_lost, newly_degenerate: means with t intervals over seeds. `runs`, `stopped`: counts."""
    import pandas as pd

    from .stats import mean_interval, pooled_wilson

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
        for name in ("d", "accuracy", "drift_kl", "outside_lost", "newly_degenerate", "margin", "loss"):
            values = [r.get(name) for r in done if r.get(name) is not None]
            if values:
                row[name] = mean_interval(values, confidence)
        row["outside_lost_total"] = sum(r.get("outside_lost", 0) for r in done)
        row["outside_asked"] = sum(r.get("outside_base_correct", 0) for r in done)
        row["newly_degenerate_total"] = sum(r.get("newly_degenerate", 0) for r in done)
        row["answers_judged"] = sum(r.get("prompts", 0) for r in done)
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
