"""The dry run's time estimate: the work of a step from token counts, over a machine figure measured once."""

from __future__ import annotations

import json

import pytest

from dpokit.methods import get_method
from dpokit.timing import (BatchShape, MachineRate, ModelCost, batch_shape, cut_lengths, estimate_time,
                           machine_rate, step_terms)

COST = ModelCost(body_params=100_000_000, hidden=512, vocab=50_000, layers=24, attn_dim=512, lora_params=1_000_000)
RATE = MachineRate(100.0, "cpu", "fp32", 2, "2026-01-01T00:00:00", 0.0)


def test_the_machine_figure_is_measured_once_and_cached(tmp_path, monkeypatch):
    import dpokit.timing as timing

    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr(timing, "measure_matmul_rate", lambda *a: calls.append(a) or 123.44)
    first = machine_rate("cpu", "fp32")
    second = machine_rate("cpu", "fp32")
    assert calls == [("cpu", "fp32")] and first == second and first.gflops == 123.4
    cached = json.loads((tmp_path / "machine").glob("*.json").__next__().read_text())
    assert cached["gflops"] == 123.4 and cached["machine"]["threads"] == first.threads
    machine_rate("cpu", "bf16")  # another dtype is another figure
    assert calls[-1] == ("cpu", "bf16")


def test_the_measured_matmul_rate_is_a_real_positive_figure():
    from dpokit.timing import measure_matmul_rate

    assert measure_matmul_rate("cpu", "fp32", seconds=0.2) > 0.5  # GFLOP/s of a real 1024 x 1024 matmul


def test_batch_shapes_follow_the_trainer_of_each_method():
    rows = [(40, 10, 30), (60, 5, 5), (20, 50, 10)]
    dpo = batch_shape(rows, get_method("dpo"), batch_size=2, samples=64)
    kto = batch_shape(rows, get_method("kto"), batch_size=2, samples=64)
    orpo = batch_shape(rows, get_method("orpo"), batch_size=2, samples=64)
    assert dpo.sequences == 4 and kto.sequences == 2 and kto.no_grad_sequences == 2 and dpo.no_grad_sequences == 0
    assert 40 <= dpo.length <= 90 and dpo.length_sq >= dpo.length ** 2
    assert orpo.scored == pytest.approx(orpo.sequences * orpo.length)  # ORPO: every position through the head
    assert dpo.scored < dpo.sequences * dpo.length  # DPO: the completions only
    assert cut_lengths({"prompt_len": [300], "chosen_len": [200], "rejected_len": [10]}, (256, 128, 320)) == \
        [(256, 64, 10)]


def test_step_work_counts_the_reference_checkpointing_and_the_kl_pass():
    shape = BatchShape(sequences=4, length=200, length_sq=40_000, scored=100)
    plain = step_terms(COST, shape, reference_forward=False, checkpointing=False)
    with_ref = step_terms(COST, shape, reference_forward=True, checkpointing=True)
    assert set(plain) == {"policy forward", "policy backward"}
    assert {"reference forward", "recomputed activations"} <= set(with_ref)
    linear = 2 * COST.body_params * 4 * 200
    assert plain["policy forward"] == pytest.approx(linear + 2 * 24 * 4 * 40_000 * 512 + 2 * 512 * 50_000 * 100
                                                    + 2 * COST.lora_params * 800)
    kto = step_terms(COST, BatchShape(2, 200, 40_000, 50, 2, 200, 40_000, 50), reference_forward=True,
                     checkpointing=False)
    assert kto["KL completions (no gradients)"] > 0 and kto["reference forward"] > plain["policy forward"] / 2


def test_the_estimate_scales_with_accumulation_and_precomputed_logps_move_the_reference_pass_out_of_the_steps(
        tiny_llama_dir, pairs_file, tmp_path):
    from transformers import AutoConfig

    from dpokit.memory import model_layout
    from dpokit.testing import small_run_config

    model_config = AutoConfig.from_pretrained(tiny_llama_dir)
    layout = model_layout(model_config, use_cache=False)
    stats = {"prompt_len": [40, 60, 50, 45], "chosen_len": [5, 8, 6, 3], "rejected_len": [30, 25, 40, 20]}

    def estimate(**training_and_post):
        post = training_and_post.pop("post_training", {})
        config = small_run_config(tiny_llama_dir, pairs_file, tmp_path, training={"max_steps": 10, **training_and_post},
                                  post_training=post)
        return estimate_time(config, model_config, layout, stats, 20, 4, 10, rate=RATE)

    one, four = estimate(), estimate(gradient_accumulation_steps=4)
    assert four.step_s == pytest.approx(4 * one.step_s) and one.train_s == pytest.approx(10 * one.step_s)
    cached = estimate(post_training={"precompute_ref_log_probs": True})
    assert "reference forward" in one.terms_gflop and "reference forward" not in cached.terms_gflop
    assert cached.step_s < one.step_s and "reference log-probs (once)" in cached.extra_s


def test_the_dry_run_prints_the_time_per_step_and_for_the_run(tiny_llama_dir, pairs_file, tmp_path, monkeypatch,
                                                             capsys):
    from dpokit.cli import main
    from dpokit.testing import small_run_config

    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "c.yaml"
    path.write_text(small_run_config(tiny_llama_dir, pairs_file, tmp_path, training={"max_steps": 7}).to_yaml())
    assert main(["train", "--config", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    line = next(x for x in out.splitlines() if "time estimate:" in x)
    assert "s per optimizer step" in line and "for 7 steps" in line
    assert "GFLOP per optimizer step" in out and "best fp32 matmul" in out
    assert list((tmp_path / "cache" / "machine").glob("matmul-cpu-fp32-*.json"))
