"""Experiments over seeds: each finished run is recorded at once, a re-run skips it, and the summaries
carry intervals. Real (tiny) trainings through the same code path as the lessons."""

from __future__ import annotations

import json

import pytest

from dpokit.experiment import (append_result, config_key, read_results, run_experiment, task_size_point,
                               write_task_rows)
from dpokit.experiment_summary import summarise
from dpokit.stats import Estimate


@pytest.fixture
def tiny_task_config(tiny_llama_dir, tmp_path):
    from dpokit.config import load_config

    return load_config(data={
        "models": [{"name": "tiny", "huggingface_id": str(tiny_llama_dir)}],
        "dataset": {"name": "embedded:instruct-tasks", "validation_split": 0.0, "max_samples": 16},
        "post_training": {"use_ref_model": False},
        "lora": {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]},
        "training": {"max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
                     "learning_rate": 1e-3, "warmup_steps": 0, "logging_steps": 1, "save_steps": 2,
                     "gradient_checkpointing": False, "max_seq_length": 128, "max_prompt_length": 96,
                     "max_completion_length": 32},
        "logging": {"report_to": ["none"]}, "seed": 0,
        # what the quickstart asks for at the end of a run; the sweeps judge runs themselves and skip it
        "evaluation": {"enabled": True, "benchmarks": ["ifeval"], "benchmark_limit": 2}})


def test_each_run_is_recorded_and_a_rerun_reads_it_back(tiny_task_config, tmp_path, monkeypatch):
    results = tmp_path / "results.jsonl"
    points = [{"training.learning_rate": 1e-3}, {"training.learning_rate": 1e-4}]
    first = run_experiment(tiny_task_config, points, [0], results, tmp_path / "runs", num_prompts=2, max_new_tokens=4)
    assert [r["status"] for r in first] == ["completed", "completed"]
    kinds = [r["kind"] for r in read_results(results)]
    assert kinds.count("run") == 2 and kinds.count("base") == 1  # the base model answered once for the seed
    record = first[0]
    assert record["learning_rate"] == 1e-3 and record["seed"] == 0 and len(record["passed"]) == 2
    assert record["outside_prompts"] == 18 and record["curves"][0]["step"] == 1
    assert record["pairs_seen"] == 4 and record["effective_batch"] == 2 and record["update_norm"] > 0
    from pathlib import Path

    run_files = {p.name for r in first for p in Path(r["run_dir"]).iterdir()}
    assert "bench_ifeval.json" not in run_files and "eval.json" not in run_files  # neither benchmark nor answers

    import dpokit.run

    monkeypatch.setattr(dpokit.run, "train", lambda *a, **k: pytest.fail("a recorded run was trained again"))
    again = run_experiment(tiny_task_config, points, [0], results, tmp_path / "runs", num_prompts=2, max_new_tokens=4)
    assert [r["key"] for r in again] == [r["key"] for r in first]


def test_a_different_evaluation_setting_is_a_different_run(tiny_task_config):
    assert config_key(tiny_task_config, num_prompts=60) != config_key(tiny_task_config, num_prompts=30)
    moved = tiny_task_config.model_copy(deep=True)
    moved.training.output_dir = "/elsewhere"
    assert config_key(moved, num_prompts=60) == config_key(tiny_task_config, num_prompts=60)


def test_a_line_cut_short_by_a_killed_process_is_skipped(tmp_path):
    path = tmp_path / "r.jsonl"
    append_result(path, {"kind": "run", "key": "a"})
    with path.open("a") as f:
        f.write('{"kind": "run", "key": "b", "seed"')
    assert [r["key"] for r in read_results(path)] == ["a"]


def test_generated_task_rows_share_no_prompt_with_the_heldout_set(tmp_path):
    from dpokit.tasks import build_task_rows

    path = write_task_rows(tmp_path, seed=3, n=500)
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    _, held = build_task_rows(seed=3, n_train=360, n_heldout=60)
    assert len(rows) == 500 and set(rows[0]) == {"prompt", "chosen", "rejected"}
    assert not {r["prompt"] for r in rows} & {h["prompt"] for h in held}
    assert task_size_point(360) == {} and task_size_point(1000) == {"task_rows": 1000}


