"""A run directory: where each file of a run lives, atomic reads and writes, its status, and
loading what it trained.

Every module that reads or writes a run (training, evaluation, sweeps, reports, export, chat)
goes through `RunDir`, so a run is found, read and loaded the same way everywhere. Only the
main process of a multi-process run writes.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from .console import is_rank_zero
from .errors import DpokitError
from .files import atomic_write_json, atomic_write_text

CONFIG_FILE = "resolved_config.yaml"
SUMMARY_FILE = "summary.json"
ENVIRONMENT_FILE = "environment.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
SAMPLES_FILE = "samples.md"
ADAPTER_DIR = "adapter"
PLOTS_DIR = "plots"


def checkpoint_step(ckpt: Path) -> int:
    return int(ckpt.name.split("-")[-1])


def checkpoint_is_complete(ckpt: Path) -> bool:
    """True once the Trainer finished writing `ckpt`: it writes trainer_state.json last, so a process
    killed while saving leaves a folder without it (or with half of it)."""
    try:
        return "global_step" in json.loads((Path(ckpt) / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False


class RunDir:
    """One run's directory `<model>-<method>-<time>[-N]` under an output folder."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # ------------------------------------------------------------------ creating and finding
    @classmethod
    def create(cls, output_root: str | Path, model_name: str, method: str) -> "RunDir":
        """A fresh directory `<model>-<method>-<timestamp>[-N]`; an existing one is never reused."""
        output_root = Path(output_root).expanduser()
        output_root.mkdir(parents=True, exist_ok=True)
        base = f"{model_name}-{method}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        for i in range(1, 1000):
            candidate = output_root / (base if i == 1 else f"{base}-{i}")
            try:
                candidate.mkdir()
                return cls(candidate)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a fresh run directory under {output_root}")

    @property
    def name(self) -> str:
        return self.path.name

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def adapter_dir(self) -> Path:
        return self.path / ADAPTER_DIR

    @property
    def plots_dir(self) -> Path:
        return self.path / PLOTS_DIR

    def is_run(self) -> bool:
        """True for a directory `dpokit train` wrote (it has a summary)."""
        return self.file(SUMMARY_FILE).is_file()

    # ------------------------------------------------------------------ files
    def write_json(self, name: str, data: Any) -> None:
        """Write JSON atomically (readers see the old file or the new one); main process only."""
        if is_rank_zero():
            atomic_write_json(self.file(name), data)

    def write_text(self, name: str, text: str) -> None:
        if is_rank_zero():
            atomic_write_text(self.file(name), text)

    def read_json(self, name: str, default: Any = None) -> Any:
        """The parsed file, or `default` when it does not exist."""
        path = self.file(name)
        if not path.exists():
            return default
        return json.loads(path.read_text(encoding="utf-8"))

    # ------------------------------------------------------------------ summary and status
    def summary(self) -> dict:
        """summary.json ({} before a run wrote one)."""
        return self.read_json(SUMMARY_FILE, {}) or {}

    def write_summary(self, summary: dict) -> None:
        self.write_json(SUMMARY_FILE, summary)

    def update_summary(self, **fields) -> dict:
        """Merge `fields` into summary.json and return the result."""
        summary = {**self.summary(), **fields}
        self.write_summary(summary)
        return summary

    @property
    def status(self) -> str | None:
        return self.summary().get("status")

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> list[dict]:
        """Every record of metrics.jsonl (across resumes), in order."""
        path = self.file(METRICS_FILE)
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def append_metrics(self, record: dict) -> None:
        if is_rank_zero():
            with self.file(METRICS_FILE).open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, default=float) + "\n")

    def trim_metrics(self, step: int) -> None:
        """Drop records logged after `step` (work lost when a run died after its last checkpoint)."""
        kept = [r for r in self.metrics() if r.get("step", 0) <= step]
        self.write_text(METRICS_FILE, "".join(json.dumps(r, default=float) + "\n" for r in kept))

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> list[Path]:
        """checkpoint-N folders, by step (complete or not)."""
        found = [p for p in self.path.glob("checkpoint-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
        return sorted(found, key=checkpoint_step)

    def latest_checkpoint(self) -> Path | None:
        """The newest complete checkpoint (partial ones left by a kill are skipped)."""
        complete = [p for p in self.checkpoints() if checkpoint_is_complete(p)]
        return complete[-1] if complete else None

    def set_aside_incomplete_checkpoints(self) -> list[Path]:
        """Rename half-written checkpoints to incomplete-checkpoint-N so a resumed run can save that step
        again. They are kept (never deleted): nothing in a run directory is thrown away."""
        moved = []
        for ckpt in self.checkpoints():
            if not checkpoint_is_complete(ckpt):
                target = ckpt.with_name(f"incomplete-{ckpt.name}")
                n = 1
                while target.exists():
                    n += 1
                    target = ckpt.with_name(f"incomplete-{ckpt.name}-{n}")
                ckpt.rename(target)
                moved.append(target)
        return moved

    # ------------------------------------------------------------------ what was trained
    def config(self):
        """The resolved config the run was trained with."""
        from .config import load_config

        return load_config(self.file(CONFIG_FILE))

    def model_spec(self, config=None):
        """The entry of `models` this run trained (named in summary.json)."""
        config = config or self.config()
        name = self.summary().get("model")
        spec = next((m for m in config.models if m.name == name), None)
        if spec is None and name is None and len(config.models) == 1:
            spec = config.models[0]
        if spec is None:
            raise DpokitError(f"RUN_DIR: {self.path} does not say which model it trained (summary.json names "
                              f"{name!r}; the config has {[m.name for m in config.models]})")
        return spec

    def require_adapter(self) -> Path:
        """The trained adapter's folder, or a DpokitError saying the run has none."""
        if not (self.adapter_dir / "adapter_config.json").exists():
            raise DpokitError(f"RUN_DIR: {self.path} has no trained adapter (adapter/adapter_config.json); "
                              "give the directory of a completed `dpokit train` run")
        return self.adapter_dir

    def load_trained(self, device: str | None = None):
        """(PeftModel with the run's adapter, tokenizer), in eval mode on `device` (default: the GPU if
        there is one, else the CPU). With the adapter switched off it is the base model."""
        import torch
        from peft import PeftModel

        from .models import load_model, load_tokenizer

        adapter = self.require_adapter()
        spec = self.model_spec()
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        tokenizer = load_tokenizer(spec.huggingface_id, spec.trust_remote_code)
        base = load_model(spec.huggingface_id, spec.trust_remote_code, device=device)
        return PeftModel.from_pretrained(base, str(adapter)).eval(), tokenizer

    def heldout(self, n: int, config=None):
        """Up to `n` rows never trained on (dpokit.data.heldout_rows of the run's config)."""
        from .data import heldout_rows

        return heldout_rows(config or self.config(), n)


def find_runs(output_root: str | Path) -> list[RunDir]:
    """The run directories directly under `output_root`, oldest first."""
    root = Path(output_root).expanduser()
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and RunDir(p).is_run()]
    return sorted(runs, key=lambda r: r.path.stat().st_mtime)
