"""Reward accuracy and margins on the validation pairs before and after training; degeneration as a change."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dpokit.run import train
from dpokit.testing import small_run_config


def trained_run(model_dir, pairs_file, tmp_path, **post_training):
    config = small_run_config(model_dir, pairs_file, tmp_path, dataset={"validation_split": 0.25},
                              post_training=post_training or {},
                              training={"max_steps": 3, "eval_steps": 3, "per_device_eval_batch_size": 2,
                                        "learning_rate": 5e-3})
    [result] = train(config)
    assert result.status == "completed", result.error
    return Path(result.run_dir)


def test_every_run_with_a_validation_split_scores_its_pairs_before_and_after(tiny_llama_dir, pairs_file, tmp_path):
    run = trained_run(tiny_llama_dir, pairs_file, tmp_path)
    preference = json.loads((run / "eval.json").read_text())["preference"]  # evaluation.enabled is false
    assert preference["pairs"] == 6 and preference["method"] == "dpo"
    # before = the untrained adapter = the reference: every reward is exactly 0 (computed, not assumed)
    assert preference["before"] == {"reward_accuracy": 0.0, "reward_margin": 0.0, "rewards_chosen": 0.0,
                                    "rewards_rejected": 0.0}
    # after = what TRL measured at its last evaluation, on the same pairs and tokens, with the final weights
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trl_eval = [m for m in metrics if "eval_rewards/accuracies" in m][-1]
    assert trl_eval["step"] == 3
    assert preference["after"]["reward_accuracy"] == pytest.approx(trl_eval["eval_rewards/accuracies"], abs=1e-6)
    assert preference["after"]["reward_margin"] == pytest.approx(trl_eval["eval_rewards/margins"], rel=2e-3, abs=1e-4)
    assert preference["after"]["rewards_chosen"] == pytest.approx(trl_eval["eval_rewards/chosen"], rel=2e-3, abs=1e-4)
    assert 0 <= preference["prefers_chosen"]["base"] <= 1 and 0 <= preference["prefers_chosen"]["trained"] <= 1
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval"]["preference"]["after"] == preference["after"]


def test_eval_of_a_run_keeps_the_validation_scores_and_the_report_shows_them(tiny_llama_dir, pairs_file, tmp_path):
    from dpokit.evaluate import evaluate_run
    from dpokit.report import write_report

    run = trained_run(tiny_llama_dir, pairs_file, tmp_path)
    result = evaluate_run(run, num_prompts=2, max_new_tokens=4)
    assert result["preference"]["before"]["reward_accuracy"] == 0.0
    assert json.loads((run / "eval.json").read_text())["preference"] == result["preference"]
    page = write_report([run], tmp_path / "report.md").read_text()
    assert "## Validation pairs: before → after" in page
    row = next(line for line in page.splitlines() if line.startswith("| tiny |") and "→" in line and "0.00 →" in line)
    assert "| 6 |" in row and "+0.000 →" in row
    assert "eval_rewards/accuracies" in page and "before\" is 0 by construction" in page
    assert "newly degenerate" in page and "chosen more likely (base → trained)" in page


def test_orpo_before_is_the_base_models_own_reward(tiny_llama_dir, pairs_file, tmp_path):
    run = trained_run(tiny_llama_dir, pairs_file, tmp_path, method="orpo", use_ref_model=False)
    preference = json.loads((run / "eval.json").read_text())["preference"]
    assert "reference-free" in preference["reward"]
    assert preference["before"]["reward_margin"] != 0.0  # β × mean per-token log p of the base model
    assert preference["before"]["rewards_chosen"] < 0 and preference["after"]["rewards_chosen"] < 0


def test_kto_runs_are_scored_on_pairs_too(tiny_llama_dir, pairs_file, tmp_path):
    run = trained_run(tiny_llama_dir, pairs_file, tmp_path, method="kto")
    preference = json.loads((run / "eval.json").read_text())["preference"]
    assert preference["before"]["reward_accuracy"] == 0.0 and preference["after"]["reward_margin"] != 0.0


def test_degeneration_is_flagged_as_a_change_from_the_base_answer():
    from dpokit.evaluate import outside_task_check

    prompts = [("How many days are in a week?", "7|seven"), ("What color is the sky on a clear day?", "blue"),
               ("What is the chemical symbol for water?", "H2O")]
    loop = "blue blue blue blue blue blue"
    base = [loop, "Blue.", "H2O"]
    trained = [loop, "sky sky sky sky sky", "H2O"]  # the first was already degenerate; the second is new
    result = outside_task_check(base, trained, prompts)
    assert result["degenerate"] == 1 and result["degenerate_base"] == 1 and result["degenerate_trained"] == 2
    assert result["rows"][0]["flags"] and not result["rows"][0]["new_flags"]
    assert result["rows"][1]["new_flags"] == result["rows"][1]["flags"] != []


def test_the_trained_model_is_freed_before_the_validation_pairs_load_it_again(tiny_llama_dir, pairs_file, tmp_path,
                                                                               monkeypatch):
    import weakref

    import dpokit.preference_eval
    import dpokit.trainers

    probes, alive = [], []
    build, score = dpokit.trainers.build_trainer, dpokit.preference_eval.evaluate_run_preferences

    def build_and_watch(*args, **kwargs):
        probes.append(weakref.ref(kwargs["model"]))
        return build(*args, **kwargs)

    def score_and_check(run, *args, **kwargs):
        alive.append(probes[0]() is not None)
        return score(run, *args, **kwargs)

    monkeypatch.setattr(dpokit.trainers, "build_trainer", build_and_watch)
    monkeypatch.setattr(dpokit.preference_eval, "evaluate_run_preferences", score_and_check)
    trained_run(tiny_llama_dir, pairs_file, tmp_path)
    assert alive == [False]  # two copies of the model would raise the run's peak memory by its weights


def test_change_of_log_p_of_the_chosen_answers_matches_trls_own_log_probs(tiny_llama_dir, pairs_file, tmp_path):
    run = trained_run(tiny_llama_dir, pairs_file, tmp_path)
    logp = json.loads((run / "eval.json").read_text())["preference"]["logp"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trl_eval = [m for m in metrics if "eval_logps/chosen" in m][-1]
    # the trained model's mean summed log p of the validation answers, as TRL measured it with the final weights
    assert logp["chosen"]["trained"] == pytest.approx(trl_eval["eval_logps/chosen"], rel=2e-3, abs=1e-3)
    assert logp["rejected"]["trained"] == pytest.approx(trl_eval["eval_logps/rejected"], rel=2e-3, abs=1e-3)
    for side in ("chosen", "rejected"):
        assert logp[side]["change"] == pytest.approx(logp[side]["trained"] - logp[side]["base"], abs=1e-3)
        assert logp[side]["base"] < 0


def test_any_data_with_a_validation_split_gets_answers_side_by_side(tiny_llama_dir, pairs_file, tmp_path):
    """Local pairs (not the embedded task): evaluation 'auto' answers validation prompts before and after."""
    from dpokit.report import write_report

    config = small_run_config(tiny_llama_dir, pairs_file, tmp_path, dataset={"validation_split": 0.25},
                              evaluation={"enabled": "auto", "num_prompts": 3, "max_new_tokens": 4},
                              training={"max_steps": 2, "eval_steps": 2, "per_device_eval_batch_size": 2})
    [result] = train(config)
    assert result.status == "completed", result.error
    run = Path(result.run_dir)
    ev = json.loads((run / "eval.json").read_text())
    validation_prompts = [json.loads(line)["prompt"] for line in pairs_file.read_text().splitlines()]
    assert len(ev["samples"]) == 3 and all(any(v in s["prompt"] for v in validation_prompts) for s in ev["samples"])
    assert all(isinstance(s["base"], str) and isinstance(s["trained"], str) for s in ev["samples"])
    assert "base_score" not in ev  # no judge for arbitrary data: answers, not pass rates
    summary = json.loads((run / "summary.json").read_text())
    assert summary["eval"]["preference"]["logp"] == ev["preference"]["logp"]
    page = write_report([run], tmp_path / "report.md").read_text()
    assert "change of log p (nats): chosen / rejected" in page
    assert "The first 3 held-out prompts" in page and ev["samples"][0]["base"][:3] in page
