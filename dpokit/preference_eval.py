"""Reward accuracy and margins on the validation pairs, before and after training.

TRL logs `eval_rewards/*` during training only; this scores every validation pair of a finished
run four ways — chosen and rejected, under the base model (adapter off) and the trained one
(adapter on) — with the same tokens the trainer saw (the guide's prompt/completion limits and
`max_seq_length`), and derives:

- reward accuracy and margin, after (the trained adapter) and before (the untrained one). The
  reward is the method's: β·(log p_policy − log p_ref) for DPO/IPO/KTO, so before training the
  policy *is* the reference, every reward is 0 and the strict `>` gives accuracy 0 — computed
  here, not assumed (with `ref_model_id` another model is the reference and "before" is not 0);
  for ORPO β·(mean per-token log p_policy), whose "before" is the base model's own.
- how often the model itself gives the chosen answer the higher log-probability (summed over its
  tokens) — the comparable before/after figure for methods with a reference: the base model's
  preference, then the trained one's.
- the change in the mean log-probability of the chosen (and of the rejected) answers: whether
  training made the preferred answers more likely, or only the rejected ones less likely.
"""

from __future__ import annotations

from typing import Any

from .methods import get_method


def pair_tokens(tokenizer, row: dict, limits: tuple[int | None, int | None, int]) -> dict[str, list[int]]:
    """(prompt, chosen, rejected) ids of a pair as the trainer cuts them: the prompt keeps its end (and BOS),
    completions their start, then prompt + completion is cut to `max_seq_length` (TRL's keep_start)."""
    from .tokens import tokenize_pair, truncate_ids

    max_prompt, max_completion, max_length = limits
    ids = tokenize_pair(tokenizer, row)
    prompt = truncate_ids(ids["prompt_ids"], max_prompt, "end", tokenizer.bos_token_id)
    out = {"prompt": prompt}
    for side in ("chosen", "rejected"):
        completion = truncate_ids(ids[f"{side}_ids"], max_completion, "start")
        out[side] = completion[: max(max_length - len(prompt), 0)]
    return out


def completion_logps(model, sequences: list[tuple[list[int], list[int]]], pad_id: int,
                     batch_size: int = 4) -> list[tuple[float, int]]:
    """(summed log-prob of the completion given the prompt, completion tokens) for each (prompt, completion).

    Left-padded batches with explicit position ids (so positions equal an unpadded forward's, for absolute-
    position models too); only the completion positions are projected through the LM head."""
    import torch

    out: list[tuple[float, int]] = []
    device = next(model.parameters()).device
    for start in range(0, len(sequences), batch_size):
        chunk = sequences[start:start + batch_size]
        width = max(len(p) + len(c) for p, c in chunk)
        keep = max(len(c) for _, c in chunk) + 1
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for i, (p, c) in enumerate(chunk):
            seq = p + c
            ids[i, width - len(seq):] = torch.tensor(seq)
            mask[i, width - len(seq):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           position_ids=positions.to(device), logits_to_keep=keep, use_cache=False).logits
        logps = torch.log_softmax(logits[:, :-1].float(), dim=-1)  # position t predicts token t + 1
        targets = ids[:, width - keep + 1:].to(device)
        token_logps = logps.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        for i, (_, c) in enumerate(chunk):
            n = len(c)
            out.append((float(token_logps[i, token_logps.shape[1] - n:].sum()) if n else 0.0, n))
    return out


def score_pairs(model, tokenizer, rows, limits, batch_size: int = 4) -> dict[str, list[tuple[float, int]]]:
    """{'chosen': [...], 'rejected': [...]} completion log-probs of every pair under `model`."""
    tokens = [pair_tokens(tokenizer, row, limits) for row in rows]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {side: completion_logps(model, [(t["prompt"], t[side]) for t in tokens], pad, batch_size)
            for side in ("chosen", "rejected")}


def _rewards(scores: dict, reference: dict | None, beta: float, per_token: bool) -> tuple[list[float], list[float]]:
    """Rewards of chosen and rejected: β·(log p − log p_ref), or β·(mean per-token log p) without a reference."""
    def one(side):
        values = []
        for i, (logp, n) in enumerate(scores[side]):
            if per_token:
                values.append(beta * logp / max(n, 1))
            else:
                values.append(beta * (logp - reference[side][i][0]))
        return values
    return one("chosen"), one("rejected")


def _summary(chosen: list[float], rejected: list[float]) -> dict[str, float]:
    n = len(chosen)
    margins = [c - r for c, r in zip(chosen, rejected)]
    return {"reward_accuracy": round(sum(m > 0 for m in margins) / n, 4),
            "reward_margin": round(sum(margins) / n, 4),
            "rewards_chosen": round(sum(chosen) / n, 4), "rewards_rejected": round(sum(rejected) / n, 4)}


