"""Shared pieces of the benchmarks: deterministic data, a step timer, subprocess runs, results.

Every benchmark measures in fresh subprocesses (so one run's memory or thread state cannot
leak into the next) and merges its figures into `benchmarks/results/latest.json`.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results" / "latest.json"
PYTHON = sys.executable

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from dpokit.files import atomic_write_text  # noqa: E402  (re-exported for the benchmark scripts)

_CAPITALS = [("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Egypt", "Cairo"), ("Peru", "Lima"),
             ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Norway", "Oslo"), ("Chile", "Santiago"),
             ("Spain", "Madrid"), ("Greece", "Athens"), ("Russia", "Moscow"), ("Cuba", "Havana")]
_WORDS = ["marble", "harbour", "lantern", "meadow", "copper", "falcon", "velvet", "orchard", "glacier", "pepper"]
_FILLER = ["Sure! Here is my answer.", "Let me think about this carefully.", "That is a great question.",
           "I hope this helps, and feel free to ask more.", "There are several things to consider here.",
           "To be precise and complete, I will explain it step by step.", "Many people find this confusing."]


def preference_rows(n: int, seed: int = 0) -> list[dict]:
    """`n` short instruction-following pairs (a compliant answer vs a verbose or wrong one).

    The same shape as the embedded task data: a checkable instruction, a short chosen answer,
    a rejected answer whose length varies (so padding and length grouping have something to do).
    """
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        kind = i % 3
        ramble = " ".join(rng.sample(_FILLER, rng.randint(0, 4)))
        if kind == 0:
            a, b = rng.randint(2, 60), rng.randint(2, 60)
            prompt = f"What is {a} + {b}? Reply with just the number."
            chosen, wrong = str(a + b), str(a + b + rng.choice([-2, -1, 1, 10]))
            rejected = f"{ramble} {a} plus {b} equals {wrong}.".strip() if ramble else wrong
        elif kind == 1:
            country, city = rng.choice(_CAPITALS)
            prompt = f"What is the capital of {country}? Answer with one word."
            chosen = city
            rejected = f"{ramble} The capital of {country} is {city}, a large and historic city.".strip()
        else:
            word = rng.choice(_WORDS)
            prompt = f"Write the word '{word}' in capital letters and nothing else."
            chosen = word.upper()
            rejected = f"{ramble} Here it is: {word.capitalize()}!".strip()
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_python(args: list[str], timeout: float = 900, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS` in a fresh process (offline, quiet); raise with its output's tail if it fails."""
    proc = subprocess.run([PYTHON, *args], cwd=ROOT, env=child_env(env), capture_output=True, text=True,
                          timeout=timeout)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-25:])
        raise RuntimeError(f"`python {' '.join(args)}` failed (exit {proc.returncode}):\n{tail}")
    return proc


THREADS_ENV = "BENCH_THREADS"


def bench_threads() -> int:
    """Threads per benchmark process: BENCH_THREADS, default 1 (stable figures on a shared machine)."""
    return int(os.environ.get(THREADS_ENV, "1"))


def child_env(extra: dict | None = None) -> dict:
    """Environment of a measured child process: offline, quiet, a fixed thread count."""
    n = str(bench_threads())
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "TQDM_DISABLE": "1",
            "OMP_NUM_THREADS": n, "MKL_NUM_THREADS": n,
            "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(extra or {})}


class TurnTaker:
    """The child side of a `Turnstile`: `wait()` blocks until the orchestrator says go; `turn(info)`
    reports the work done since then (with its CPU time) and waits for the next go."""

    def __init__(self, address: str, name: str):
        from multiprocessing.connection import Client

        self.conn = Client(address, authkey=b"dpokit-bench")
        self.conn.send(("hello", name))
        self._cpu = time.process_time()

    @classmethod
    def from_env(cls) -> "TurnTaker | None":
        """Connected to the Turnstile that started this process, or None outside a benchmark."""
        address = os.environ.get("BENCH_TURNSTILE")
        return cls(address, os.environ.get("BENCH_NAME", "?")) if address else None

    def wait(self) -> None:
        self.conn.recv()  # "go"
        self._cpu = time.process_time()

    def turn(self, info: dict | None = None, kind: str = "step") -> None:
        self.conn.send((kind, {"cpu_s": time.process_time() - self._cpu, **(info or {})}))
        if kind == "done":
            self.conn.close()
        else:
            self.wait()


