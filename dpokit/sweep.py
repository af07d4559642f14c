"""Sweeps for the notebooks: train a grid of configs, judge the runs, read them back as one table.

A sweep point is a dict of dotted overrides (`{"post_training.beta": 0.5}`) applied to a base
config; each point is an ordinary `dpokit.train` run with its own run directory. `judge_runs`
answers held-out prompts with every run's adapter and measures its drift from the reference
(`token_drift`); `measure_run` trains in a child process so that its peak memory can be read.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

MARKER = Path("configs") / "quickstart.yaml"  # a file only the project root has


# ----------------------------------------------------------------------------- paths and figures
def project_root(start: str | Path | None = None) -> Path:
    """The dpokit checkout at or above `start` (default: the working directory), else the working directory.

    JupyterLab and nbmake run notebooks inside notebooks/, `make notebooks` from the project root;
    paths in the notebooks' parameters mean the same from both."""
    here = Path(start or Path.cwd()).resolve()
    return next((c for c in (here, *here.parents) if (c / MARKER).is_file()), here)


def resolve_path(path: str | Path | None) -> str | None:
    """An input path as given if it exists, else under the project root if it exists there; anything
    else (a hub id, `embedded:...`) unchanged."""
    if path is None or str(path).startswith("embedded:"):
        return path
    given = Path(path).expanduser()
    if given.exists():
        return str(given)
    candidate = project_root() / given
    return str(candidate) if candidate.exists() else str(path)


def output_path(path: str | Path) -> Path:
    """An output folder: absolute as given, relative ones under the project root."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else project_root() / p


def save_figure(fig, figures_dir: str | Path | None, name: str) -> Path | None:
    """Save `fig` as `<figures_dir>/<name>.png` when a figures_dir is given (figures for the README)."""
    if not figures_dir:
        return None
    out = output_path(figures_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / f"{name}.png", dpi=120, bbox_inches="tight")
    return out / f"{name}.png"


def parameter(value):
    """A notebook parameter as given, or read as YAML when papermill's `-p` passed a list or dict
    as text (`-p betas "[0.05, 0.5]"` arrives as the string '[0.05, 0.5]')."""
    if isinstance(value, str) and value.strip()[:1] in ("[", "{"):
        import yaml

        return yaml.safe_load(value)
    return value


# ----------------------------------------------------------------------------- grids
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
                            max_new_tokens or config.evaluation.max_new_tokens, drift=drift)
        table = table.merge(judged, on="run_dir", how="left")
    return table


def judge_runs(run_dirs: list[str | Path], num_prompts: int, max_new_tokens: int = 48,
               drift: bool = True) -> "pd.DataFrame":
    """Greedy answers of each run's adapter on held-out prompts, judged; one row per run.

    The base model's answers (adapter off) are generated once per base model and data, not once per
    run. Columns: base_score / trained_score (percent passed, embedded task only), wins / losses
    against the base, degenerate (answers with degeneration flags), drift_kl, and the answers."""
    import pandas as pd

    from .config import load_config
    from .evaluate import compare, generate, heldout_prompts
    from .judge import degeneration_flags, judge_many

    rows, base_answers = [], {}
    for run in map(Path, run_dirs):
        config = load_config(run / "resolved_config.yaml")
        model, tokenizer = load_trained(run)
        prompts, specs = heldout_prompts(config, num_prompts)
        key = (model.peft_config["default"].base_model_name_or_path, config.dataset.name, config.seed)
        if key not in base_answers:
            with model.disable_adapter():
                base_answers[key] = generate(model, tokenizer, prompts, max_new_tokens)
        answers = generate(model, tokenizer, prompts, max_new_tokens)
        row: dict[str, Any] = {"run_dir": str(run), "prompts": len(prompts), "answers": answers,
                               "base_answers": base_answers[key],
                               "degenerate": sum(bool(degeneration_flags(a)) for a in answers)}
        if specs is not None:
            b, t = judge_many(specs, base_answers[key]), judge_many(specs, answers)
            row.update(base_score=b["pass_rate"], trained_score=t["pass_rate"], passed=t["passed"],
                       **{k: v for k, v in compare(b["passed"], t["passed"]).items() if k != "ties"})
        if drift:
            row["drift_kl"] = token_drift(run, model=model, tokenizer=tokenizer)
        rows.append(row)
    return pd.DataFrame(rows)


def load_trained(run_dir: str | Path):
    """(PeftModel with the run's adapter, tokenizer), on the GPU if there is one; adapter off = base model."""
    import torch
    from peft import PeftModel

    from .config import load_config
    from .models import load_model, load_tokenizer

    run = Path(run_dir)
    config = load_config(run / "resolved_config.yaml")
    name = json.loads((run / "summary.json").read_text(encoding="utf-8"))["model"]
    spec = next(m for m in config.models if m.name == name)
    tokenizer = load_tokenizer(spec.huggingface_id, spec.trust_remote_code)
    base = load_model(spec.huggingface_id, spec.trust_remote_code,
                      device="cuda" if torch.cuda.is_available() else None)
    return PeftModel.from_pretrained(base, str(run / "adapter")).eval(), tokenizer


# ----------------------------------------------------------------------------- reading runs
def read_metrics(run_dir: str | Path) -> "pd.DataFrame":
    """The training log of a run: the metrics.jsonl rows that carry a training `loss`, one per log step."""
    import pandas as pd

    lines = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return pd.DataFrame([r for r in records if "loss" in r]).reset_index(drop=True)


def run_record(run_dir: str | Path) -> dict[str, Any]:
    """One flat row for a finished run: its settings and final training metrics.

    Final metrics are means over the last quarter of the logged steps (one batch is noisy).
    `logratio_chosen` / `logratio_rejected` are the rewards divided by beta: the mean change of
    log p(answer) against the reference, in nats, comparable across betas."""
    run = Path(run_dir)
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    settings, final = summary.get("trl_settings", {}), dict(summary.get("final_metrics", {}))
    log = read_metrics(run) if (run / "metrics.jsonl").exists() else None
    if log is not None and len(log):
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


# ----------------------------------------------------------------------------- drift
def _heldout_pairs(config, n: int) -> list[dict]:
    """Prompt/chosen pairs never trained on: the embedded task's held-out split, else the eval split."""
    from .data import load_preference_data

    if config.dataset.name.startswith("embedded:"):
        from .tasks import build_task_dataset

        rows = build_task_dataset(seed=config.seed)["heldout"]
    else:
        data = load_preference_data(config, True)
        rows = data.eval if data.eval is not None else data.train
    return [rows[i] for i in range(min(n, len(rows)))]


def _as_chat(row: dict) -> dict:
    if isinstance(row["chosen"], list):
        return row
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def token_drift(run_dir: str | Path, num_prompts: int = 16, batch_size: int = 4, model=None,
                tokenizer=None) -> float:
    """Mean per-token KL(pi || pi_ref) on the chosen answers of held-out pairs, in nats per token.

    At each answer position it compares the trained policy's next-token distribution with the
    reference's (the adapter switched off) over the whole vocabulary: exact, no sampling. It is
    the quantity DPO's beta puts a price on; 0 = no drift."""
    import torch

    from .config import load_config
    from .data import tokenize_pair

    config = load_config(Path(run_dir) / "resolved_config.yaml")
    if model is None:
        model, tokenizer = load_trained(run_dir)
    chat = tokenizer.chat_template is not None and config.dataset.chat_template != "never"
    seqs = []
    for row in _heldout_pairs(config, num_prompts):
        ids = tokenize_pair(tokenizer, _as_chat(row) if chat else row)
        seqs.append((ids["prompt_ids"] + ids["chosen_ids"], len(ids["prompt_ids"])))
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        answer = torch.zeros(len(chunk), width - 1, dtype=torch.bool)  # positions that predict answer tokens
        for i, (s, n_prompt) in enumerate(chunk):
            ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
            answer[i, n_prompt - 1:len(s) - 1] = True
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.no_grad():
            policy = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
            with model.disable_adapter():
                ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        kl = (policy.exp() * (policy - ref)).sum(-1).cpu()
        total, count = total + kl[answer].sum().item(), count + int(answer.sum())
    return total / max(count, 1)


# ----------------------------------------------------------------------------- memory
def measure_run(config, overrides: dict[str, Any] | None = None, output_dir: str | Path | None = None,
                timeout: float = 3600) -> dict[str, Any]:
    """Train `config` (+ overrides) in a fresh Python process; report its peak memory and speed.

    A child process, because a process's peak memory only ever grows. Returns peak_rss_mb (the whole
    process: libraries, weights, activations), rss_after_imports_mb, cuda_peak_mb on a GPU, step_s,
    and status: "completed", "out of memory" (CUDA), "killed" (SIGKILL, on Linux usually the kernel's
    out-of-memory killer) or "crashed", with the error. A failure is a result here, not an exception."""
    from .config import load_config

    cfg = load_config(data=config.model_dump(mode="json"), overrides=overrides or {})
    out = str(output_dir or cfg.training.output_dir)
    with tempfile.TemporaryDirectory(prefix="dpokit-measure-") as work:
        config_path, result_path = Path(work) / "config.yaml", Path(work) / "result.json"
        config_path.write_text(cfg.to_yaml(), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "dpokit.sweep", "measure", str(config_path), out,
                               str(result_path)], capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, TQDM_DISABLE="1"))
        if result_path.exists():
            result = json.loads(result_path.read_text(encoding="utf-8"))
        else:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            status = "killed" if proc.returncode == -9 else "crashed"
            result = {"status": status, "error": f"exit status {proc.returncode} ({status}): {tail}"}
    return dict(result, overrides=dict(overrides or {}))


