"""Experiments over seeds, recorded point by point: what the lessons' verdicts rest on.
(Judging: dpokit/experiment_judge.py; summaries with intervals: dpokit/experiment_summary.py.)

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
    """A content key for a run: the settings that differ from dpokit's defaults, without where it writes
    or what it logs to, plus `extra` settings. A section or key added to the schema later (at its default)
    leaves the keys of recorded runs unchanged, so a results file stays readable across versions."""
    data = config.model_dump(mode="json", exclude_defaults=True)
    data.get("training", {}).pop("output_dir", None)
    data.pop("logging", None)
    data.pop("evaluation", None)
    blob = json.dumps({"config": data, **extra}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- running


def run_experiment(base, points: list[dict[str, Any]], seeds: list[int], results_file: str | Path,
                   output_dir: str | Path, num_prompts: int = 60, max_new_tokens: int = 48,
                   eval_checkpoints: bool = False, drift_prompts: int = 16,
                   keep_checkpoints: bool = False, quiet: bool = True, train_missing: bool = True) -> list[dict]:
    """Train and judge every (point, seed) not yet in `results_file`; return the records of all of them.

    `eval_checkpoints`: also judge every checkpoint the run saved (e.g. one per epoch).
    `keep_checkpoints`: leave the runs' checkpoint folders (optimizer state; deleted by default once judged).
    `quiet`: write what training prints to `output_dir/logs/` and print one line per run instead.
    `train_missing=False`: only read back what the file holds (a point not in it is reported and left out).
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
        # The sweeps judge each run themselves (judge_run): no end-of-training answers or public benchmark
        # (the quickstart's IFEval step would add minutes to every run).
        config = load_config(data=base_data, overrides={**overrides, "seed": seed, "evaluation.enabled": False,
                                                        "evaluation.benchmarks": [],
                                                        "training.output_dir": str(output_dir)})
        key = config_key(config, task_rows=point.get("task_rows"), **eval_settings)
        done = {r["key"]: r for r in read_results(results_file) if r.get("kind") == "run"}
        if key in done:
            print(f"### {i}/{len(todo)} {point_label(point)}, seed {seed}: recorded earlier "
                  f"({done[key]['status']}, {done[key].get('finished', '?')})", flush=True)
            # the same run may have been recorded under another point (another lesson's sweep, or a point
            # that equals the base): the caller gets it under the point it asked for
            out.append({**done[key], "point": point, "label": point_label(point)})
            continue
        if not train_missing:
            print(f"### {i}/{len(todo)} {point_label(point)}, seed {seed}: not in the results file (left out)", flush=True)
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
        from .experiment_judge import judge_run

        cache = {r["key"]: r["answers"] for r in read_results(results_file) if r.get("kind") == "base"}
        known = set(cache)
        with quiet_output(log):
            record.update(judge_run(run, eval_settings["num_prompts"], eval_settings["max_new_tokens"],
                                    eval_settings["drift_prompts"], eval_settings["eval_checkpoints"], base_cache=cache))
        for key in set(cache) - known:  # the base model's answers, for the next runs of this seed
            append_result(results_file, {"kind": "base", "key": key, "seed": seed, "answers": cache[key],
                                         "finished": _now()})
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
