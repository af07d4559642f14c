"""The second reliability catalogue, by class: a finished run is never rewritten, run lookup is exact,
values are checked per row, directories and files are read honestly, stale runs are recognised, the
CLI never shows a traceback, the dry run catches what training would fail on, batch records are per
batch, and trust is never inherited from a run directory."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import yaml

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.data import load_preference_data
from dpokit.errors import ConfigError, DataError
from dpokit.run import batch_records, train
from dpokit.rundir import RunDir
from dpokit.testing import small_run_config

ROWS = [{"prompt": f"What is {a} + 1?", "chosen": str(a + 1), "rejected": f"Maybe {a + 5}, I think."} for a in range(12)]


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def digest(folder: Path) -> dict[str, str]:
    """Content hash of every file in a folder (to prove nothing in it changed)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tiny_llama_dir, tmp_path_factory):
    """A completed 2-step run with a checkpoint at every step, and its config file."""
    root = tmp_path_factory.mktemp("finished")
    data = write_rows(root / "pairs.jsonl", ROWS)
    config = small_run_config(tiny_llama_dir, data, root, training={"save_steps": 1, "save_total_limit": None})
    path = root / "config.yaml"
    path.write_text(config.to_yaml())
    [result] = train(config)
    assert result.status == "completed", result.error
    return Path(result.run_dir), path


def unfinished_copy(run: Path, tmp_path: Path) -> Path:
    """A copy of a run as a Ctrl-C would have left it after its first checkpoint."""
    import shutil

    copy = tmp_path / "runs" / run.name
    shutil.copytree(run, copy)
    shutil.rmtree(copy / "adapter")
    shutil.rmtree(copy / "checkpoint-2")
    summary = json.loads((copy / "summary.json").read_text())
    summary.update(status="interrupted", steps=1, run_dir=str(copy))
    (copy / "summary.json").write_text(json.dumps(summary))
    return copy


# ----------------------------------------------------------------------------- 1. never rewritten


def test_resuming_a_completed_run_is_refused_and_changes_nothing(finished_run, capsys):
    run, _ = finished_run
    before = digest(run)
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert "is completed" in err and "--extend" in err and "Traceback" not in err
    assert digest(run) == before


def test_extend_trains_further_in_a_new_run_directory(finished_run):
    run, _ = finished_run
    before = digest(run)
    assert main(["train", "--resume", str(run), "--extend", "--set", "training.max_steps=3"]) == 0
    [new] = [p for p in run.parent.iterdir() if p.name.startswith("tiny-dpo-") and p != run
             and RunDir(p).summary().get("extends")]
    summary = RunDir(new).summary()
    assert summary["status"] == "completed" and summary["steps"] == 3
    assert summary["extends"]["run"] == str(run) and summary["extends"]["step"] == 2
    assert summary["extends"]["changes"]["training.max_steps"] == [2, 3]
    assert yaml.safe_load((new / "resolved_config.yaml").read_text())["training"]["max_steps"] == 3
    assert digest(run) == before  # the finished run is exactly as it was


def test_resume_with_a_changed_setting_lists_the_differences(finished_run, tmp_path, capsys):
    unfinished = unfinished_copy(finished_run[0], tmp_path)
    before = digest(unfinished)
    assert main(["train", "--resume", str(unfinished), "--set", "lora.r=8", "--set", "post_training.beta=0.2"]) == 2
    err = capsys.readouterr().err
    assert "lora.r: 4 -> 8" in err and "post_training.beta: 0.1 -> 0.2" in err
    assert main(["train", "--resume", str(unfinished), "--set", "training.max_steps=3"]) == 2
    assert "add --extend" in capsys.readouterr().err
    assert digest(unfinished) == before


def test_resume_with_config_is_an_error_not_an_ignored_flag(finished_run, capsys):
    run, config_path = finished_run
    assert main(["train", "--resume", str(run), "--config", str(config_path)]) == 2
    assert "--config: cannot be combined with --resume" in capsys.readouterr().err