def turnstile_callback():
    """A TrainerCallback that lets a benchmark orchestrator run one optimizer step at a time.

    Several training processes take turns: each waits at the start of a step until it is told
    to go, so all of them see the same machine load, step after step (see `Turnstile`). It also
    reports the CPU time of the step and the batch shape (tokens, padding, completion tokens).
    Returns None when the process was not started by a Turnstile.
    """
    taker = TurnTaker.from_env()
    if taker is None:
        return None
    from transformers import TrainerCallback

    class TakeTurns(TrainerCallback):
        batch: dict = {}

        def on_step_begin(self, args, state, control, **kw):
            if state.global_step > 0:
                taker.turn(TakeTurns.batch)
            else:
                taker.wait()

        def on_train_end(self, args, state, control, **kw):
            taker.turn(TakeTurns.batch, kind="done")

    return TakeTurns()


def record_batches(trainer, callback) -> None:
    """Wrap `trainer.training_step` so `callback` reports the shape of each step's batch."""
    step = trainer.training_step

    def training_step(model, inputs, *args, **kwargs):
        ids, mask = inputs["input_ids"], inputs["attention_mask"]
        type(callback).batch = {"rows": int(ids.shape[0]), "seq_len": int(ids.shape[1]),
                                "tokens": int(mask.sum()), "scored": int(inputs["completion_mask"].sum())}
        return step(model, inputs, *args, **kwargs)

    trainer.training_step = training_step


class Turnstile:
    """Run training processes step by step in turn and time each step from outside.

    `Turnstile({"a": argv_a, "b": argv_b}).run()` starts them all, waits until each is ready
    (e.g. at the start of its first step), then lets one turn of each run at a time (a, b, a, b,
    ...). A turn's wall time runs from "go" to the process' next report, so for a training step
    logging, checkpoints and loading the next batch count. Returns {name: [per-turn dicts with
    wall_s, cpu_s and what the process reported]}.
    """

    def __init__(self, commands: dict[str, list[str]], env: dict | None = None, timeout: float = 1800):
        self.commands, self.env, self.timeout = commands, env or {}, timeout

    def run(self) -> dict[str, list[dict]]:
        import tempfile
        from multiprocessing.connection import Listener

        work = Path(tempfile.mkdtemp(prefix="dpokit-bench-"))
        address = str(work / "turnstile.sock")
        procs, conns, steps = {}, {}, {name: [] for name in self.commands}
        with Listener(address, authkey=b"dpokit-bench") as listener:
            for name, argv in self.commands.items():
                env = child_env({**self.env.get(name, {}), "BENCH_TURNSTILE": address, "BENCH_NAME": name})
                log = open(work / f"{name}.log", "w")
                procs[name] = subprocess.Popen([PYTHON, *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            deadline = time.time() + self.timeout
            for _ in self.commands:
                conn = listener.accept()
                kind, name = conn.recv()
                conns[name] = conn
            active = list(self.commands)
            while active:
                for name in list(active):
                    conn = conns[name]
                    start = time.perf_counter()
                    conn.send("go")
                    if not conn.poll(max(1.0, deadline - time.time())):
                        raise RuntimeError(f"benchmark process {name} stopped answering; log: {work / (name + '.log')}")
                    kind, info = conn.recv()
                    steps[name].append({"wall_s": time.perf_counter() - start, **info})
                    if kind == "done":
                        active.remove(name)
                        if procs[name].wait(timeout=600) != 0:
                            tail = (work / f"{name}.log").read_text()[-3000:]
                            raise RuntimeError(f"benchmark process {name} failed:\n{tail}")
        shutil.rmtree(work, ignore_errors=True)  # kept when something failed: the logs are there
        return steps


def median(values) -> float:
    return float(statistics.median(values))


def machine() -> dict:
    """What the figures were measured on."""
    import torch

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "load_avg_at_start": load}


def merge_results(figures: dict, path: Path = RESULTS) -> dict:
    """Merge `figures` into latest.json (written atomically) and return the whole record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.exists() else {}
    record.update(figures)
    atomic_write_text(path, json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def say(msg: str = "") -> None:
    print(msg, flush=True)
