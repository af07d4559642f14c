"""The baseline for the overhead benchmark: the plain TRL script a user would write by hand.

Same model, data, batch, LoRA, precision, steps, logging and checkpointing as the dpokit config
the benchmark builds (see bench_overhead.py); the callback that takes turns with the other
benchmark processes is the same on both sides.

    python benchmarks/plain_trl.py --model DIR --data pairs.jsonl --out DIR --steps N
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--max-length", type=int, default=192)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--logging-steps", type=int, default=5)
    p.add_argument("--report-to", default="tensorboard")
    p.add_argument("--logging-dir", default=None)
    a = p.parse_args()

    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from torch.utils.tensorboard import SummaryWriter
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.integrations import TensorBoardCallback
    from trl import DPOConfig, DPOTrainer

    from common import record_batches, turnstile_callback

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    train = load_dataset("json", data_files=a.data, split="train")
    args = DPOConfig(
        output_dir=a.out, seed=0, data_seed=0, max_steps=a.steps, per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1, learning_rate=5e-5, warmup_steps=2, logging_steps=a.logging_steps,
        logging_first_step=True, save_strategy="steps", save_steps=a.steps, save_total_limit=3,
        max_length=a.max_length, beta=0.1, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 1.0],
        bf16=False, activation_checkpointing=False, optim="adamw_torch", use_cpu=True, report_to="none",
        log_level="warning",
    )
    turns = turnstile_callback()
    callbacks = [turns] if turns else []
    if a.report_to == "tensorboard":  # what `report_to: [tensorboard]` does in dpokit, written out by hand
        log_dir = a.logging_dir or os.path.join(a.out, "tb")
        callbacks.append(TensorBoardCallback(tb_writer=SummaryWriter(log_dir=log_dir)))
    peft = LoraConfig(r=a.rank, lora_alpha=2 * a.rank, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer, peft_config=peft,
                         callbacks=callbacks)
    if turns:
        record_batches(trainer, turns)
    trainer.train()
    trainer.save_model(os.path.join(a.out, "adapter"))


if __name__ == "__main__":
    main()
