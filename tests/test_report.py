"""Plots of every run, and the comparison report of a batch or a sweep."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dpokit.testing import small_run_config as tiny_config

from dpokit.cli import main
from dpokit.report import PLOTS, comparison_figures, run_figures, write_report
from dpokit.run import batch_records, train

CORE_PLOTS = {"loss", "rewards", "margins", "accuracy", "learning_rate", "grad_norm"}


@pytest.fixture(scope="module")
def batch(tiny_llama_dir, tiny_gpt2_dir, pairs_file, tmp_path_factory):
    """A two-model batch whose second model fails (its weights file is damaged): output root + results."""
    import shutil

    root = tmp_path_factory.mktemp("batch")
    broken = root / "broken-gpt2"
    shutil.copytree(tiny_gpt2_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    models = [{"name": "tiny-llama", "huggingface_id": str(tiny_llama_dir)},
              {"name": "tiny-gpt2", "huggingface_id": str(broken), "lora": {"target_modules": ["c_attn"]}}]
    config = tiny_config(tiny_llama_dir, pairs_file, root, models=models, training={"max_steps": 3})
    return Path(config.training.output_dir), train(config)


@pytest.fixture(scope="module")
def sweep(tiny_llama_dir, pairs_file, tmp_path_factory):
    """Two runs of one model that differ only in beta, each with an eval.json as evaluate_run writes it."""
    root = tmp_path_factory.mktemp("sweep")
    runs = []
    for beta, trained_score in ((0.1, 50.0), (0.5, 25.0)):
        config = tiny_config(tiny_llama_dir, pairs_file, root, post_training={"beta": beta})
        [result] = train(config)
        run = Path(result.run_dir)
        samples = [{"prompt": "What is 2 + 2? Reply with just the number.", "base": "2 + 2 = 4.",
                    "trained": "4" if beta == 0.1 else "Four"},
                   {"prompt": "Capital of France, one word.", "base": "The capital is Paris.", "trained": "Paris"}]
        (run / "eval.json").write_text(json.dumps({
            "run_dir": str(run), "num_prompts": 2, "max_new_tokens": 16, "task": "embedded:instruct-tasks",
            "base_score": 0.0, "trained_score": trained_score, "improvement": trained_score,
            "per_family": {"number_only": {"base": 0.0, "trained": trained_score}},
            "wins": 1, "ties": 1, "losses": 0,
            "outside_task": {"prompts": 4, "base_correct": 3, "trained_correct": 3, "lost": 0, "kept": 3,
                             "degenerate": 0, "rows": []},
            "samples": samples}))
        runs.append(run)
    return Path(config.training.output_dir), runs


def image_links(page: Path) -> list[Path]:
    return [page.parent / link for link in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", page.read_text())]


def test_every_run_saves_png_plots_with_labelled_axes(batch):
    _, results = batch
    run = Path(results[0].run_dir)
    pngs = {p.stem: p for p in (run / "plots").glob("*.png")}
    assert CORE_PLOTS <= set(pngs)
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000 for p in pngs.values())
    summary = json.loads((run / "summary.json").read_text())
    assert {Path(p).stem for p in summary["plots"]} == set(pngs)
    for name, fig in run_figures(run).items():
        ax = fig.axes[0]
        assert ax.get_xlabel() == "optimizer step" and ax.get_ylabel() and ax.get_title(), name
    units = {s.name: s.ylabel for s in PLOTS}
    assert "nats" in units["loss"] and "nats" in units["rewards"] and "fraction" in units["accuracy"]


def test_multi_model_batch_ends_with_one_report_next_to_its_summary(batch):
    root, results = batch
    assert [r.status for r in results] == ["completed", "failed"]
    [record] = batch_records(root)  # the batch's own folder: a later batch into root gets another one
    page = record / "report.md"
    assert (record / "batch_summary.json").exists() and page.exists()
    text = page.read_text()
    rows = [line for line in text.splitlines() if line.startswith("| tiny-")]
    assert rows[0].startswith("| tiny-llama | completed") and rows[1].startswith("| tiny-gpt2 | failed")
    assert "cannot load" in rows[1]  # the failure's reason is in the table
    links = image_links(page)
    assert {p.stem for p in links} >= CORE_PLOTS and all(p.exists() for p in links)
    assert "## Glossary" in text and "reward = β × (log p_policy" in text


def test_sweep_report_labels_runs_by_the_setting_that_differs_and_overlays_their_curves(sweep, tmp_path):
    root, runs = sweep
    assert main(["report", str(root)]) == 0  # a folder of runs stands for all of them
    page = root / "report.md"
    text = page.read_text()
    assert "| tiny (beta=0.1) | completed" in text and "| tiny (beta=0.5) | completed" in text
    margins = [p for p in image_links(page) if p.stem == "margins"]
    assert margins and margins[0].exists()
    lines = comparison_figures(runs)["margins"].axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["tiny (beta=0.1)", "tiny (beta=0.5)"]


def test_report_puts_before_after_answers_and_judge_scores_side_by_side(sweep, tmp_path):
    _, runs = sweep
    page = write_report(runs, tmp_path / "compare" / "report.md")
    text = page.read_text()
    assert "## Before / after" in text
    assert "| tiny (beta=0.1) | 2 | 0.0% | 50.0% | 1 / 1 / 0 |" in text
    assert "| tiny (beta=0.5) | 2 | 0.0% | 25.0% | 1 / 1 / 0 |" in text
    header = next(line for line in text.splitlines() if line.startswith("| prompt |"))
    assert header == "| prompt | base (tiny) | trained: tiny (beta=0.1) | trained: tiny (beta=0.5) |"
    row = next(line for line in text.splitlines() if line.startswith("| What is 2 + 2?"))
    assert "`2 + 2 = 4.`" in row and "`4`" in row and "`Four`" in row
    assert all(p.exists() for p in image_links(page))  # links are relative to the page, wherever it is
