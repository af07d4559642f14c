"""Preference-optimisation losses as small pure functions, written to match TRL 1.16 exactly.

Every paired loss takes the per-sequence log-probabilities TRL computes (summed over the completion
tokens, prompt excluded), each of shape [B]:

    policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps

plus `beta` and its own parameters, and returns the per-example losses [B]. TRL's loss for a batch
is their mean (`preference_loss` does that). Notation in the docstrings:

    rc = log pi(y_c|x) - log ref(y_c|x)    (chosen log-ratio)
    rr = log pi(y_r|x) - log ref(y_r|x)    (rejected log-ratio)
    d  = rc - rr                           (so beta*d is the "reward margin" TRL logs)

`rewards(...) = beta * (policy - ref)` is the implicit reward behind TRL's `rewards/chosen`,
`rewards/rejected` and `rewards/margins` metrics. The module holds no state.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "LOSSES", "preference_loss", "rewards", "margin_curve", "kto_kl",
    "sigmoid", "hinge", "ipo", "robust", "exo_pair", "nca_pair", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sigmoid_norm", "kto", "apo_zero_unpaired", "orpo",
]


def rewards(policy_logps: Tensor, ref_logps: Tensor, beta: float = 0.1) -> Tensor:
    """Implicit DPO reward beta * (log pi - log ref): TRL's `rewards/chosen` is its batch mean (likewise KTO)."""
    return beta * (policy_logps - ref_logps)


def _ratios(pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor]:
    return pc - rc, pr - rr


# ----------------------------------------------------------------------------- paired (DPOTrainer)
def sigmoid(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """DPO: -log sigmoid(beta * d).  Rafailov et al. 2023, arXiv:2305.18290.

    At d = 0 the loss is ln 2. TRL 1.16 ignores `label_smoothing` here (older TRL used it for cDPO;
    use `robust` for that now)."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * (c - r))


def hinge(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """SLiC hinge: max(0, 1 - beta * d).  Zhao et al. 2023, arXiv:2305.10425."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.relu(1 - beta * (c - r))


def ipo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1, *,
        chosen_lengths, rejected_lengths):
    """IPO: (rc/|y_c| - rr/|y_r| - 1/(2 beta))^2.  Azar et al. 2023, arXiv:2310.12036 (Eq. 17, tau = beta).

    TRL divides each summed log-ratio by its completion length (tokens, clamped to >= 1) before the
    square: the per-token-average form. So IPO needs `chosen_lengths` / `rejected_lengths` [B]."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    d = c / chosen_lengths.clamp(min=1.0) - r / rejected_lengths.clamp(min=1.0)
    return (d - 1 / (2 * beta)) ** 2


def robust(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
           label_smoothing=0.0):
    """Robust DPO, eps = label_smoothing (flip rate, in [0, 0.5)):
    [-(1-eps) log s(beta d) + eps log s(-beta d)] / (1 - 2 eps).  Chowdhury et al. 2024, arXiv:2403.00409.
    An unbiased de-noised loss: still ln 2 at d = 0, but it can go negative for large d when eps > 0."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (c - r)
    eps = label_smoothing
    return (-(1 - eps) * F.logsigmoid(z) + eps * F.logsigmoid(-z)) / (1 - 2 * eps)


def exo_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
             label_smoothing=1e-3):
    """EXO: KL(q || p) with q = [s(beta d), s(-beta d)], p = [1-eps, eps], eps = label_smoothing > 0.
    Ji et al. 2024, arXiv:2402.00856 (Eq. 16). TRL rejects label_smoothing == 0 (log 0); paper uses 1e-3."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (c - r)
    eps = torch.as_tensor(label_smoothing, dtype=z.dtype, device=z.device)
    return (torch.sigmoid(z) * (F.logsigmoid(z) - torch.log1p(-eps))
            + torch.sigmoid(-z) * (F.logsigmoid(-z) - torch.log(eps)))


def nca_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """NCA: -log s(beta rc) - 1/2 log s(-beta rc) - 1/2 log s(-beta rr).  Chen et al. 2024, arXiv:2402.05369."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * c) - 0.5 * F.logsigmoid(-beta * c) - 0.5 * F.logsigmoid(-beta * r)


