"""dpokit.losses against TRL's own loss computation (DPOTrainer, KTOTrainer, ORPOTrainer).

Each trainer is built once (module-scoped) on a tiny random Llama and a word-level tokenizer made
here, so nothing is downloaded. Policy and reference are two differently seeded models, so the
log-ratios are far from zero (beta * margin is O(1)) and every loss is in its non-trivial regime.
TRL's per-sequence log-probs come from its own fused-LM-head path (`compute_ref_log_probs` /
`concatenated_forward`) and are checked against a plain forward computed here.
"""

from __future__ import annotations

import inspect
import math
import os
import re
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from torch.testing import assert_close

from dpokit import losses as L

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # noqa: E402

# Same float32 computations on both sides: agreement is to float32 rounding.
TOL = dict(rtol=1e-6, atol=1e-6)

WORDS = ("the a sky sea grass sun is was looks blue green red grey wet dry warm cold and very quite "
         "bright dark today clear").split()
PAIRS = [
    dict(prompt="the sky is", chosen=" blue and clear today", rejected=" green"),
    dict(prompt="the sea was", chosen=" cold", rejected=" very warm and bright"),
    dict(prompt="the grass looks", chosen=" green and wet", rejected=" red"),
    dict(prompt="a sun", chosen=" is bright", rejected=" was dark and cold"),
    dict(prompt="the sky was", chosen=" grey", rejected=" red and dry"),
]


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tokenizer():
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def _tiny_llama(vocab_size: int, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      initializer_range=0.5, tie_word_embeddings=False)
    return LlamaForCausalLM(cfg)


def _common_args(tmp_path_factory, n_rows: int) -> dict:
    return dict(output_dir=str(tmp_path_factory.mktemp("out")), per_device_train_batch_size=n_rows, report_to=[],
                bf16=False, use_cpu=True, save_strategy="no", logging_strategy="no", seed=0)


def _first_batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _manual_logps(model, input_ids, attention_mask, mask, average=False):
    """Plain forward (no fused head): sum (or mean) of log p(token) over positions where mask[:, 1:] is set."""
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    m = mask[:, 1:].to(token_logps.dtype)
    total = (token_logps * m).sum(-1)
    return total / m.sum(-1) if average else total


@pytest.fixture(scope="module")
def dpo(tokenizer, tmp_path_factory):
    """A DPOTrainer, one collated batch, and TRL's per-sequence log-probs for it."""
    v = len(tokenizer)
    args = trl.DPOConfig(**_common_args(tmp_path_factory, len(PAIRS)), beta=0.1)
    trainer = trl.DPOTrainer(model=_tiny_llama(v, 0), ref_model=_tiny_llama(v, 1), args=args,
                             train_dataset=datasets.Dataset.from_list(PAIRS), processing_class=tokenizer)
    batch = _first_batch(trainer)
    pc, pr = trainer.compute_ref_log_probs(trainer.model, batch)  # TRL's own (fused head) log-prob sums
    rc, rr = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    lengths = batch["completion_mask"].sum(dim=1).float()  # what TRL divides by for ipo / sigmoid_norm
    cl, rl = lengths.chunk(2)
    return dict(trainer=trainer, batch=batch, logps=(pc, pr, rc, rr), chosen_lengths=cl, rejected_lengths=rl)


def _trl_dpo_loss(trainer, batch, monkeypatch, loss_types, beta, label_smoothing=0.0, weights=None, tau=0.05):
    monkeypatch.setattr(trainer, "loss_types", list(loss_types))
    monkeypatch.setattr(trainer, "loss_weights", list(weights or [1.0] * len(loss_types)))
    monkeypatch.setattr(trainer, "beta", beta)
    monkeypatch.setattr(trainer, "label_smoothing", label_smoothing)
    monkeypatch.setattr(trainer.args, "discopop_tau", tau)
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, batch)


