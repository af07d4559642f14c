"""Take a trained model away: export the adapter (PEFT) or a merged model, and chat with a run.

`export_run(run_dir, out_dir)` writes the LoRA adapter with its tokenizer (load it with
`PeftModel.from_pretrained(base, out_dir)`); with `merge=True` it writes a full model with the
adapter folded into the weights, which plain `AutoModelForCausalLM.from_pretrained(out_dir)` and
`transformers.pipeline("text-generation", model=out_dir)` load; it is saved in the dtype the run
trained in, and a QLoRA run's adapter is merged into the unquantized base. `chat(run_dir)` answers prompts
typed on stdin, optionally next to the base model's answers.
"""

from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime
from pathlib import Path
from typing import TextIO

from .errors import DpokitError
from .rundir import RunDir


def check_export_target(run: RunDir, out: Path) -> None:
    """An export writes a new (or empty) folder outside the run; never onto a file or into a run."""
    if out.exists() and not out.is_dir():
        raise DpokitError(f"--out: {out} is a file; give a new folder to write the export into")
    if out.exists() and any(out.iterdir()):
        raise DpokitError(f"--out: {out} exists and is not empty; choose a new directory (nothing is overwritten)")
    source = run.path.resolve()
    if out == source or source in out.parents:
        raise DpokitError(f"--out: {out} is inside the run directory {source}; choose a folder outside it "
                          "(a run directory is never changed)")
    inside_run = next((p for p in out.parents if RunDir(p).is_run()), None)
    if inside_run is not None:
        raise DpokitError(f"--out: {out} is inside another run directory ({inside_run}); choose a folder outside it")


def export_run(run_dir: str | Path, out_dir: str | Path, merge: bool = False, trust_remote_code: bool = False) -> Path:
    """Write the run's adapter + tokenizer (or, with merge, a full merged model + tokenizer) to out_dir."""
    run = RunDir(Path(run_dir).expanduser().resolve())
    run.require_adapter()
    summary = run.summary()
    out = Path(out_dir).expanduser().resolve()
    check_export_target(run, out)
    spec = run.model_spec()
    model_id = spec.huggingface_id
    info = {"source_run": str(run), "base_model": model_id, "merged": merge, "method": summary.get("method"),
            "loss_type": summary.get("loss_type"), "steps": summary.get("steps"),
            "exported": datetime.now().isoformat(timespec="seconds")}
    if not merge:
        shutil.copytree(run.adapter_dir, out, dirs_exist_ok=True)
        _write_info(out, info, "PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), DIR)")
        return out

    from .compat import quiet_library_noise

    quiet_library_noise()
    from .models import model_dtype_name

    config = run.config()
    print(f"   merging the adapter into {model_id} ...", flush=True)
    model, tokenizer = run.load_trained(trust_remote_code=trust_remote_code, quantized=False)
    merged = model.merge_and_unload()
    info["dtype"] = model_dtype_name(merged)  # saved in the dtype the model trained in (model_loading.dtype)
    if config.quantization.load_in != "none":
        info["quantization_note"] = (f"the run trained on a {config.quantization.load_in} base; the adapter was "
                                     f"merged into the unquantized base in {info['dtype']}, so the merged model's "
                                     "answers can differ slightly from the quantized model's")
        print(f"   note: {info['quantization_note']}", flush=True)
    merged.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))
    _write_info(out, info, "AutoModelForCausalLM.from_pretrained(DIR) or pipeline('text-generation', model=DIR)")
    return out


def _write_info(out: Path, info: dict, how: str) -> None:
    info["load_with"] = how
    (out / "dpokit_export.json").write_text(json.dumps(info, indent=2, default=str) + "\n", encoding="utf-8")


class ChatModel:
    """A finished run's model in memory: answers with the adapter on (trained) or off (base)."""

    def __init__(self, run_dir: str | Path, max_new_tokens: int = 128, trust_remote_code: bool = False):
        from .compat import quiet_library_noise

        quiet_library_noise()
        run = RunDir(Path(run_dir).expanduser().resolve())
        self.run_dir, self.max_new_tokens = run.path, max_new_tokens
        self.model, self.tokenizer = run.load_trained(trust_remote_code=trust_remote_code)

    def answer(self, prompt: str, base: bool = False) -> str:
        """Greedy answer to one user message (base=True: the adapter switched off)."""
        from contextlib import nullcontext

        from .evaluate import generate

        with self.model.disable_adapter() if base else nullcontext():
            return generate(self.model, self.tokenizer, [prompt], self.max_new_tokens)[0]

    def compare(self, prompt: str) -> dict[str, str]:
        """{'base': ..., 'trained': ...} answers to the same prompt."""
        return {"base": self.answer(prompt, base=True), "trained": self.answer(prompt)}


def chat(run_dir: str | Path, compare: bool = False, max_new_tokens: int = 128,
         stdin: TextIO | None = None, stdout: TextIO | None = None, trust_remote_code: bool = False) -> int:
    """Answer each line read from stdin until 'exit' or end of input (Ctrl-D); returns prompts answered."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    session = ChatModel(run_dir, max_new_tokens, trust_remote_code=trust_remote_code)
    interactive = stdin.isatty()
    print(f"Chatting with {session.run_dir.name}" + (" (base model answers first)" if compare else "")
          + ". One prompt per line; 'exit' or Ctrl-D ends.", file=stdout, flush=True)
    answered = 0
    while True:
        if interactive:
            print("you> ", end="", file=stdout, flush=True)
        line = stdin.readline()
        prompt = line.strip()
        if not line or prompt.lower() in ("exit", "quit"):
            return answered
        if not prompt:
            continue
        if not interactive:
            print(f"you> {prompt}", file=stdout)
        if compare:
            print(f"base>    {session.answer(prompt, base=True)}", file=stdout)
            print(f"trained> {session.answer(prompt)}", file=stdout, flush=True)
        else:
            print(f"model> {session.answer(prompt)}", file=stdout, flush=True)
        answered += 1