def bco_pair(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """BCO (paired): -log s(beta rc) - log s(-beta rr).  Jung et al. 2024, arXiv:2404.04656.

    TRL 1.16's DPOTrainer keeps no running reward mean (the paper's shift delta, which older TRL
    tracked): the shift is 0, so this is stateless."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return -F.logsigmoid(beta * c) - F.logsigmoid(-beta * r)


def sppo_hard(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """SPPO (hard P = 1/0): (rc - 1/(2 beta))^2 + (rr + 1/(2 beta))^2.  Wu et al. 2024, arXiv:2405.00675.
    Summed log-ratios, no length normalisation (unlike TRL's IPO)."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return (c - 0.5 / beta) ** 2 + (r + 0.5 / beta) ** 2


def _smoothed_logistic(delta: Tensor, beta: float, eps: float) -> Tensor:
    return -F.logsigmoid(beta * delta) * (1 - eps) - F.logsigmoid(-beta * delta) * eps


def aot(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
        label_smoothing=0.0):
    """AOT (paired): smoothed -log s(beta * (sort(pc - pr) - sort(refc - refr))).  Melnyk et al. 2024,
    arXiv:2406.05882. Sorting runs across the batch, so example i's loss depends on the others."""
    policy = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0).values
    ref = torch.sort(ref_chosen_logps - ref_rejected_logps, dim=0).values
    return _smoothed_logistic(policy - ref, beta, label_smoothing)


def aot_unpaired(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
                 label_smoothing=0.0):
    """AOT (unpaired): smoothed -log s(beta * (sort(rc) - sort(rr))), sorted across the batch.
    Melnyk et al. 2024, arXiv:2406.05882."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return _smoothed_logistic(torch.sort(c, dim=0).values - torch.sort(r, dim=0).values, beta, label_smoothing)


def apo_zero(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """APO-zero: (1 - s(beta rc)) + s(beta rr); push chosen up, rejected down.  D'Oosterlinck et al. 2024,
    arXiv:2408.06266 (Eq. 7). For when chosen outputs beat the model's own."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return 1 - torch.sigmoid(beta * c) + torch.sigmoid(beta * r)


def apo_down(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1):
    """APO-down: s(beta rc) + (1 - s(beta d)); push both down, rejected more.  arXiv:2408.06266 (Eq. 8).
    For when the chosen outputs are worse than the model's own."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.sigmoid(beta * c) + 1 - torch.sigmoid(beta * (c - r))


def discopop(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
             tau=0.05):
    """DiscoPOP (log-ratio modulated): with z = beta d, m = s(z / tau):  (1 - m) * -log s(z) + m * exp(-z).
    Chris Lu et al. 2024, arXiv:2406.08414 (Eq. 5). `tau` is TRL's `discopop_tau`."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    z = beta * (c - r)
    m = torch.sigmoid(z / tau)
    return -F.logsigmoid(z) * (1 - m) + torch.exp(-z) * m


def sigmoid_norm(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1, *,
                 chosen_lengths, rejected_lengths):
    """Length-normalised DPO: -log s(beta * (rc/|y_c| - rr/|y_r|)), lengths in completion tokens
    (clamped to >= 1). The length-normalised DPO of the Tulu 3 report, arXiv:2411.15124."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    d = c / chosen_lengths.clamp(min=1.0) - r / rejected_lengths.clamp(min=1.0)
    return -F.logsigmoid(beta * d)


# ----------------------------------------------------------------------------- unpaired (KTOTrainer)
def kto_kl(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z0 = max(0, mean(log pi(y'|x) - log ref(y'|x))) over mismatched pairs (x, y'),
    detached (TRL pairs each prompt with the previous row's completion, cyclically within the batch)."""
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1, *,
        kl, desirable_weight=1.0, undesirable_weight=1.0):
    """KTO: desirable  w_D (1 - s(beta (rc - z0))),  undesirable  w_U (1 - s(beta (z0 - rr))),  z0 = `kl`
    (see `kto_kl`).  Ethayarajh et al. 2024, arXiv:2402.01306 (Eq. 7).

    Inputs are unpaired (chosen = label True rows, rejected = label False, any sizes). Returns the
    concatenation [desirable..., undesirable...]; TRL's loss is its plain mean over all rows."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    kl = torch.as_tensor(kl, dtype=c.dtype, device=c.device)
    return torch.cat([desirable_weight * (1 - torch.sigmoid(beta * (c - kl))),
                      undesirable_weight * (1 - torch.sigmoid(beta * (kl - r)))])


def apo_zero_unpaired(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta=0.1,
                      *, desirable_weight=1.0, undesirable_weight=1.0):
    """APO-zero on unpaired rows (KTOTrainer): w_D (1 - s(beta rc)), w_U s(beta rr), concatenated like `kto`.
    arXiv:2408.06266. No KL term."""
    c, r = _ratios(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    return torch.cat([desirable_weight * (1 - torch.sigmoid(beta * c)),
                      undesirable_weight * torch.sigmoid(beta * r)])


# ----------------------------------------------------------------------------- reference-free (ORPO)
def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0, stable on both sides of -ln 2."""
    return torch.where(x < -math.log(2), torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps=None, ref_rejected_logps=None, beta=0.1):
    """ORPO odds-ratio term: -beta log s(log odds(y_c) - log odds(y_r)), odds(y) = p / (1 - p).
    Hong et al. 2024, arXiv:2403.07691 (beta = lambda). Total ORPO loss = NLL(chosen) + mean(this).

    Unlike every other loss here the log-probs are per-token AVERAGES (TRL's ORPOTrainer uses
    `average_log_prob=True`), there is no reference model (ref_* are ignored) and the maths runs in float32."""
    pc, pr = policy_chosen_logps.float(), policy_rejected_logps.float()
    log_odds = (pc - pr) - (_log1mexp(pc) - _log1mexp(pr))
    return -beta * F.logsigmoid(log_odds)


