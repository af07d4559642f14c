"""The guide's tips and the verdict records the lessons display and benchmarks/guide_check.py collects."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dpokit.guide import MIME_TYPE, TIP_IDS, TIPS, Verdict, collect, tip, verdicts_markdown
from dpokit.stats import CONFIRMED, NOT_TESTABLE

ROOT = Path(__file__).resolve().parents[1]


def test_every_tip_has_a_unique_id_and_text():
    assert len(TIP_IDS) == len(set(TIP_IDS)) >= 26
    assert all(t.text and t.section for t in TIPS)


def test_unknown_tip_is_refused_with_the_known_ids():
    with pytest.raises(KeyError, match="known: beta-low"):
        tip("beta-lo")


def test_verdict_must_be_one_of_the_kinds():
    with pytest.raises(ValueError, match="not one of"):
        Verdict("beta-low", "probably", "", "")


def test_not_testable_verdict_is_never_counted_as_measured():
    assert Verdict("model-large", NOT_TESTABLE, "", "one model size", measured=True).measured is False


def _executed_notebook(path: Path, verdicts: list[Verdict], name: str) -> Path:
    from dataclasses import asdict

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("show_verdicts(...)")
    cell.outputs = [nbformat.v4.new_output("display_data", data={
        MIME_TYPE: {"notebook": name, "verdicts": [asdict(v) for v in verdicts]},
        "text/markdown": verdicts_markdown(verdicts)})]
    nb.cells.append(cell)
    nbformat.write(nb, path)
    return path


def test_verdicts_are_read_back_from_an_executed_notebook(tmp_path):
    v = Verdict("beta-low", CONFIRMED, "d 3.1 [2.0, 4.2] vs 1.0 [0.5, 1.5]", "smaller β learns faster", "03 §3")
    path = _executed_notebook(tmp_path / "03.ipynb", [v], "03_tuning_beta")
    [payload] = collect(json.loads(path.read_text()))
    assert payload["notebook"] == "03_tuning_beta" and payload["verdicts"][0]["tip"] == "beta-low"


def test_guide_check_script_writes_a_row_for_every_tip(tmp_path):
    v = Verdict("beta-low", CONFIRMED, "d 3.1 [2.0, 4.2]", "smaller β learns faster", "03 §3")
    _executed_notebook(tmp_path / "03_tuning_beta.ipynb", [v], "03_tuning_beta")
    out = tmp_path / "guide_check.md"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "guide_check.py"), str(tmp_path), "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    for t in TIPS:
        assert t.text in text
    assert "no notebook has tested this tip" in text  # the tips this fake run did not cover are named as such
    assert "d 3.1 [2.0, 4.2]" in text


def test_guide_check_states_what_the_recorded_runs_cost_from_scratch(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from guide_check import recorded_cost

    results = tmp_path / "guide_runs.jsonl"
    assert "trains every lesson run" in recorded_cost(results)  # no file yet: everything is trained
    rows = [{"kind": "base", "key": "b"}, {"kind": "run", "wall_s": 1800.0, "load_start": 1.0, "cpus": 2},
            {"kind": "run", "wall_s": 5400.0, "load_start": 3.0, "cpus": 2}]
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    sentence = recorded_cost(results)
    assert "2 recorded lesson runs: 2.0 h" in sentence and "load average when they started 3.0 on 2 CPUs" in sentence
