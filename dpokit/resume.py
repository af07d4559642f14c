"""Continuing a run from a checkpoint, without ever rewriting a finished one.

Rules: a run that was not finished (interrupted, stopped, failed, or `running` with its process gone)
continues in its own directory when the config is the one it was started with. A finished run is
never trained into: continuing it (or any run with more steps: `training.max_steps` /
`num_epochs`) starts a new run directory from the checkpoint, which records what it extends. Any
other difference from the run's resolved config is refused with the differences listed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, Problem
from .rundir import RunDir, checkpoint_is_complete, checkpoint_step

# Settings that do not change what is trained: they may differ when a run is continued.
FREE_ON_RESUME = ("logging.", "evaluation.", "finetuning.resume_from_checkpoint", "training.output_dir",
                  "training.logging_steps", "training.save_steps", "training.save_total_limit", "training.eval_steps",
                  "gpu.on_missing")
# Settings that continue training further: allowed, into a new run directory.
EXTENDING = ("training.max_steps", "training.num_epochs")


@dataclass
class ResumePlan:
    """Where to continue: `source` run and checkpoint; `in_place` (same directory) or a new directory."""

    source: RunDir
    checkpoint: Path
    in_place: bool
    changes: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # dotted key -> (run's value, new value)

    @property
    def step(self) -> int:
        return checkpoint_step(self.checkpoint)


def latest_run_with_checkpoint(output_root: Path, model_name: str, method: str) -> tuple[RunDir, Path] | None:
    """The newest run of exactly this model and method under `output_root` that has a complete checkpoint.

    Names are matched literally (`<model>-<method>-<YYYYmmdd-HHMMSS>[-N]`), never as a pattern."""
    pattern = re.compile(re.escape(f"{model_name}-{method}-") + r"\d{8}-\d{6}(?:-\d+)?")
    root = Path(output_root).expanduser()
    runs = [RunDir(p) for p in (root.iterdir() if root.is_dir() else []) if p.is_dir() and pattern.fullmatch(p.name)]
    for run in sorted(runs, key=lambda r: r.path.stat().st_mtime, reverse=True):
        ckpt = run.latest_checkpoint()
        if ckpt is not None:
            return run, ckpt
    return None


def find_resume_point(output_root: Path, model_name: str, method: str, setting: str | None):
    """(run that holds the checkpoint, checkpoint) for `finetuning.resume_from_checkpoint`, or (None, None)."""
    if not setting:
        return None, None
    if setting != "latest":
        ckpt = Path(setting).expanduser().resolve()
        if not checkpoint_is_complete(ckpt):
            latest = RunDir(ckpt.parent).latest_checkpoint() if ckpt.parent.is_dir() else None
            raise ConfigError([Problem("finetuning.resume_from_checkpoint",
                                       f"{ckpt} is not a complete checkpoint (no readable trainer_state.json; "
                                       "a process killed while saving leaves such a folder)",
                                       f"use {latest}" if latest else "use 'latest' or a checkpoint-N folder "
                                       "that has trainer_state.json")])
        return RunDir(ckpt.parent), ckpt
    found = latest_run_with_checkpoint(output_root, model_name, method)
    if found is None:
        raise ConfigError([Problem("finetuning.resume_from_checkpoint",
                                   f"'latest': no checkpoint of {model_name}-{method} under {output_root}",
                                   "train once first, or set resume_from_checkpoint: null")])
    return found


def config_differences(before, after, model_name: str) -> dict[str, tuple[Any, Any]]:
    """Dotted keys whose value differs between two configs (the model entry compared by name)."""
    flat_before, flat_after = _flatten_for(before, model_name), _flatten_for(after, model_name)
    keys = sorted(set(flat_before) | set(flat_after))
    return {k: (flat_before.get(k), flat_after.get(k)) for k in keys if flat_before.get(k) != flat_after.get(k)}


def _flatten_for(config, model_name: str) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    spec = next((m for m in data.pop("models") if m["name"] == model_name), None)
    flat = {f"model.{k}": v for k, v in (spec or {"name": None}).items()}

    def walk(node, prefix):
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
            else:
                flat[f"{prefix}{k}"] = v

    walk(data, "")
    return flat


def plan_resume(config, spec, output_root: Path) -> ResumePlan | None:
    """How `config.finetuning.resume_from_checkpoint` continues `spec`'s training, checked before anything
    is written (ConfigError listing what stands in the way)."""
    source, ckpt = find_resume_point(output_root, spec.name, config.post_training.method,
                                     config.finetuning.resume_from_checkpoint)
    if source is None:
        return None
    where = "finetuning.resume_from_checkpoint"
    status = source.effective_status()
    if status == "running":
        proc = source.summary().get("process") or {}
        raise ConfigError([Problem(where, f"{source} is being trained right now (process {proc.get('pid', '?')} on "
                                   f"{proc.get('host', '?')})", "wait for it to finish, or stop it first (Ctrl-C "
                                   "saves a checkpoint)")])
    changes = config_differences(source.config(), config, spec.name)
    blocking = {k: v for k, v in changes.items() if not k.startswith(FREE_ON_RESUME) and k not in EXTENDING}
    if blocking:
        listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in blocking.items())
        raise ConfigError([Problem(where, f"{source} was trained with a different config ({listed}); continuing it "
                                   "with these changes would mix two runs in one record",
                                   "resume with the run's own settings, or start a new run")])
    extended = {k: v for k, v in changes.items() if k in EXTENDING}
    step = checkpoint_step(ckpt)
    max_steps = config.training.max_steps
    if "training.max_steps" in extended and max_steps is not None and max_steps <= step:
        raise ConfigError([Problem("training.max_steps", f"{max_steps} is not more than the {step} steps already "
                                   f"trained in {ckpt}", f"set max_steps above {step} to train further")])
    return ResumePlan(source, ckpt, in_place=status != "completed" and not extended, changes=changes)
