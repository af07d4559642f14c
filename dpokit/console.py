"""Console output of a (possibly multi-process) run: only the main process speaks."""

from __future__ import annotations

import os


def is_rank_zero() -> bool:
    """True in a single process and in the main process of a multi-process (DDP) launch."""
    return int(os.environ.get("RANK", "0")) == 0


def say(msg: str = "") -> None:
    """Print `msg` (flushed) from the main process only."""
    if is_rank_zero():
        print(msg, flush=True)