def test_a_resume_that_fails_its_checks_leaves_the_summary_alone(finished_run, tmp_path, capsys):
    unfinished = unfinished_copy(finished_run[0], tmp_path)
    config = yaml.safe_load((unfinished / "resolved_config.yaml").read_text())
    data = Path(config["dataset"]["name"])
    moved = data.with_name("moved.jsonl")
    data.rename(moved)
    try:
        before = (unfinished / "summary.json").read_text()
        assert main(["train", "--resume", str(unfinished)]) == 2
        assert "dataset.name" in capsys.readouterr().err
        assert (unfinished / "summary.json").read_text() == before  # not replaced by {status: running}
    finally:
        moved.rename(data)


def test_resume_from_checkpoint_of_a_finished_run_in_a_config_starts_a_new_run(finished_run, tmp_path):
    run, config_path = finished_run
    before = digest(run)
    config = load_config(config_path, overrides={"finetuning.resume_from_checkpoint": str(run / "checkpoint-1")})
    [result] = train(config)
    assert result.status == "completed" and Path(result.run_dir) != run
    assert RunDir(result.run_dir).summary()["extends"]["checkpoint"] == str(run / "checkpoint-1")
    assert digest(run) == before


# ----------------------------------------------------------------------------- 2. exact lookup


def test_latest_run_lookup_matches_the_model_name_literally(tiny_llama_dir, tmp_path):
    from dpokit.resume import latest_run_with_checkpoint

    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    config = small_run_config(tiny_llama_dir, data, tmp_path, models=[{"name": "exp1", "huggingface_id":
                                                                      str(tiny_llama_dir)}],
                              training={"save_steps": 1})
    [result] = train(config)
    root = tmp_path / "runs"
    assert latest_run_with_checkpoint(root, "exp1", "dpo")[0].path == Path(result.run_dir)
    for pattern_like in ("exp[1]", "exp?", "exp*", "ex"):
        assert latest_run_with_checkpoint(root, pattern_like, "dpo") is None
    glob_config = load_config(data=config.model_dump(mode="json"),
                              overrides={"models": [{"name": "exp[1]", "huggingface_id": str(tiny_llama_dir)}],
                                         "finetuning.resume_from_checkpoint": "latest"})
    with pytest.raises(ConfigError, match=r"no checkpoint of exp\[1\]-dpo"):
        train(glob_config)


# ----------------------------------------------------------------------------- 3. values per row


def data_config(path: Path, **dataset):
    return load_config(data={"models": [{"name": "m", "huggingface_id": "x"}],
                             "dataset": {"name": str(path), "validation_split": 0.0, "max_samples": None, **dataset}})


@pytest.mark.parametrize("bad_value, words", [
    ({"text": "3"}, "an object with keys ['text']"),
    ([1, 2, 3], "a list of int values"),
    (True, "true/false"),
    ([{"speaker": "a", "words": "b"}], "not chat messages"),
])
def test_a_value_that_is_not_text_or_messages_is_refused_with_row_and_column(tmp_path, bad_value, words):
    rows = [dict(r) for r in ROWS]
    rows[7]["chosen"] = bad_value
    with pytest.raises(DataError) as err:
        load_preference_data(data_config(write_rows(tmp_path / "d.jsonl", rows)), tokenizer_has_chat_template=False)
    assert "row 7, column 'chosen'" in str(err.value) and words in str(err.value)
    assert "{'text'" not in str(err.value).split("the first:")[0]


def test_numbers_become_their_decimal_text(tmp_path):
    rows = [{"prompt": f"What is {a} + 1? Just the number.", "chosen": a + 1, "rejected": a + 2.5} for a in range(10)]
    data = load_preference_data(data_config(write_rows(tmp_path / "d.jsonl", rows)), tokenizer_has_chat_template=False)
    by_prompt = {r["prompt"]: r for r in data.train}
    assert by_prompt["What is 3 + 1? Just the number."]["chosen"] == "4"
    assert by_prompt["What is 3 + 1? Just the number."]["rejected"] == "5.5"


