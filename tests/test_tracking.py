"""Tracking backends: what `logging.report_to` writes is read back with each tool's own reader."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from dpokit.testing import small_run_config as tiny_config

from dpokit.config import load_config
from dpokit.errors import ConfigError
from dpokit.run import train

DPO_METRICS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies")
TRACKING_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_ALLOW_FILE_STORE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_MODE",
                "WANDB_API_KEY")


@pytest.fixture(autouse=True)
def clean_tracking_env(monkeypatch):
    """Each test starts without tracking variables, and whatever a run sets is undone afterwards."""
    for name in TRACKING_ENV:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"DPOKIT_DEFAULT_{name}", raising=False)


def logged(run_dir: Path, key: str) -> dict[int, float]:
    """{step: value} of one training metric from the run's metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in rows if key in r}


def train_tiny(model_dir, data, tmp_path, report_to, **sections):
    config = tiny_config(model_dir, data, tmp_path, logging={"report_to": report_to},
                         training={"max_steps": 3}, **sections)
    [result] = train(config)
    assert result.status == "completed", result.error
    return Path(result.run_dir), config


def test_tensorboard_event_files_hold_the_dpo_metrics(tiny_llama_dir, pairs_file, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, config = train_tiny(tiny_llama_dir, pairs_file, tmp_path, ["tensorboard"])
    events = EventAccumulator(str(Path(config.logging.logging_dir) / run.name))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for key in DPO_METRICS + ("grad_norm", "learning_rate"):
        assert f"train/{key}" in tags, (key, sorted(tags))
    margins = {e.step: e.value for e in events.Scalars("train/rewards/margins")}
    assert margins == pytest.approx(logged(run, "rewards/margins"), rel=1e-6)


def test_mlflow_logs_params_and_metrics_to_a_local_store_by_default(tiny_llama_dir, pairs_file, tmp_path):
    from mlflow.tracking import MlflowClient

    run, config = train_tiny(tiny_llama_dir, pairs_file, tmp_path, ["mlflow"])
    store = (Path(config.logging.logging_dir) / "mlruns").resolve()
    assert store.is_dir()
    client = MlflowClient(tracking_uri=store.as_uri())
    [record] = client.search_runs(["0"], filter_string=f"attributes.run_name = '{run.name}'")
    assert record.data.params["beta"] == "0.1" and record.data.params["learning_rate"] == "0.001"
    for key in DPO_METRICS:
        assert key in record.data.metrics, (key, sorted(record.data.metrics))
    history = {m.step: m.value for m in client.get_metric_history(record.info.run_id, "rewards/margins")}
    assert history == pytest.approx(logged(run, "rewards/margins"), rel=1e-6)


def test_mlflow_uses_MLFLOW_TRACKING_URI_when_set(tiny_llama_dir, pairs_file, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    store = (tmp_path / "team-store").resolve()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store.as_uri())
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run, config = train_tiny(tiny_llama_dir, pairs_file, tmp_path, ["mlflow"])
    assert not (Path(config.logging.logging_dir) / "mlruns").exists()
    [record] = MlflowClient(tracking_uri=store.as_uri()).search_runs(
        ["0"], filter_string=f"attributes.run_name = '{run.name}'")
    assert record.data.metrics["loss"] == pytest.approx(logged(run, "loss")[3])


def test_wandb_offline_mode_needs_no_key_and_closes_its_run(tiny_llama_dir, pairs_file, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run, config = train_tiny(tiny_llama_dir, pairs_file, tmp_path, ["wandb"])
    assert wandb.run is None  # closed at the end, so the next model of a batch starts its own run
    [offline] = (Path(config.logging.logging_dir) / "wandb").glob("offline-run-*")
    [log] = offline.glob("run-*.wandb")  # W&B's local transaction log, uploaded later by `wandb sync`
    content = log.read_bytes()
    for key in DPO_METRICS:
        assert f"train/{key}".encode() in content, key
    assert run.name.encode() in content  # the W&B run is named after the run directory


def test_wandb_without_key_or_offline_mode_is_refused_before_training():
    with pytest.raises(ConfigError) as err:
        load_config(data={"models": [{"name": "m", "huggingface_id": "x"}], "logging": {"report_to": "wandb"}})
    text = str(err.value)
    assert "logging.report_to" in text and "WANDB_API_KEY" in text and "WANDB_MODE=offline" in text


@pytest.mark.parametrize("backend, install", [("mlflow", "pip install mlflow-skinny"), ("wandb", "pip install wandb")])
def test_backend_that_is_not_installed_names_the_install_command(monkeypatch, backend, install):
    monkeypatch.setitem(sys.modules, backend, None)  # how Python itself marks a module as unimportable
    monkeypatch.setenv("WANDB_MODE", "offline")
    with pytest.raises(ConfigError) as err:
        load_config(data={"models": [{"name": "m", "huggingface_id": "x"}], "logging": {"report_to": [backend]}})
    text = str(err.value)
    assert "not installed" in text and install in text and "dpokit[tracking]" in text
