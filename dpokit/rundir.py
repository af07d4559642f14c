"""A run directory: where each file of a run lives, atomic reads and writes, its status, and
loading what it trained.

Every module that reads or writes a run (training, evaluation, sweeps, reports, export, chat)
goes through `RunDir`, so a run is found, read and loaded the same way everywhere. Only the
main process of a multi-process run writes.
"""

from __future__ import annotations

import json
import os
import socket
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
        return cls(fresh_dir(output_root, f"{model_name}-{method}"))

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
        """The parsed file, or `default` when it does not exist; a damaged file is a DpokitError naming it."""
        path = self.file(name)
        if not path.exists():
            return default
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DpokitError(f"{path}: damaged ({_reason(e)}); this run's record cannot be read. Restore the file "
                              "or train again (nothing was changed)") from None

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

    def mark_running(self, **fields) -> dict:
        """Record that this process trains the run now (pid, host, start), keeping the rest of the summary."""
        return self.update_summary(status="running", process=this_process(), **fields)

    def stale_reason(self) -> str | None:
        """Why a run whose summary says `running` is not running any more (killed outright, out of disk ...),
        or None when it is not `running` or its process is still alive (or on another machine)."""
        summary = self.summary()
        if summary.get("status") != "running":
            return None
        proc = summary.get("process") or {}
        if proc.get("host") not in (None, socket.gethostname()):
            return None  # cannot see another machine's processes
        if process_alive(proc.get("pid"), proc.get("started")):
            return None
        return (f"its summary says 'running' but process {proc.get('pid', '?')} that trained it is gone "
                "(killed outright, out of memory or disk?)")

    def effective_status(self) -> str | None:
        """The summary's status, or 'stale' for a `running` run whose process is gone."""
        return "stale" if self.stale_reason() else self.status

    # ------------------------------------------------------------------ metrics
    def metrics(self) -> list[dict]:
        """Every record of metrics.jsonl (across resumes), in order. A half-written last line (a process
        killed while appending) is left out; a damaged line elsewhere is a DpokitError naming it."""
        path = self.file(METRICS_FILE)
        if not path.exists():
            return []
        try:
            lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                     if line.strip()]
        except UnicodeDecodeError as e:
            raise DpokitError(f"{path}: damaged ({_reason(e)})") from None
        records = []
        for i, (n, line) in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                if i == len(lines) - 1 and not path.read_text(encoding="utf-8").endswith("\n"):
                    break  # the last record was being written when the process died
                raise DpokitError(f"{path}:{n}: damaged ({e.msg}); remove or repair that line") from None
        return records

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
        """The trained adapter's folder, or a DpokitError saying the run has none (and, for a run whose
        process is gone before it saved one, how to continue it)."""
        if self.stale_reason() and not self.adapter_dir.exists():
            raise DpokitError(f"--run: {self.path} was not finished: {self.stale_reason()}. Continue it with "
                              f"`dpokit train --resume {self.path}` first")
        if not (self.adapter_dir / "adapter_config.json").exists():
            raise DpokitError(f"RUN_DIR: {self.path} has no trained adapter (adapter/adapter_config.json); "
                              "give the directory of a completed `dpokit train` run")
        return self.adapter_dir

    def load_trained(self, device: str | None = None, trust_remote_code: bool = False, quantized: bool = True):
        """(PeftModel with the run's adapter, tokenizer), in eval mode on `device` (default: the GPU if
        there is one, else the CPU), in the dtype the run trained in (its model_loading.dtype, auto following
        training.bf16 / fp16) with its attention kernel. With the adapter switched off it is the base model.
        A QLoRA run's base is loaded quantized as it trained (`quantized=False`: the unquantized base in the
        model dtype, what a merged export is made from).

        A run directory may come from someone else: its `trust_remote_code: true` is not inherited, the
        caller must pass `trust_remote_code=True` (the CLI's --trust-remote-code) to let the model's code run."""
        import torch
        from peft import PeftModel

        from .models import load_for_config, load_model, load_tokenizer
        from .scaling import config_model_dtype

        adapter = self.require_adapter()
        config = self.config()
        spec = self.model_spec(config)
        if spec.trust_remote_code and not trust_remote_code:
            raise DpokitError(f"{self.path}: its model {spec.huggingface_id} runs its own Python code "
                              "(trust_remote_code: true in its resolved_config.yaml). A run directory does not pass "
                              "that trust on: add --trust-remote-code (Python: trust_remote_code=True) if you trust "
                              f"{spec.huggingface_id}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        cuda_devices = torch.cuda.device_count() if device.startswith("cuda") else 0
        tokenizer = load_tokenizer(spec.huggingface_id, spec.trust_remote_code)
        if quantized and config.quantization.load_in != "none":
            base = load_for_config(config, spec.huggingface_id, spec.trust_remote_code, cuda_devices, reference=True)
        else:
            base = load_model(spec.huggingface_id, spec.trust_remote_code, config_model_dtype(config, cuda_devices),
                              device=device, attn_implementation=config.model_loading.attn_implementation)
        try:
            model = PeftModel.from_pretrained(base, str(adapter))
        except Exception as e:  # truncated safetensors, invalid adapter_config.json, wrong shapes ...
            raise DpokitError(f"{adapter}: the adapter cannot be loaded ({type(e).__name__}: {_reason(e)}); the "
                              "file is damaged or belongs to another model. Use the run's checkpoint-N/ or train "
                              "again") from None
        return model.eval(), tokenizer

    def heldout(self, n: int, config=None):
        """Up to `n` rows never trained on (dpokit.data.heldout_rows of the run's config)."""
        from .data import heldout_rows

        return heldout_rows(config or self.config(), n)


def fresh_dir(parent: str | Path, prefix: str) -> Path:
    """Create and return a new folder `<prefix>-<YYYYmmdd-HHMMSS>[-N]` under `parent`; an existing one (made
    by an earlier or a concurrent process) is never reused."""
    parent = Path(parent).expanduser()
    parent.mkdir(parents=True, exist_ok=True)
    base = f"{prefix}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for i in range(1, 1000):
        candidate = parent / (base if i == 1 else f"{base}-{i}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a fresh folder {base}-N under {parent}")


def this_process() -> dict:
    """What identifies this process later: pid, host and its start time (pids are reused)."""
    import psutil

    pid = os.getpid()
    return {"pid": pid, "host": socket.gethostname(), "started": round(psutil.Process(pid).create_time(), 2)}


def process_alive(pid: int | None, started: float | None) -> bool:
    """True if the process `pid` that started at `started` still runs on this machine."""
    import psutil

    if not pid:
        return False
    try:
        proc = psutil.Process(int(pid))
        return started is None or abs(proc.create_time() - float(started)) < 1.0
    except psutil.AccessDenied:  # it exists, under another user
        return True
    except (psutil.NoSuchProcess, ValueError):
        return False


def _reason(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def find_runs(output_root: str | Path) -> list[RunDir]:
    """The run directories directly under `output_root`, oldest first."""
    root = Path(output_root).expanduser()
    if not root.is_dir():
        return []
    runs = [RunDir(p) for p in root.iterdir() if p.is_dir() and RunDir(p).is_run()]
    return sorted(runs, key=lambda r: r.path.stat().st_mtime)
