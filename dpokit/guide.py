"""The config guide's tips, and the verdicts the lessons reach on them.

`TIPS` lists every piece of advice in the post-training config guide (its beta, learning-rate,
memory, tuning, batch, model-size and dataset-size tips, and its list of loss types), each with an id.
A lesson that tests a tip ends with `show_verdicts([...])`: a table for the reader, and the same
rows as JSON in the cell's output (`MIME_TYPE`), which `benchmarks/guide_check.py` collects from the
executed notebooks into docs/guide_check.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from .stats import NOT_TESTABLE, VERDICTS, Estimate

MIME_TYPE = "application/vnd.dpokit.guide-check+json"


@dataclass(frozen=True)
class Tip:
    id: str
    section: str  # the heading of the guide it is under
    text: str  # the advice, as the guide gives it


TIPS: tuple[Tip, ...] = (
    Tip("beta-low", "Beta parameter guide", "β 0.05–0.1: aggressive optimization, faster learning"),
    Tip("beta-mid", "Beta parameter guide", "β 0.1–0.3: balanced (recommended starting point)"),
    Tip("beta-high", "Beta parameter guide", "β 0.3–0.5: conservative, more stable"),
    Tip("loss-types", "Post-Training Method", "loss types: sigmoid, hinge, ipo, kto_pair"),
    Tip("lr-high", "Learning rate guide", "too high (>1e-5): model collapse, nonsense outputs"),
    Tip("lr-band", "Learning rate guide", "recommended: 5e-7 to 1e-6"),
    Tip("lr-low", "Learning rate guide", "too low (<1e-7): very slow learning"),
    Tip("mem-batch", "Memory management", "reduce per_device_train_batch_size (e.g. from 4 to 2 or 1)"),
    Tip("mem-accumulation", "Memory management", "increase gradient_accumulation_steps to keep the effective batch size"),
    Tip("mem-lengths", "Memory management", "reduce max_seq_length, max_prompt_length or max_completion_length"),
    Tip("mem-checkpointing", "Memory management", "enable gradient_checkpointing"),
    Tip("mem-rank", "Memory management", "use a smaller LoRA rank (e.g. r=8 instead of r=16)"),
    Tip("mem-ref", "Memory management", "set use_ref_model: false (the policy model serves as reference)"),
    Tip("mem-bf16", "Memory management", "use bf16: true instead of fp16: false"),
    Tip("defaults", "Hyperparameter tuning", "start with β 0.1, lr 5e-7, LoRA r 16 / alpha 32, batch 2–4 per "
        "device, gradient accumulation 4–8"),
    Tip("slow", "Hyperparameter tuning", "if learning too slowly: increase the LR slightly or decrease β"),
    Tip("degrade", "Hyperparameter tuning", "if model outputs degrade: decrease the LR or increase β"),
    Tip("underfit", "Hyperparameter tuning", "if underfitting: increase the LoRA rank or the number of epochs"),
    Tip("batch-formula", "Effective batch size", "effective batch = per_device_train_batch_size × "
        "gradient_accumulation_steps × num_gpus"),
    Tip("batch-size", "Effective batch size", "larger effective batch sizes (16–32) generally work better for DPO"),
    Tip("model-small", "Model-specific tips", "small models (<1B): can use higher learning rates (1e-6); may need "
        "less regularization (lower β)"),
    Tip("model-medium", "Model-specific tips", "medium models (1B–7B): standard settings work well; consider r=16–32"),
    Tip("model-large", "Model-specific tips", "large models (>7B): lower learning rates (5e-7); may need larger LoRA "
        "rank (r=32–64); definitely use gradient checkpointing"),
    Tip("data-under-1k", "Dataset size", "<1K samples: may overfit, consider more epochs"),
    Tip("data-1k-10k", "Dataset size", "1K–10K samples: good for experimentation"),
    Tip("data-10k-100k", "Dataset size", "10K–100K samples: ideal for robust training"),
    Tip("data-over-100k", "Dataset size", ">100K samples: can use subsampling for faster iteration"),
)
TIP_IDS = tuple(t.id for t in TIPS)


def tip(tip_id: str) -> Tip:
    """The tip with this id (KeyError names the known ids)."""
    for t in TIPS:
        if t.id == tip_id:
            return t
    raise KeyError(f"unknown guide tip {tip_id!r}; known: {', '.join(TIP_IDS)}")


@dataclass
class Verdict:
    """What a lesson concluded about (part of) a tip, with the figure it rests on."""

    tip: str  # a TIPS id
    verdict: str  # one of dpokit.stats.VERDICTS
    figure: str  # the measured figure with its interval, in words ("" when not testable)
    why: str  # one sentence: what the figure means for the tip, or why it cannot be tested here
    section: str = ""  # the notebook section that produced it ("07 §3")
    part: str = ""  # which half of a two-part tip ("learning rate", "β"), if any
    measured: bool = True
    data: dict[str, Any] = field(default_factory=dict)  # the estimates behind it, for the record

    def __post_init__(self):
        tip(self.tip)
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict {self.verdict!r} is not one of {VERDICTS}")
        if self.verdict == NOT_TESTABLE:
            self.measured = False


def estimates(**named: Estimate) -> dict[str, Any]:
    """Estimates as plain dicts for `Verdict.data`."""
    return {k: v.as_dict() for k, v in named.items()}


def verdicts_markdown(verdicts: list[Verdict]) -> str:
    rows = ["| tip | verdict | measured | why |", "|---|---|---|---|"]
    for v in verdicts:
        name = f"{tip(v.tip).text}" + (f" — *{v.part}*" if v.part else "")
        rows.append(f"| {name} | **{v.verdict}** | {v.figure or '—'} | {v.why} |")
    return "\n".join(rows)


def show_verdicts(verdicts: list[Verdict], notebook: str) -> None:
    """Display the verdicts as a table, with the JSON rows `benchmarks/guide_check.py` collects."""
    from IPython.display import display

    payload = _finite({"notebook": notebook, "verdicts": [asdict(v) for v in verdicts]})
    display({MIME_TYPE: payload, "text/markdown": verdicts_markdown(verdicts),
             "text/plain": json.dumps(payload, indent=1)[:2000]}, raw=True)


def _finite(value):
    """JSON has no NaN: missing interval ends become null."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def collect(notebook_json: dict) -> list[dict]:
    """The verdict payloads in an executed notebook (its outputs of type MIME_TYPE)."""
    found = []
    for cell in notebook_json.get("cells", []):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if MIME_TYPE in data:
                payload = data[MIME_TYPE]
                found.append(json.loads(payload) if isinstance(payload, str) else payload)
    return found