def test_summary_pools_prompts_for_pass_rates_and_uses_seeds_for_the_rest():
    records = [{"kind": "run", "status": "completed", "learning_rate": 1e-4, "seed": s, "passed": p, "base_passed": [False] * 4,
                "trained_rate": sum(p) / 4, "base_rate": 0.0, "d": d, "outside_lost": 1, "outside_base_correct": 18,
                "newly_degenerate": 0, "prompts": 4}
               for s, p, d in ((0, [True, True, False, False], 2.0), (1, [True, False, False, False], 3.0),
                               (2, [True, True, True, False], 4.0))]
    table = summarise(records, "learning_rate")
    row = table.loc[1e-4]
    assert isinstance(row["pass"], Estimate) and row["pass"].n == 12 and row["pass"].value == pytest.approx(0.5)
    assert row["d"].value == pytest.approx(3.0) and row["d"].kind == "t" and row["d"].n == 3
    assert row["outside_lost_total"] == 3 and row["completed"] == 3


def test_read_back_only_leaves_out_what_was_never_run(tiny_task_config, tmp_path, monkeypatch):
    import dpokit.run

    monkeypatch.setattr(dpokit.run, "train", lambda *a, **k: pytest.fail("trained although train_missing=False"))
    out = run_experiment(tiny_task_config, [{"training.learning_rate": 1e-3}], [0], tmp_path / "r.jsonl", tmp_path / "runs",
                         num_prompts=2, max_new_tokens=4, train_missing=False)
    assert out == []


def test_the_recorded_guide_runs_are_read_back_by_the_learning_rate_lesson(tmp_path, capsys):
    """`make notebooks` redraws notebook 07 from benchmarks/results/guide_runs.jsonl instead of training
    for hours: the lesson's sweep, built as the notebook builds it, must find every recorded run. This
    fails when a change to dpokit's schema or to configs/quickstart.yaml changes what a run is: then the
    recorded runs no longer describe the lesson (retrain them, or keep the key stable as config_key does
    for settings added at their defaults)."""
    from pathlib import Path

    import yaml

    from dpokit.experiment import sweep_base

    root = Path(__file__).resolve().parents[1]
    results = root / "benchmarks" / "results" / "guide_runs.jsonl"
    recorded = [r for r in read_results(results) if r.get("kind") == "run" and "training.learning_rate" in r["point"]]
    assert recorded, "the results file holds learning-rate runs"
    params = yaml.safe_load((root / "notebooks" / "params" / "07_learning_rate.yaml").read_text())
    base = sweep_base(root / "configs" / "quickstart.yaml", model_id="embedded:smollm2-135m-instruct",
                      dataset_name="embedded:instruct-tasks", max_steps=params["max_steps"], batch_size=4,
                      max_samples=params["max_samples"])
    points = [{"training.learning_rate": lr} for lr in params["learning_rates"]]
    found = run_experiment(base, points, params["seeds"], results, tmp_path, num_prompts=params["eval_prompts"],
                           max_new_tokens=params["max_new_tokens"], train_missing=False)
    assert sorted(r["key"] for r in found) == sorted(r["key"] for r in recorded)
    assert "recorded earlier" in capsys.readouterr().out


def test_a_run_recorded_under_another_point_comes_back_under_the_point_asked_for(tiny_task_config, tmp_path):
    """Two points that resolve to the same settings (here: accumulation 1 is the base's own) are one run,
    trained once; each comes back under its own point, so a lesson can name its records by point (notebook
    02 reads back the learning-rate lesson's run of the quickstart's own loss this way)."""
    results = tmp_path / "results.jsonl"
    points = [{"training.learning_rate": 1e-3},
              {"training.learning_rate": 1e-3, "training.gradient_accumulation_steps": 1}]
    records = run_experiment(tiny_task_config, points, [0], results, tmp_path / "runs", num_prompts=2, max_new_tokens=4)
    assert [r["point"] for r in records] == points
    assert records[0]["key"] == records[1]["key"]
    assert [r["kind"] for r in read_results(results)].count("run") == 1