def preference_metrics(base: dict, trained: dict, reference: dict, beta: float, method: str) -> dict[str, Any]:
    """The before/after block of eval.json from the three sets of completion log-probs (see the module doc)."""
    uses_reference = get_method(method).uses_reference
    ref = reference if uses_reference else None
    before = _summary(*_rewards(base, ref, beta, not uses_reference))
    after = _summary(*_rewards(trained, ref, beta, not uses_reference))
    n = len(base["chosen"])

    def prefers(scores):
        deltas = [c[0] - r[0] for c, r in zip(scores["chosen"], scores["rejected"])]
        return round(sum(d > 0 for d in deltas) / n, 4), round(sum(deltas) / n, 4)

    (base_pref, base_delta), (trained_pref, trained_delta) = prefers(base), prefers(trained)

    def mean_logp(scores, side):
        return round(sum(v[0] for v in scores[side]) / n, 4)

    logp = {side: {"base": mean_logp(base, side), "trained": mean_logp(trained, side)} for side in ("chosen", "rejected")}
    for side in logp:
        logp[side]["change"] = round(logp[side]["trained"] - logp[side]["base"], 4)
    return {
        "pairs": n, "beta": beta, "method": method,
        "reward": "β × (log p_policy − log p_ref), log-probs summed over the answer" if uses_reference
        else "β × mean per-token log p_policy of the answer (reference-free)",
        "before": before, "after": after,
        "prefers_chosen": {"base": base_pref, "trained": trained_pref},
        "logp_margin": {"base": base_delta, "trained": trained_delta},
        # mean summed log-prob of the answers under the base and the trained model: DPO can widen the margin by
        # pushing the rejected answers down while the chosen ones fall too (a negative change for chosen)
        "logp": logp,
    }


def evaluate_preferences(model, tokenizer, config, rows, reference_model=None, batch_size: int = 4) -> dict:
    """Score `rows` (validation pairs) with `model` (a PeftModel) adapter off and on; the reference is
    `reference_model` when given (a separate `ref_model_id`), else the base with the adapter off."""
    t = config.training
    limits = (t.max_prompt_length, t.max_completion_length, t.max_seq_length)
    model.eval()
    with model.disable_adapter():
        base = score_pairs(model, tokenizer, rows, limits, batch_size)
    trained = score_pairs(model, tokenizer, rows, limits, batch_size)
    reference = base if reference_model is None else score_pairs(reference_model, tokenizer, rows, limits, batch_size)
    return preference_metrics(base, trained, reference, config.post_training.beta, config.post_training.method)


def validation_rows(config, tokenizer):
    """The run's validation split (None when it has none), exactly as training split and formatted it."""
    from .data import load_preference_data

    if config.dataset.validation_split <= 0:
        return None
    return load_preference_data(config, tokenizer.chat_template is not None).eval


def evaluate_run_preferences(run, model=None, tokenizer=None) -> dict | None:
    """Score a finished run's validation pairs (None without a validation split) and store the result in
    its eval.json under `preference` (other keys of an existing eval.json are kept)."""
    from .rundir import EVAL_FILE, RunDir

    run = run if isinstance(run, RunDir) else RunDir(run)
    config = run.config()
    if config.dataset.validation_split <= 0:
        return None
    if model is None:
        model, tokenizer = run.load_trained()
    rows = validation_rows(config, tokenizer)
    result = evaluate_preferences(model, tokenizer, config, rows, reference_for(config, run.model_spec(config)))
    run.write_json(EVAL_FILE, {**(run.read_json(EVAL_FILE) or {"run_dir": str(run)}), "preference": result})
    return result


def describe(result: dict) -> str:
    """One line for the console: reward accuracy and margin before -> after, and the models' own preference."""
    b, a, p = result["before"], result["after"], result["prefers_chosen"]
    return (f"{result['pairs']} validation pairs: reward accuracy {b['reward_accuracy']:.2f} -> "
            f"{a['reward_accuracy']:.2f}, margin {b['reward_margin']:+.3f} -> {a['reward_margin']:+.3f}; "
            f"chosen more likely than rejected: base {100 * p['base']:.0f}% -> trained {100 * p['trained']:.0f}%"
            + (f"; log p(chosen) {result['logp']['chosen']['change']:+.2f}, log p(rejected) "
               f"{result['logp']['rejected']['change']:+.2f} nats" if "logp" in result else ""))


def reference_for(config, spec):
    """A separate reference model when the run's reference is not its base model, else None."""
    pt = config.post_training
    if not get_method(pt.method).uses_reference or not pt.use_ref_model or not pt.ref_model_id \
            or pt.ref_model_id == spec.huggingface_id:
        return None
    import torch

    from .models import load_model
    from .scaling import config_model_dtype

    cuda = torch.cuda.is_available()
    return load_model(pt.ref_model_id, pt.ref_model_trust_remote_code,
                      config_model_dtype(config, torch.cuda.device_count() if cuda else 0),
                      device="cuda" if cuda else "cpu",
                      attn_implementation=config.model_loading.attn_implementation).eval()