def _peak_rss_mb() -> float:
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux
    except ImportError:  # Windows
        import psutil

        return psutil.Process().memory_info().peak_wset / 2**20


def _measure_child(config_path: str, output_dir: str, result_path: str) -> int:
    import time

    import psutil
    import torch
    import trl  # noqa: F401  (imported before the baseline, so it counts as "libraries")

    from .config import load_config
    from .run import train

    after_imports = psutil.Process().memory_info().rss / 2**20
    start = time.perf_counter()
    [result] = train(load_config(config_path), model_index=0, output_dir=output_dir)
    record: dict[str, Any] = {"status": result.status, "error": result.error, "run_dir": result.run_dir,
                              "rss_after_imports_mb": round(after_imports, 1), "peak_rss_mb": round(_peak_rss_mb(), 1),
                              "wall_s": round(time.perf_counter() - start, 2)}
    if result.status == "completed":
        steps = result.summary["steps"]
        record.update(steps=steps, step_s=round(result.summary["train_runtime_s"] / max(steps, 1), 3))
    elif "out of memory" in (result.error or "").lower():
        record["status"] = "out of memory"
    if torch.cuda.is_available():
        record["cuda_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    Path(result_path).write_text(json.dumps(record, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":  # python -m dpokit.sweep measure CONFIG OUTPUT_DIR RESULT_JSON (used by measure_run)
    if len(sys.argv) != 5 or sys.argv[1] != "measure":
        sys.exit("usage: python -m dpokit.sweep measure CONFIG.yaml OUTPUT_DIR RESULT.json")
    sys.exit(_measure_child(*sys.argv[2:]))