# ----------------------------------------------------------------------------- log-probs and metrics
def test_trl_logps_are_summed_completion_token_logprobs(dpo):
    t, b = dpo["trainer"], dpo["batch"]
    pc, pr, rc, rr = dpo["logps"]
    mine = _manual_logps(t.model, b["input_ids"], b["attention_mask"], b["completion_mask"])
    ref = _manual_logps(t.ref_model, b["input_ids"], b["attention_mask"], b["completion_mask"])
    assert_close(torch.cat([pc, pr]), mine, rtol=1e-5, atol=1e-5)
    assert_close(torch.cat([rc, rr]), ref, rtol=1e-5, atol=1e-5)
    # the fixture is not degenerate: beta*margin is O(1) and of both signs
    margins = L.rewards(pc, rc, 0.1) - L.rewards(pr, rr, 0.1)
    assert margins.abs().max() > 0.3 and (margins > 0).any() and (margins < 0).any()
    # chosen and rejected completions have different lengths, so IPO's normalisation matters
    assert not torch.equal(dpo["chosen_lengths"], dpo["rejected_lengths"])


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_rewards_match_trl_metrics(dpo, monkeypatch, beta):
    t, b = dpo["trainer"], dpo["batch"]
    pc, pr, rc, rr = dpo["logps"]
    _trl_dpo_loss(t, b, monkeypatch, ["sigmoid"], beta)
    metrics = {k: v[-1] for k, v in t._metrics["train" if t.model.training else "eval"].items()}
    chosen, rejected = L.rewards(pc, rc, beta), L.rewards(pr, rr, beta)
    assert_close(chosen, beta * (pc - rc))
    assert metrics["rewards/chosen"] == pytest.approx(chosen.mean().item(), rel=1e-5, abs=1e-6)
    assert metrics["rewards/rejected"] == pytest.approx(rejected.mean().item(), rel=1e-5, abs=1e-6)
    assert metrics["rewards/margins"] == pytest.approx((chosen - rejected).mean().item(), rel=1e-5, abs=1e-6)
    assert metrics["rewards/accuracies"] == pytest.approx((chosen > rejected).float().mean().item())
    assert metrics["logps/chosen"] == pytest.approx(pc.mean().item(), rel=1e-6)
    assert metrics["logps/rejected"] == pytest.approx(pr.mean().item(), rel=1e-6)


# ----------------------------------------------------------------------------- every DPO loss type vs TRL
CASES = [  # (loss, TRL label_smoothing, discopop tau, kwargs for dpokit)
    ("sigmoid", 0.0, 0.05, {}),
    ("hinge", 0.0, 0.05, {}),
    ("ipo", 0.0, 0.05, {"lengths": True}),
    ("robust", 0.2, 0.05, {"label_smoothing": 0.2}),
    ("exo_pair", 1e-3, 0.05, {"label_smoothing": 1e-3}),
    ("exo_pair", 0.2, 0.05, {"label_smoothing": 0.2}),
    ("nca_pair", 0.0, 0.05, {}),
    ("bco_pair", 0.0, 0.05, {}),
    ("sppo_hard", 0.0, 0.05, {}),
    ("aot", 0.1, 0.05, {"label_smoothing": 0.1}),
    ("aot_unpaired", 0.1, 0.05, {"label_smoothing": 0.1}),
    ("apo_zero", 0.0, 0.05, {}),
    ("apo_down", 0.0, 0.05, {}),
    ("discopop", 0.0, 0.05, {}),
    ("discopop", 0.0, 0.5, {"tau": 0.5}),
    ("sigmoid_norm", 0.0, 0.05, {"lengths": True}),
]


