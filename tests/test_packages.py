"""Optional packages a config needs are found before anything loads, with the install command."""

from __future__ import annotations

import importlib.util

import pytest
import yaml

from dpokit.cli import main
from dpokit.config import load_config
from dpokit.errors import ConfigError
from dpokit.packages import OPTIMIZER_PACKAGES, OPTIMIZERS_WITHOUT_PACKAGES


@pytest.fixture
def without(monkeypatch):
    """Make the given top-level modules look uninstalled to importlib.util.find_spec."""
    real = importlib.util.find_spec

    def hide(*names):
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name.split(".")[0] in names else real(name, *a))
    return hide


def test_every_transformers_optimizer_is_known_to_need_a_package_or_not():
    from transformers.training_args import OptimizerNames

    names = {o.value for o in OptimizerNames}
    assert names == set(OPTIMIZER_PACKAGES) | OPTIMIZERS_WITHOUT_PACKAGES
    assert not set(OPTIMIZER_PACKAGES) & OPTIMIZERS_WITHOUT_PACKAGES


@pytest.mark.parametrize("optim, package, command", [
    ("paged_adamw_8bit", "bitsandbytes", "pip install 'bitsandbytes>="),
    ("adamw_8bit", "bitsandbytes", "dpokit[qlora]"),
    ("schedule_free_adamw", "schedulefree", "pip install 'schedulefree>=1.2.6'"),
    ("lomo", "lomo_optim", "pip install lomo-optim"),
])
def test_an_optimizer_whose_package_is_missing_is_refused_with_the_install_command(optim, package, command, without):
    without(package)
    with pytest.raises(ConfigError) as info:
        load_config(data={"models": [{"name": "m", "huggingface_id": "x"}], "training": {"optim": optim},
                          "logging": {"report_to": ["none"]}})
    text = str(info.value)
    assert f"training.optim: optimizer '{optim}' needs the" in text and "is not installed" in text
    assert command in text and "optim: adamw_torch" in text


def test_an_old_bitsandbytes_is_refused_with_the_version_transformers_needs(monkeypatch):
    import importlib.metadata

    from transformers.utils.import_utils import BITSANDBYTES_MIN_VERSION

    real = importlib.metadata.version
    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.40.0" if name == "bitsandbytes" else real(name))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else None)
    from dpokit.packages import package_problems

    config = load_config(data={"models": [{"name": "m", "huggingface_id": "x"}], "logging": {"report_to": ["none"]}})
    config.training.optim = "paged_adamw_8bit"
    [problem] = package_problems(config)
    assert f"is 0.40.0, older than the {BITSANDBYTES_MIN_VERSION} needed" in problem.message
    assert f"bitsandbytes>={BITSANDBYTES_MIN_VERSION}" in problem.hint


def test_a_missing_package_stops_train_and_the_dry_run_before_any_weights_load(
        tiny_llama_dir, pairs_file, tmp_path, without, monkeypatch, capsys):
    import dpokit.models
    from dpokit.testing import small_run_config

    monkeypatch.setattr(dpokit.models, "load_model", lambda *a, **k: pytest.fail("weights loaded"))
    data = yaml.safe_load(small_run_config(tiny_llama_dir, pairs_file, tmp_path).to_yaml())
    data["training"]["optim"] = "paged_adamw_8bit"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    without("bitsandbytes")
    for extra in ([], ["--dry-run"]):
        assert main(["train", "--config", str(path), *extra]) == 2
        err = capsys.readouterr().err
        assert "training.optim: optimizer 'paged_adamw_8bit' needs the bitsandbytes package" in err
        assert "pip install 'bitsandbytes>=" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()


def test_installed_optional_packages_pass(tiny_llama_dir):
    if importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("bitsandbytes is not installed here")
    config = load_config(data={"models": [{"name": "m", "huggingface_id": "x"}],
                               "training": {"optim": "paged_adamw_8bit"}, "logging": {"report_to": ["none"]}})
    assert config.training.optim == "paged_adamw_8bit"


@pytest.mark.parametrize("settings, where, command", [
    ({"quantization": {"load_in": "4bit"}}, "quantization.load_in", "pip install 'bitsandbytes>="),
    ({"quantization": {"load_in": "8bit"}}, "quantization.load_in", "dpokit[qlora]"),
    ({"distributed": {"strategy": "zero3"}}, "distributed.strategy", "DS_BUILD_OPS=0 pip install deepspeed"),
    ({"distributed": {"strategy": "zero2"}}, "distributed.strategy", "DS_BUILD_OPS=0 pip install deepspeed"),
])
def test_scaling_settings_name_their_missing_package_in_the_same_place(settings, where, command, without):
    without("bitsandbytes", "deepspeed")
    with pytest.raises(ConfigError) as info:
        load_config(data={"models": [{"name": "m", "huggingface_id": "x"}], "logging": {"report_to": ["none"]},
                          "training": {"bf16": True}, **settings})
    problems = [p for p in info.value.problems if p.where == where]
    assert len(problems) == 1 and "is not installed" in problems[0].message and command in problems[0].hint


def test_a_users_accelerate_file_decides_the_engine_so_deepspeed_is_not_demanded(tmp_path, without):
    mine = tmp_path / "accelerate.yaml"
    mine.write_text("distributed_type: MULTI_GPU\nnum_processes: 2\n")
    without("deepspeed")
    config = load_config(data={"models": [{"name": "m", "huggingface_id": "x"}], "logging": {"report_to": ["none"]},
                               "distributed": {"accelerate_config": str(mine)}})
    assert config.distributed.accelerate_config == str(mine)


def test_the_bitsandbytes_optimizer_list_is_the_one_transformers_uses():
    from transformers.trainer_optimizer import _BITSANDBYTES_OPTIMIZERS  # private: this test guards our copy

    from dpokit.packages import BNB_OPTIMIZERS

    assert BNB_OPTIMIZERS == {o.value for o in _BITSANDBYTES_OPTIMIZERS}
