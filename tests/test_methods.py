"""Methods are strategies: adding one is one subclass registered in dpokit.methods, nothing else."""

from __future__ import annotations

import pytest

from dpokit.config import load_config
from dpokit.errors import ConfigError
from dpokit.methods import DPO, METHODS, get_method, register, unregister
from dpokit.run import train
from dpokit.testing import small_run_config


class HingeOnly(DPO):
    """A throw-away method: DPO restricted to the hinge loss."""

    name = "hinge_only"
    summary = "DPO with the hinge loss only (a test method)."
    loss_types, default_loss = ("hinge",), "hinge"
    combines_losses = False

    def advice(self, config):
        return ["hinge_only: a method registered by a test"]


@pytest.fixture
def hinge_only():
    method = register(HingeOnly())
    yield method
    unregister(method.name)


def test_a_registered_method_is_validated_advised_and_trained(hinge_only, tiny_llama_dir, pairs_file, tmp_path, capsys):
    from dpokit.dryrun import dry_run
    from dpokit.rules import advise

    config = small_run_config(tiny_llama_dir, pairs_file, tmp_path, post_training={"method": "hinge_only"})
    assert config.post_training.loss_types == ["hinge"]
    assert "hinge_only: a method registered by a test" in advise(config, n_train_rows=24)
    assert dry_run(config) == 0
    assert "DPO with the hinge loss only" in capsys.readouterr().out

    [result] = train(config)
    assert result.status == "completed", result.error
    assert result.summary["method"] == "hinge_only"
    assert result.summary["trl_settings"]["loss_type"] == ["hinge"]  # what TRL resolved, checked before training


def test_a_registered_method_refuses_what_it_does_not_take(hinge_only, tiny_llama_dir, pairs_file, tmp_path):
    with pytest.raises(ConfigError) as err:
        small_run_config(tiny_llama_dir, pairs_file, tmp_path,
                         post_training={"method": "hinge_only", "loss_type": "sigmoid", "loss_weights": [1.0]})
    text = str(err.value)
    assert "'sigmoid' is not a loss type of method 'hinge_only'" in text and "set `method: dpo`" in text
    assert "post_training.loss_weights" in text


def test_an_unknown_method_is_refused_with_the_registered_names():
    assert "hinge_only" not in METHODS
    with pytest.raises(ConfigError) as err:
        load_config(data={"models": [{"name": "m", "huggingface_id": "x"}], "post_training": {"method": "dpoo"}})
    assert "post_training.method" in str(err.value) and "did you mean 'dpo'" in str(err.value)
    with pytest.raises(KeyError):
        get_method("hinge_only")
