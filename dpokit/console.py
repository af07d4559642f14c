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


def bars_off() -> bool:
    """True when TQDM_DISABLE asks for no progress bars. tqdm's notebook bars (tqdm.auto in Jupyter) do not
    read it themselves, and an executed notebook would keep each bar as a frozen "0%" line."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in ("", "0", "false", "no")


def apply_bars_setting() -> bool:
    """With TQDM_DISABLE set, switch off the progress bars of datasets, transformers and huggingface_hub
    too (loading weights, tokenizing, writing shards): in Jupyter they are notebook widgets that do not read
    TQDM_DISABLE, and an executed notebook keeps each one as a frozen "0%" line. Returns whether bars are off."""
    if not bars_off():
        return False
    import datasets
    import transformers
    from huggingface_hub.utils import disable_progress_bars

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    disable_progress_bars()
    return True