def test_a_layout_that_changes_between_rows_is_refused_with_the_row(tmp_path):
    rows = [dict(r) for r in ROWS]
    rows[5] = {"prompt": rows[5]["prompt"], "chosen": [{"role": "assistant", "content": "6"}],
               "rejected": [{"role": "assistant", "content": "no"}]}
    with pytest.raises(DataError) as err:
        load_preference_data(data_config(write_rows(tmp_path / "d.jsonl", rows)))
    assert "row 5, column 'chosen': a list of chat messages, but the first rows hold text" in str(err.value)


def test_sharegpt_messages_are_mapped_to_roles(tmp_path):
    rows = [{"chosen": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": f"{a} + 1?"},
                        {"from": "gpt", "value": str(a + 1)}],
             "rejected": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": f"{a} + 1?"},
                          {"from": "gpt", "value": "Let me think about it."}]} for a in range(10)]
    data = load_preference_data(data_config(write_rows(tmp_path / "d.jsonl", rows)))
    row = data.train[0]
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    assert row["chosen"][0]["role"] == "assistant" and data.format == "conversational-implicit"


# ----------------------------------------------------------------------------- 4. directories and files


def test_a_directory_dataset_skips_notebook_checkpoint_copies(tmp_path):
    folder = tmp_path / "data"
    (folder / ".ipynb_checkpoints").mkdir(parents=True)
    write_rows(folder / "train.jsonl", ROWS)
    write_rows(folder / ".ipynb_checkpoints" / "train-checkpoint.jsonl", ROWS)
    data = load_preference_data(data_config(folder, validation_split=0.25), tokenizer_has_chat_template=False)
    assert len(data.train) + len(data.eval) == len(ROWS)  # not doubled
    assert not set(data.train["prompt"]) & set(data.eval["prompt"])  # no duplicates leaked into validation
    assert any("skipped 1 hidden file" in n and ".ipynb_checkpoints" in n for n in data.notes)


