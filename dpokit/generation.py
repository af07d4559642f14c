"""Greedy answers to chat prompts, batched for speed on a CPU.

Decoding a 135M model on a CPU costs about the same per step for 1 sequence as for 16: each
step reads every weight once. So the levers are how many sequences share a step and how many
steps there are. What this module does, each measured by benchmarks/bench_generation.py:

* prompts are sorted by token length and batched (little left padding), answers are returned
  in the original order;
* `transformers`' own `generate` decodes each batch greedily with its KV cache and stops the
  batch when every sequence has produced an end-of-turn token (answers are cut there);
* the batch is larger than before (32 instead of 8 or 16): per-token cost falls with batch size;
* `dtype`: the caller loads the model in bf16 to go faster on CPUs with native bfloat16
  (`greedy_dtype()`); that changes some greedy answers, fp32 does not (measured, docs/ifeval.md).

Greedy answers do not depend on the batching: a batch returns what one-by-one generation returns
(tested on a tiny model; on the real model in fp32 see the benchmark).
"""

from __future__ import annotations

import time
from typing import Sequence

Prompt = str | Sequence[dict]  # a user message, or a list of chat messages


def chat_texts(tokenizer, prompts: Sequence[Prompt]) -> list[str]:
    """Each prompt as the model sees it: the tokenizer's chat template with the assistant turn opened."""
    if tokenizer.chat_template is None:
        return [p if isinstance(p, str) else "\n".join(m["content"] for m in p) for p in prompts]
    return [tokenizer.apply_chat_template([{"role": "user", "content": p}] if isinstance(p, str) else list(p),
                                          add_generation_prompt=True, tokenize=False) for p in prompts]


def stop_token_ids(model, tokenizer) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS and any the model's generation config adds."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.insert(0, tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer has no eos_token and the model's generation_config no eos_token_id: "
                         "greedy answers would never stop; set tokenizer.eos_token")
    return ids


def greedy_dtype():
    """bfloat16 where the CPU computes it natively (AVX512-BF16, AMX, Arm BF16) or on CUDA, else float32."""
    import torch

    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    from .rules import cpu_has_native_bf16

    return torch.bfloat16 if cpu_has_native_bf16() else torch.float32


def generate_greedy(model, tokenizer, prompts: Sequence[Prompt], max_new_tokens: int = 256, batch_size: int = 32,
                    progress: str | None = None, strip: bool = True, stats: dict | None = None) -> list[str]:
    """Greedy completions for chat prompts, in the order given.

    `progress` is the label of a tqdm bar (None: no bar). `strip` removes surrounding whitespace
    (the IFEval harness keeps it, like lighteval). If `stats` is a dict it receives the counts
    behind the speed: prompts, new tokens, tokens that hit the limit, seconds.
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import GenerationConfig

    if max_new_tokens < 1 or batch_size < 1:
        raise ValueError(f"max_new_tokens and batch_size must be at least 1, got {max_new_tokens}, {batch_size}")
    texts = chat_texts(tokenizer, prompts)
    add_special = tokenizer.chat_template is None  # the template already wrote any BOS
    encoded = [tokenizer(t, add_special_tokens=add_special)["input_ids"] for t in texts]
    order = sorted(range(len(encoded)), key=lambda i: (-len(encoded[i]), i))  # longest first
    stops = stop_token_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops,
                              pad_token_id=pad_id, use_cache=True)
    answers: list[str | None] = [None] * len(texts)
    new_tokens = at_limit = 0
    start = time.perf_counter()
    was_training, model_device = model.training, next(model.parameters()).device
    model.eval()
    bar = tqdm(total=len(texts), desc=progress or "Generating", unit="prompt", disable=progress is None, leave=False)
    try:
        for first in range(0, len(order), batch_size):
            rows = order[first:first + batch_size]
            ids, mask = _left_pad([encoded[i] for i in rows], pad_id)
            with torch.inference_mode():
                out = model.generate(input_ids=ids.to(model_device), attention_mask=mask.to(model_device),
                                     generation_config=config)
            for row, generated in zip(rows, out[:, ids.shape[1]:].tolist()):
                cut = next((k for k, t in enumerate(generated) if t in stops), None)
                kept = generated if cut is None else generated[:cut]
                new_tokens += len(kept)
                at_limit += cut is None and len(generated) == max_new_tokens
                text = tokenizer.decode(kept, skip_special_tokens=True)
                answers[row] = text.strip() if strip else text
            bar.update(len(rows))
            bar.set_postfix(tok_s=f"{new_tokens / max(time.perf_counter() - start, 1e-9):.0f}")
    finally:
        bar.close()
        model.train(was_training)
    if stats is not None:
        stats.update(prompts=len(texts), new_tokens=new_tokens, answers_at_limit=at_limit,
                     seconds=round(time.perf_counter() - start, 2))
    return answers  # type: ignore[return-value]


def _left_pad(sequences: list[list[int]], pad_id: int):
    """(input_ids, attention_mask) with padding on the left, so every row ends where its answer begins."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for r, s in enumerate(sequences):
        if s:
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids, mask
