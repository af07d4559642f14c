"""`dpokit train`, taking turns with other benchmark processes one optimizer step at a time.

    python benchmarks/dpokit_timed.py train --config C.yaml [more dpokit arguments]

Started by `common.Turnstile`: the callback that takes turns (and reports each batch's shape)
is added to the trainer dpokit builds, so the run goes through the CLI exactly as a user's does:
config checks, data loading, truncation, callbacks, checkpoints, run records.
With BENCH_FULL_LM_HEAD=1 the LM head scores every position, as TRL does by default on CPU
(to measure what scoring only the completion tokens saves).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class _Unchanged:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> int:
    import dpokit.trainers as trainers
    import dpokit.trl_hooks as trl_hooks
    from common import record_batches, turnstile_callback
    from dpokit.cli import main as dpokit_main

    callback = turnstile_callback()
    build = trainers.build_trainer

    def build_measured(*args, **kwargs):
        trainer = build(*args, **kwargs)
        if callback is not None:
            trainer.add_callback(callback)
            record_batches(trainer, callback)
        return trainer

    trainers.build_trainer = build_measured  # run.py imports it from dpokit.trainers when a run starts
    if os.environ.get("BENCH_FULL_LM_HEAD") == "1":
        trl_hooks.completion_tokens_only = _Unchanged
    return dpokit_main(sys.argv[1:])


if __name__ == "__main__":
    raise SystemExit(main())