def test_an_unreadable_file_in_a_directory_is_named_with_its_line(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    write_rows(folder / "a.jsonl", ROWS)
    write_rows(folder / "b.jsonl", [json.dumps(ROWS[0]), json.dumps(ROWS[1]), '{"prompt": "x", "chosen": ', ])
    with pytest.raises(DataError) as err:
        load_preference_data(data_config(folder))
    assert "b.jsonl" in str(err.value) and "line 3" in str(err.value)


def test_a_non_utf8_data_file_is_named_with_its_line(tmp_path):
    path = tmp_path / "d.jsonl"
    write_rows(path, ROWS[:3])
    path.write_bytes(path.read_bytes() + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    with pytest.raises(DataError) as err:
        load_preference_data(data_config(path))
    assert "line 4: not UTF-8" in str(err.value)


# ----------------------------------------------------------------------------- 6. no traceback in the CLI


@pytest.fixture
def damaged_run(finished_run, tmp_path):
    """A copy of the finished run (moved outside its output folder) to damage freely."""
    import shutil

    copy = tmp_path / "copy" / finished_run[0].name
    shutil.copytree(finished_run[0], copy)
    return copy


@pytest.mark.parametrize("damage, commands, words", [
    (lambda r: (r / "adapter" / "adapter_config.json").write_text("{"), ["eval", "export", "chat"],
     "adapter cannot be loaded"),
    (lambda r: (r / "adapter" / "adapter_model.safetensors").write_bytes(b"\0" * 10), ["eval", "export", "chat"],
     "adapter cannot be loaded"),
    (lambda r: (r / "summary.json").write_text('{"status": "compl'), ["eval", "report", "resume"], "summary.json: damaged"),
    (lambda r: (r / "metrics.jsonl").write_text('{"step": 1, "loss": 0.6}\n{"st\n{"step": 2}\n'), ["report"],
     "metrics.jsonl:2: damaged"),
], ids=["adapter_config", "truncated-weights", "summary", "metrics"])
def test_a_damaged_run_file_is_named_without_a_traceback(damaged_run, capsys, damage, commands, words):
    damage(damaged_run)
    argv = {"eval": ["eval", "--run", str(damaged_run), "--num-prompts", "1", "--max-new-tokens", "2"],
            "export": ["export", str(damaged_run), "--out", str(damaged_run.parent / "exported"), "--merge"],
            "chat": ["chat", str(damaged_run)],
            "report": ["report", str(damaged_run)],
            "resume": ["train", "--resume", str(damaged_run)]}
    for command in commands:
        assert main(argv[command]) == 2, command
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, (command, err[-1500:])


def test_report_of_a_folder_skips_a_broken_run_and_reports_the_rest(finished_run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "runs"
    good, broken = folder / "tiny-dpo-20260101-000000", folder / "tiny-dpo-20260101-000001"
    shutil.copytree(finished_run[0], good)
    shutil.copytree(finished_run[0], broken)
    (broken / "summary.json").write_text("{")
    assert main(["report", str(folder)]) == 0
    captured = capsys.readouterr()
    assert "warning: skipping" in captured.err and broken.name in captured.err
    assert "tiny | completed" in (good / "report.md").read_text()  # one readable run: its report is in it


@pytest.mark.parametrize("where", ["a file", "inside the run"])
def test_export_never_writes_onto_a_file_or_into_a_run(damaged_run, capsys, where):
    before = digest(damaged_run)
    if where == "a file":
        target = damaged_run.parent / "taken.txt"
        target.write_text("mine")
    else:
        target = damaged_run / "exported"
    assert main(["export", str(damaged_run), "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert ("is a file" if where == "a file" else "inside the run directory") in err
    assert digest(damaged_run) == before


@pytest.mark.parametrize("argv", [["eval", "--run", "x", "--num-prompts", "-3"],
                                  ["eval", "--run", "x", "--max-new-tokens", "0"],
                                  ["chat", "x", "--max-new-tokens", "-1"]])
def test_non_positive_counts_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "must be at least 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 7. the dry run catches it


@pytest.mark.parametrize("key, value, words", [
    ("training.learning_rate", ".inf", "finite number"),
    ("post_training.beta", ".inf", "finite number"),
    ("training.num_epochs", ".inf", "finite number"),
    ("seed", "4294967296", "less than or equal to 4294967295"),
    ("seed", "-1", "greater than or equal to 0"),
    ("models.0.name", "x" * 250, "exceed the filesystem's 255 bytes"),
    ("lora.target_modules", "[]", "LoRA would adapt nothing"),
    ("gpu.device_ids", "[-1]", "greater than or equal to 0"),
])
def test_dry_run_refuses_values_training_would_fail_on(finished_run, capsys, key, value, words):
    _, config_path = finished_run
    assert main(["train", "--config", str(config_path), "--dry-run", "--set", f"{key}={value}"]) == 2
    err = capsys.readouterr().err
    assert key.split(".")[-1] in err and words in err and "Traceback" not in err


def test_dry_run_refuses_a_max_seq_length_no_pair_fits(finished_run, capsys):
    _, config_path = finished_run
    code = main(["train", "--config", str(config_path), "--dry-run", "--set", "training.max_seq_length=30",
                 "--set", "training.max_prompt_length=null"])
    out = capsys.readouterr().out
    assert code == 2 and "training.max_seq_length: 30 tokens leave no room for a completion" in out


def test_dry_run_refuses_an_output_dir_that_is_a_file(finished_run, tmp_path, capsys):
    _, config_path = finished_run
    blocker = tmp_path / "file"
    blocker.write_text("mine")
    assert main(["train", "--config", str(config_path), "--dry-run", "--output-dir", str(blocker)]) == 2
    assert "training.output_dir" in capsys.readouterr().out and blocker.read_text() == "mine"
    assert main(["train", "--config", str(config_path), "--set", f"logging.logging_dir={blocker}/logs"]) == 2
    assert "logging.logging_dir" in capsys.readouterr().err


def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("models:\n  - name: m\n    huggingface_id: x\ntraining:\n  learning_rate: 1.0e-6\n"
                    "  max_steps: 3\n  learning_rate: 1.0e-4\n")
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:7" in err and "'learning_rate' appears twice" in err and "first at line 5" in err


def test_a_non_utf8_config_is_named_without_a_traceback(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"models:\n  - name: caf\xe9\n    huggingface_id: x\n")
    assert main(["train", "--config", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:2: is not UTF-8 text" in err and "Traceback" not in err


def test_the_memory_estimate_says_plainly_when_it_will_not_fit():
    from dpokit.memory import MemoryEstimate, fit_on_this_machine

    estimate = MemoryEstimate(terms={"weights": 30 * 2**30, "activations": 8 * 2**30}, device="cuda", precision="bf16")
    assert fit_on_this_machine(estimate, available=24 * 2**30).startswith("will not fit: this run needs ~38.00 GB")
    assert fit_on_this_machine(estimate, available=80 * 2**30) is None


# ----------------------------------------------------------------------------- 8. batch records


def test_a_second_batch_into_the_same_folder_keeps_the_first_batch_record(tiny_llama_dir, tmp_path):
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    models = [{"name": "a", "huggingface_id": str(tiny_llama_dir)}, {"name": "b", "huggingface_id": str(tiny_llama_dir)}]
    config = small_run_config(tiny_llama_dir, data, tmp_path, models=models, training={"max_steps": 1})
    train(config)
    [first] = batch_records(tmp_path / "runs")
    before = digest(first)
    train(config)
    records = batch_records(tmp_path / "runs")
    assert len(records) == 2 and records[0] == first and digest(first) == before
    assert all((r / "report.md").exists() for r in records)


# ----------------------------------------------------------------------------- 9. trust


def test_trust_remote_code_is_not_inherited_from_a_run_directory(damaged_run, capsys):
    config = yaml.safe_load((damaged_run / "resolved_config.yaml").read_text())
    config["models"][0]["trust_remote_code"] = True
    (damaged_run / "resolved_config.yaml").write_text(yaml.safe_dump(config))
    out = str(damaged_run.parent / "exported")
    for argv in (["eval", "--run", str(damaged_run)], ["export", str(damaged_run), "--out", out, "--merge"],
                 ["chat", str(damaged_run)]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "--trust-remote-code" in err and "does not pass that trust on" in err
    assert main(["export", str(damaged_run), "--out", out, "--merge", "--trust-remote-code"]) == 0


def test_a_separate_reference_does_not_inherit_the_policys_trust(tiny_llama_dir, tmp_path, monkeypatch):
    import dpokit.models

    loaded = []
    real = dpokit.models.load_model

    def recording(model_id, trust_remote_code=False, **kwargs):
        loaded.append((str(model_id), trust_remote_code))
        return real(model_id, trust_remote_code, **kwargs)

    monkeypatch.setattr(dpokit.models, "load_model", recording)
    data = write_rows(tmp_path / "pairs.jsonl", ROWS)
    other = tmp_path / "reference"
    import shutil

    shutil.copytree(tiny_llama_dir, other)
    config = small_run_config(tiny_llama_dir, data, tmp_path, post_training={"use_ref_model": True,
                                                                             "ref_model_id": str(other)},
                              models=[{"name": "tiny", "huggingface_id": str(tiny_llama_dir),
                                       "trust_remote_code": True}], training={"max_steps": 1})
    [result] = train(config)
    assert result.status == "completed", result.error
    assert (str(tiny_llama_dir), True) in loaded and (str(other), False) in loaded