LOSSES: dict[str, Callable[..., Tensor]] = {
    f.__name__: f for f in (sigmoid, hinge, ipo, robust, exo_pair, nca_pair, bco_pair, sppo_hard, aot, aot_unpaired,
                            apo_zero, apo_down, discopop, sigmoid_norm, kto, apo_zero_unpaired, orpo)
}


def _call(name: str, kwargs: dict, used: set, *logps, beta: float) -> Tensor:
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    fn = LOSSES[name]
    accepted = inspect.signature(fn).parameters
    mine = {k: v for k, v in kwargs.items() if k in accepted}
    used.update(mine)
    return fn(*logps, beta=beta, **mine)


def preference_loss(name: str | Sequence[str], policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
                    ref_chosen_logps: Tensor | None = None, ref_rejected_logps: Tensor | None = None, *,
                    beta: float = 0.1, weights: Sequence[float] | None = None, reduction: str = "mean",
                    **kwargs) -> Tensor:
    """The loss `name` (a key of LOSSES) on one batch; with reduction="mean" this is TRL's reported loss.

    `name` may be a list, like TRL's `loss_type=[...]` with `loss_weights`: sum_i w_i * mean(loss_i).
    Extra keyword arguments (label_smoothing, chosen_lengths, kl, tau, ...) go to the losses that take
    them; one no loss takes is an error."""
    names = [name] if isinstance(name, str) else list(name)
    weights = [1.0] * len(names) if weights is None else list(weights)
    if len(weights) != len(names):
        raise ValueError(f"{len(weights)} weights for {len(names)} losses")
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    used: set = set()
    logps = (policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    parts = [w * _call(n, kwargs, used, *logps, beta=beta) for n, w in zip(names, weights)]
    if unused := set(kwargs) - used:
        raise TypeError(f"argument(s) {sorted(unused)} not used by loss(es) {names}")
    if reduction == "mean":
        return sum(p.mean() for p in parts)
    return sum(parts)


_NOT_A_MARGIN_FUNCTION = {
    "aot": "sorts across the batch, so one example's loss is not a function of its own margin",
    "aot_unpaired": "sorts across the batch, so one example's loss is not a function of its own margin",
    "orpo": "has no reference model and no reward margin (its input is the average log-prob, not a margin)",
}


def margin_curve(name: str, margins: Tensor | Sequence[float], beta: float = 0.1, *,
                 rejected_reward: float | None = None, **kwargs) -> Tensor:
    """Loss of `name` as a function of the reward margin m = beta*d (x axis of a loss-vs-margin plot).

    Losses that only see d (sigmoid, hinge, ipo, robust, exo_pair, discopop, sigmoid_norm) need nothing
    else. The others also depend on where the margin sits: by default the rewards are split
    symmetrically (chosen +m/2, rejected -m/2); pass `rejected_reward` to pin the rejected reward
    instead (chosen = rejected_reward + m). IPO / sigmoid_norm use length 1 unless you pass lengths.
    KTO uses kl=0 unless given; its value is the mean of the desirable and undesirable terms."""
    if name in _NOT_A_MARGIN_FUNCTION:
        raise ValueError(f"{name} {_NOT_A_MARGIN_FUNCTION[name]}")
    m = torch.as_tensor(margins, dtype=torch.get_default_dtype())
    rej = -m / 2 if rejected_reward is None else torch.full_like(m, rejected_reward)
    chosen_ratio, rejected_ratio = (rej + m) / beta, rej / beta
    zeros = torch.zeros_like(m)
    if name in ("ipo", "sigmoid_norm"):
        kwargs.setdefault("chosen_lengths", torch.ones_like(m))
        kwargs.setdefault("rejected_lengths", torch.ones_like(m))
    if name == "kto":
        kwargs.setdefault("kl", 0.0)
    out = preference_loss(name, chosen_ratio, rejected_ratio, zeros, zeros, beta=beta, reduction="none", **kwargs)
    if name in ("kto", "apo_zero_unpaired"):
        out = (out[: len(m)] + out[len(m):]) / 2
    return out
