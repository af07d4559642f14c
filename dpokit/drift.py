"""How far a trained policy moved from its reference: exact per-token KL on held-out answers."""

from __future__ import annotations

from pathlib import Path

from .rundir import RunDir


def _as_chat(row: dict) -> dict:
    if isinstance(row["chosen"], list):
        return row
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


def token_drift(run_dir: str | Path | RunDir, num_prompts: int = 16, batch_size: int = 4, model=None,
                tokenizer=None) -> float:
    """Mean per-token KL(pi || pi_ref) on the chosen answers of held-out pairs, in nats per token.

    At each answer position it compares the trained policy's next-token distribution with the
    reference's (the adapter switched off) over the whole vocabulary: exact, no sampling. It is
    the quantity DPO's beta puts a price on; 0 = no drift."""
    import torch

    from .tokens import tokenize_pair

    run = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
    config = run.config()
    if model is None:
        model, tokenizer = run.load_trained()
    chat = tokenizer.chat_template is not None and config.dataset.chat_template != "never"
    seqs = []
    for row in run.heldout(num_prompts, config):
        ids = tokenize_pair(tokenizer, _as_chat(row) if chat else row)
        seqs.append((ids["prompt_ids"] + ids["chosen_ids"], len(ids["prompt_ids"])))
    total, count = 0.0, 0
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        width = max(len(s) for s, _ in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        answer = torch.zeros(len(chunk), width - 1, dtype=torch.bool)  # positions that predict answer tokens
        for i, (s, n_prompt) in enumerate(chunk):
            ids[i, :len(s)], mask[i, :len(s)] = torch.tensor(s), 1
            answer[i, n_prompt - 1:len(s) - 1] = True
        ids, mask = ids.to(model.device), mask.to(model.device)
        with torch.no_grad():
            policy = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
            with model.disable_adapter():
                ref = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[:, :-1].float(), -1)
        kl = (policy.exp() * (policy - ref)).sum(-1).cpu()
        total, count = total + kl[answer].sum().item(), count + int(answer.sum())
    return total / max(count, 1)