@pytest.mark.parametrize("beta", [0.1, 1.0])
@pytest.mark.parametrize(("name", "ls", "tau", "kw"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_loss_matches_trl(dpo, monkeypatch, name, ls, tau, kw, beta):
    kw = dict(kw)
    if kw.pop("lengths", False):
        kw.update(chosen_lengths=dpo["chosen_lengths"], rejected_lengths=dpo["rejected_lengths"])
    expected = _trl_dpo_loss(dpo["trainer"], dpo["batch"], monkeypatch, [name], beta, label_smoothing=ls, tau=tau)
    got = L.preference_loss(name, *dpo["logps"], beta=beta, **kw)
    assert_close(got, expected, **TOL)
    # the registry function itself (per-example losses) averages to the same number
    assert_close(L.LOSSES[name](*dpo["logps"], beta=beta, **kw).mean(), expected, **TOL)


def test_weighted_combination_matches_trl(dpo, monkeypatch):
    """TRL's `loss_type=[...]` + `loss_weights` (e.g. MPO-style sigmoid + bco_pair) is sum_i w_i mean(loss_i)."""
    names, weights = ["sigmoid", "bco_pair", "ipo"], [0.8, 0.2, 0.05]
    expected = _trl_dpo_loss(dpo["trainer"], dpo["batch"], monkeypatch, names, 0.3, weights=weights)
    got = L.preference_loss(names, *dpo["logps"], beta=0.3, weights=weights,
                            chosen_lengths=dpo["chosen_lengths"], rejected_lengths=dpo["rejected_lengths"])
    assert_close(got, expected, **TOL)


def test_ipo_is_length_normalised_in_trl(dpo, monkeypatch):
    """TRL's IPO averages the log-ratios over completion tokens; the summed form gives another number."""
    pc, pr, rc, rr = dpo["logps"]
    expected = _trl_dpo_loss(dpo["trainer"], dpo["batch"], monkeypatch, ["ipo"], 0.1)
    ones = torch.ones_like(pc)
    summed = L.ipo(pc, pr, rc, rr, beta=0.1, chosen_lengths=ones, rejected_lengths=ones).mean()
    assert not torch.allclose(summed, expected, rtol=1e-3)
    with pytest.raises(TypeError):
        L.preference_loss("ipo", pc, pr, rc, rr, beta=0.1)  # lengths are required, never silently 1


def test_registry_covers_trl_dpo_loss_types():
    """Every loss type DPOTrainer._compute_loss knows is in LOSSES, except 'sft' (a per-token NLL, not a
    preference loss). Fails on a TRL upgrade that adds one."""
    src = inspect.getsource(trl.DPOTrainer._compute_loss)
    trl_types = set(re.findall(r'loss_type == "(\w+)"', src))
    assert trl_types - set(L.LOSSES) == {"sft"}
    src = inspect.getsource(trl.KTOTrainer._compute_loss)
    assert set(re.findall(r'loss_type == "(\w+)"', src)) <= set(L.LOSSES)


# ----------------------------------------------------------------------------- special values and label smoothing
def test_sigmoid_at_zero_margin_is_ln2(dpo, monkeypatch):
    pc, pr, _, _ = dpo["logps"]
    assert_close(L.sigmoid(pc, pr, pc, pr), torch.full_like(pc, math.log(2)))
    assert_close(L.margin_curve("sigmoid", [0.0]), torch.tensor([math.log(2)]))
    # TRL too: feed it reference log-probs equal to the policy's (its precomputed-reference path)
    t = dpo["trainer"]
    batch = dict(dpo["batch"], ref_chosen_logps=pc, ref_rejected_logps=pr)
    monkeypatch.setattr(t, "precompute_ref_logps", True)
    assert_close(_trl_dpo_loss(t, batch, monkeypatch, ["sigmoid"], 0.1), torch.tensor(math.log(2)), **TOL)


def test_label_smoothing_changes_robust_not_sigmoid(dpo, monkeypatch):
    t, b, logps = dpo["trainer"], dpo["batch"], dpo["logps"]
    trl_sig = [_trl_dpo_loss(t, b, monkeypatch, ["sigmoid"], 0.1, label_smoothing=ls) for ls in (0.0, 0.3)]
    trl_rob = [_trl_dpo_loss(t, b, monkeypatch, ["robust"], 0.1, label_smoothing=ls) for ls in (0.0, 0.3)]
    assert_close(trl_sig[0], trl_sig[1], rtol=0, atol=0)  # TRL ignores label_smoothing for sigmoid
    assert abs(trl_rob[0] - trl_rob[1]) > 1e-3
    assert_close(trl_rob[0], trl_sig[0], **TOL)  # robust with eps = 0 is plain DPO
    mine_rob = [L.preference_loss("robust", *logps, beta=0.1, label_smoothing=ls) for ls in (0.0, 0.3)]
    assert_close(mine_rob[0], trl_rob[0], **TOL)
    assert_close(mine_rob[1], trl_rob[1], **TOL)
    with pytest.raises(TypeError):  # dpokit's sigmoid has no label_smoothing to ignore
        L.preference_loss("sigmoid", *logps, beta=0.1, label_smoothing=0.3)


def test_rewards_is_beta_times_log_ratio():
    p, r = torch.tensor([-3.0, -10.0, -1.5]), torch.tensor([-4.0, -8.0, -1.5])
    assert_close(L.rewards(p, r, 0.25), torch.tensor([0.25, -0.5, 0.0]))


# ----------------------------------------------------------------------------- margin curves
def test_margin_curve():
    m = torch.linspace(-4, 4, 81)
    for name in ("sigmoid", "hinge", "robust", "exo_pair", "discopop"):
        expected = L.preference_loss(name, m / 0.1, torch.zeros_like(m), torch.zeros_like(m), torch.zeros_like(m),
                                     beta=0.1, reduction="none")
        assert_close(L.margin_curve(name, m, beta=0.1), expected)
    sig = L.margin_curve("sigmoid", m)
    assert (sig.diff() < 0).all()
    assert_close(L.margin_curve("hinge", torch.tensor([1.0, 2.0])), torch.zeros(2))
    assert_close(L.margin_curve("robust", [0.0], label_smoothing=0.3), torch.tensor([math.log(2)]))
    ipo_curve = L.margin_curve("ipo", m, beta=0.1)  # minimum (zero) at reward margin 1/2
    assert m[ipo_curve.argmin()].item() == pytest.approx(0.5)
    for name in ("nca_pair", "bco_pair", "sppo_hard", "apo_zero", "apo_down", "kto", "apo_zero_unpaired",
                 "sigmoid_norm"):
        assert L.margin_curve(name, m).shape == m.shape
    pinned = L.margin_curve("apo_zero", m, rejected_reward=0.0)
    assert_close(pinned, 1 - torch.sigmoid(m) + 0.5)
    for name in ("aot", "aot_unpaired", "orpo"):
        with pytest.raises(ValueError):
            L.margin_curve(name, m)


def test_preference_loss_errors():
    x = torch.zeros(2)
    with pytest.raises(KeyError):
        L.preference_loss("kto_pair", x, x, x, x)
    with pytest.raises(TypeError):
        L.preference_loss("hinge", x, x, x, x, label_smoothing=0.1)
    with pytest.raises(ValueError):
        L.preference_loss(["sigmoid", "hinge"], x, x, x, x, weights=[1.0])


# ----------------------------------------------------------------------------- KTO (unpaired)
UNPAIRED = [
    dict(prompt=p["prompt"], completion=p[key], label=(key == "chosen"))
    for p, key in zip(PAIRS + PAIRS[:1], ["chosen", "rejected", "chosen", "rejected", "chosen", "rejected"])
]


@pytest.fixture(scope="module")
def kto(tokenizer, tmp_path_factory):
    v = len(tokenizer)
    args = trl.KTOConfig(**_common_args(tmp_path_factory, len(UNPAIRED)), beta=0.1,
                         desirable_weight=1.0, undesirable_weight=1.3)
    # policy seed 1 / reference seed 0: on this batch the KL estimate is positive, so z0 is not clamped away
    trainer = trl.KTOTrainer(model=_tiny_llama(v, 1), ref_model=_tiny_llama(v, 0), args=args,
                             train_dataset=datasets.Dataset.from_list(UNPAIRED), processing_class=tokenizer)
    batch = _first_batch(trainer)
    logps, kl_logps = trainer.compute_ref_log_probs(trainer.model, batch)
    ref_logps, ref_kl_logps = trainer.compute_ref_log_probs(trainer.ref_model, batch)
    label = batch["label"].bool()
    return dict(trainer=trainer, batch=batch, label=label, kl=L.kto_kl(kl_logps, ref_kl_logps),
                logps=(logps[label], logps[~label], ref_logps[label], ref_logps[~label]),
                raw=(logps, ref_logps, kl_logps, ref_kl_logps))


def test_kto_logps_and_kl(kto):
    t, b = kto["trainer"], kto["batch"]
    logps, ref_logps, kl_logps, ref_kl_logps = kto["raw"]
    assert_close(logps, _manual_logps(t.model, b["input_ids"], b["attention_mask"], b["completion_mask"]),
                 rtol=1e-5, atol=1e-5)
    assert_close(kl_logps, _manual_logps(t.model, b["KL_input_ids"], b["KL_attention_mask"],
                                         b["KL_completion_mask"]), rtol=1e-5, atol=1e-5)
    assert kto["kl"] > 0.1  # the reference point is active in this fixture
    assert L.kto_kl(ref_kl_logps, kl_logps) == 0  # a negative estimate is clamped to 0


@pytest.mark.parametrize("beta", [0.1, 0.7])
@pytest.mark.parametrize("name", ["kto", "apo_zero_unpaired"])
def test_kto_losses_match_trl(kto, monkeypatch, name, beta):
    t = kto["trainer"]
    monkeypatch.setattr(t, "loss_type", name)
    monkeypatch.setattr(t, "beta", beta)
    with torch.no_grad():
        expected = t.compute_loss(t.model, kto["batch"])
    kw = dict(desirable_weight=1.0, undesirable_weight=1.3)
    if name == "kto":
        kw["kl"] = kto["kl"]
        metrics = t._metrics["train" if t.model.training else "eval"]
        assert metrics["kl"][-1] == pytest.approx(kto["kl"].item(), rel=1e-5)
    got = L.preference_loss(name, *kto["logps"], beta=beta, **kw)
    assert_close(got, expected, **TOL)


# ----------------------------------------------------------------------------- ORPO
@pytest.fixture(scope="module")
def orpo(tokenizer, tmp_path_factory):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from trl.experimental.orpo import ORPOConfig, ORPOTrainer
    args = ORPOConfig(**_common_args(tmp_path_factory, len(PAIRS)), beta=0.25, max_length=64)
    trainer = ORPOTrainer(model=_tiny_llama(len(tokenizer), 0), args=args,
                          train_dataset=datasets.Dataset.from_list(PAIRS), processing_class=tokenizer)
    return dict(trainer=trainer, batch=_first_batch(trainer))


def test_orpo_matches_trl(orpo):
    t, b = orpo["trainer"], orpo["batch"]
    with torch.no_grad():
        pc, pr, _, _, nll = t.concatenated_forward(t.model, b)[:5]
        loss, metrics = t.get_batch_loss_metrics(t.model, b)
    # TRL's ORPO log-probs are per-token averages over the completion
    for side, logps in (("chosen", pc), ("rejected", pr)):
        labels = b[f"{side}_labels"]
        assert_close(logps, _manual_logps(t.model, b[f"{side}_input_ids"], b[f"{side}_attention_mask"],
                                          labels != -100, average=True), rtol=1e-5, atol=1e-5)
    # ...while the NLL term is the mean token NLL of prompt AND chosen completion (all attended tokens)
    ids, att = b["chosen_input_ids"], b["chosen_attention_mask"]
    token_count = att[:, 1:].sum()
    assert_close(nll, -_manual_logps(t.model, ids, att, att).sum() / token_count, rtol=1e-5, atol=1e-5)
    term = L.preference_loss("orpo", pc, pr, beta=0.25)
    assert_close(nll + term, loss, **TOL)
    assert metrics["log_odds_ratio"] == pytest.approx(-term.item() / 0.25, rel=1e-5)
    # sanity of the odds maths: log odds(p) = log p - log(1 - p)
    p = torch.tensor([0.3, 0.05])
    direct = -0.25 * F.logsigmoid((p[0] / (1 - p[0])).log() - (p[1] / (1 - p[1])).log())
    assert_close(L.orpo(p[:1].log(), p[1:].log(), beta=0.25), direct.reshape(1))
