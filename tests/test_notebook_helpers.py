"""The helpers every lesson imports (dpokit.notebook)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import dpokit.notebook, datasets, transformers
from huggingface_hub.utils import are_progress_bars_disabled
print(datasets.is_progress_bar_enabled(), transformers.utils.logging.is_progress_bar_enabled(),
      not are_progress_bars_disabled())
"""


@pytest.mark.parametrize("setting, bars", [("1", "False False False"), ("", "True True True")])
def test_tqdm_disable_reaches_the_libraries_bars_in_a_lesson(setting, bars):
    # in Jupyter the libraries draw notebook widgets that ignore TQDM_DISABLE; an executed lesson kept each
    # one ("Loading weights", "Tokenizing train dataset", ...) as a frozen "0%" line
    env = {k: v for k, v in os.environ.items() if "PROGRESS_BARS" not in k}  # the libraries' own switches win
    env["TQDM_DISABLE"] = setting
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[-3:] == bars.split()
