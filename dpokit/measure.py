"""Peak memory and speed of a training run, measured in a child process.

A child process, because a process's peak memory only ever grows: `measure_run` starts
`python -m dpokit.measure CONFIG OUTPUT_DIR RESULT_JSON`, which trains once and writes its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any


def measure_run(config, overrides: dict[str, Any] | None = None, output_dir: str | Path | None = None,
                timeout: float = 3600) -> dict[str, Any]:
    """Train `config` (+ overrides) in a fresh Python process; report its peak memory and speed.

    Returns peak_rss_mb (the whole process: libraries, weights, activations), rss_after_imports_mb,
    cuda_peak_mb on a GPU, step_s, and status: "completed", "out of memory" (CUDA), "killed" (SIGKILL,
    on Linux usually the kernel's out-of-memory killer) or "crashed", with the error. A failure is a
    result here, not an exception. Only training is measured: the end-of-run answers and benchmarks the
    config may ask for (evaluation) are switched off, so they neither add minutes nor count in the peak."""
    from .config import load_config

    cfg = load_config(data=config.model_dump(mode="json"),
                      overrides={**(overrides or {}), "evaluation.enabled": False, "evaluation.benchmarks": []})
    out = str(output_dir or cfg.training.output_dir)
    with tempfile.TemporaryDirectory(prefix="dpokit-measure-") as work:
        config_path, result_path = Path(work) / "config.yaml", Path(work) / "result.json"
        config_path.write_text(cfg.to_yaml(), encoding="utf-8")
        proc = subprocess.run([sys.executable, "-m", "dpokit.measure", str(config_path), out, str(result_path)],
                              capture_output=True, text=True, timeout=timeout,
                              env=dict(os.environ, TQDM_DISABLE="1"))
        if result_path.exists():
            result = json.loads(result_path.read_text(encoding="utf-8"))
        else:
            tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
            status = "killed" if proc.returncode == -9 else "crashed"
            result = {"status": status, "error": f"exit status {proc.returncode} ({status}): {tail}"}
    return dict(result, overrides=dict(overrides or {}))


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
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
                              "rss_after_imports_mb": round(after_imports, 1), "peak_rss_mb": round(peak_rss_mb(), 1),
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


if __name__ == "__main__":  # python -m dpokit.measure CONFIG OUTPUT_DIR RESULT_JSON (used by measure_run)
    if len(sys.argv) != 4:
        sys.exit("usage: python -m dpokit.measure CONFIG.yaml OUTPUT_DIR RESULT.json")
    sys.exit(_measure_child(*sys.argv[1:]))
