"""IFEval on a run: `dpokit eval --bench ifeval`, `evaluation.benchmarks` at the end of training, the report."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from dpokit.run import train
from dpokit.testing import small_run_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tiny_llama_dir, pairs_file, tmp_path_factory):
    config = small_run_config(tiny_llama_dir, pairs_file, tmp_path_factory.mktemp("bench"))
    [result] = train(config)
    assert result.status == "completed", result.error
    return Path(result.run_dir)


def test_cli_eval_bench_ifeval_limit_3_writes_the_run_and_its_summary(tiny_run, capsys, monkeypatch):
    from dpokit.bench.ifeval import select_prompts
    from dpokit.cli import main

    _forbid_downloads(monkeypatch)
    assert main(["eval", "--run", str(tiny_run), "--bench", "ifeval", "--limit", "3", "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    assert "== IFEval" in out and "3 prompts" in out and "wins" in out
    data = json.loads((tiny_run / "bench_ifeval.json").read_text())
    assert data["base"]["num_prompts"] == 3 and data["trained"]["settings"]["max_new_tokens"] == 6
    assert set(data["base"]["accuracy"]) == {"prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"}
    assert data["base"]["per_instruction"] and "comparison" in data
    lines = [json.loads(line) for line in (tiny_run / "bench_ifeval_answers.jsonl").read_text().splitlines()]
    assert [line["key"] for line in lines] == [p.key for p in select_prompts(3, 0)]
    assert all(isinstance(line["base"]["answer"], str) and len(line["trained"]["strict"]) == len(line["instructions"])
               for line in lines)
    record = json.loads((tiny_run / "summary.json").read_text())["benchmarks"]["ifeval"]
    assert record["prompts"] == 3 and record["max_new_tokens"] == 6 and record["subset_seed"] == 0
    assert record["trained"]["accuracy"] == data["trained"]["accuracy"]
    c = record["comparison"]["strict"]
    assert c["wins"] + c["ties"] + c["losses"] == 3
    # the figures are recomputable from the answers file: nothing is made up on the way
    passed = sum(all(line["trained"]["strict"]) for line in lines)
    assert record["trained"]["accuracy"]["prompt_strict"] == pytest.approx(100 * passed / 3, abs=0.01)


def test_report_has_an_ifeval_section_and_a_column(tiny_run, tmp_path):
    from dpokit.bench.runs import benchmark_run
    from dpokit.report import write_report

    result = benchmark_run(tiny_run, "ifeval", limit=2, max_new_tokens=4, progress=False)
    page = write_report([tiny_run], tmp_path / "report.md").read_text()
    assert "## IFEval (public benchmark)" in page
    acc = result["record"]["base"]["accuracy"]["prompt_strict"]
    row = next(line for line in page.splitlines() if line.startswith("| tiny | 2 | 4 |"))
    assert f"{acc:.1f} [" in row
    assert "IFEval prompt strict: base → trained" in page and "(n=2)" in page
    assert "instruction types that changed most" in page


def test_reused_base_pass_must_match_the_prompts_and_settings(tiny_run):
    from dpokit.bench.runs import benchmark_run

    first = benchmark_run(tiny_run, "ifeval", limit=2, max_new_tokens=4, progress=False)
    again = benchmark_run(tiny_run, "ifeval", limit=2, max_new_tokens=4, progress=False, base=first["base"])
    assert again["base"]["answers"] == first["base"]["answers"]
    assert again["trained"]["answers"] == first["trained"]["answers"]  # greedy: the same answers again
    with pytest.raises(ValueError, match="other prompts"):
        benchmark_run(tiny_run, "ifeval", limit=3, max_new_tokens=4, progress=False, base=first["base"])
    with pytest.raises(ValueError, match="max_new_tokens=4"):
        benchmark_run(tiny_run, "ifeval", limit=2, max_new_tokens=5, progress=False, base=first["base"])


def test_training_runs_the_configured_benchmark_and_records_it(tiny_llama_dir, pairs_file, tmp_path, capsys):
    config = small_run_config(tiny_llama_dir, pairs_file, tmp_path,
                              evaluation={"enabled": False, "benchmarks": ["ifeval"], "benchmark_limit": 2,
                                          "benchmark_max_new_tokens": 4})
    [result] = train(config)
    assert result.status == "completed", result.error
    run = Path(result.run_dir)
    assert result.summary["benchmarks"]["ifeval"]["prompts"] == 2
    assert json.loads((run / "summary.json").read_text())["benchmarks"]["ifeval"]["max_new_tokens"] == 4
    assert (run / "bench_ifeval_answers.jsonl").is_file()
    out = capsys.readouterr().out
    assert "== IFEval" in out and "two figures, two questions" in out


@pytest.mark.parametrize("value, message", [
    (["ifevl"], "unknown benchmark 'ifevl'. Did you mean 'ifeval'?"),
    (["mmlu"], "unknown benchmark 'mmlu'. Choose from ifeval"),
])
def test_unknown_benchmark_names_are_refused_with_a_suggestion(value, message):
    from dpokit.config import load_config
    from dpokit.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        load_config(ROOT / "configs" / "quickstart.yaml", overrides={"evaluation.benchmarks": value})
    assert "evaluation.benchmarks" in str(e.value) and message in str(e.value)


@pytest.mark.parametrize("key, value", [("evaluation.benchmark_limit", 0),
                                        ("evaluation.benchmark_max_new_tokens", -1)])
def test_benchmark_sizes_must_be_positive(key, value):
    from dpokit.config import load_config
    from dpokit.errors import ConfigError

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(ROOT / "configs" / "quickstart.yaml", overrides={key: value})


def test_benchmarks_accept_one_name_and_default_to_none():
    from dpokit.config import load_config

    config = load_config(ROOT / "configs" / "simple_dpo.yaml", overrides={"evaluation.benchmarks": "ifeval"})
    assert config.evaluation.benchmarks == ["ifeval"]
    assert load_config(ROOT / "configs" / "simple_dpo.yaml").evaluation.benchmarks == []


def test_cli_refuses_an_unknown_bench_and_limit_without_bench(tiny_run, capsys):
    from dpokit.cli import main

    assert main(["eval", "--run", str(tiny_run), "--bench", "ifevl"]) == 2
    assert "Did you mean 'ifeval'" in capsys.readouterr().err
    assert main(["eval", "--run", str(tiny_run), "--limit", "3"]) == 2
    assert "--limit" in capsys.readouterr().err


def test_training_data_code_never_imports_the_benchmark():
    """IFEval is a held-out test: the code that builds training data must not be able to read it."""
    for path in [ROOT / "dpokit" / "data.py", ROOT / "dpokit" / "pairs.py", ROOT / "dpokit" / "sources.py",
                 ROOT / "dpokit" / "tokens.py", *sorted((ROOT / "dpokit" / "tasks").rglob("*.py"))]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any("bench" in n for n in names), f"{path.name} imports {names}"
        assert "input_data.jsonl" not in path.read_text(encoding="utf-8"), path


def _forbid_downloads(monkeypatch):
    import huggingface_hub
    import nltk

    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(nltk, "download", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
