"""Training-health watch: plain-words alarms, a stop on NaN/inf loss, a clean stop on Ctrl-C.

The alarms follow the signatures users of DPO tools report: a loss stuck at ln 2 (nothing is
learning), a loss of ~0 with accuracy 1.0 in the first steps (leak or trivial data), margins
growing while the chosen answers' log-probs fall (over-optimisation), gradient-norm spikes.
"""

from __future__ import annotations

import math
import signal
import statistics

from transformers import TrainerCallback

LN2 = math.log(2)


def health_alarms(history: list[dict], total_steps: int | None = None) -> list[str]:
    """Alarms for a list of logged training records (metrics.jsonl rows), in plain words."""
    train = [r for r in history if "loss" in r and "eval_loss" not in r and "train_runtime" not in r]
    if not train:
        return []
    alarms = []
    steps = [r["step"] for r in train]
    losses = [r["loss"] for r in train]
    late = [r for r in train if r["step"] >= max(10, 0.5 * (total_steps or steps[-1]))]
    if len(late) >= 2 and all(abs(r["loss"] - LN2) < 2e-3 for r in late):
        alarms.append(f"loss stuck at ln 2 ≈ 0.693 through step {steps[-1]}: nothing is learning — the adapter may be "
                      "frozen, chosen and rejected may be identical after truncation (check logps are non-zero), "
                      "or the learning rate is too low")
    early = [r for r in train if r["step"] <= 5 and r["step"] > 0]
    if early and any(r["loss"] < 0.01 and r.get("rewards/accuracies", 0) >= 0.999 for r in early):
        alarms.append("loss ≈ 0 with reward accuracy 1.0 within the first 5 steps: the task is trivially separable "
                      "or leaks (e.g. rejected answers always truncated/empty, a stacked SFT adapter as reference), "
                      "or the learning rate is far too high")
    margins = [r["rewards/margins"] for r in train if "rewards/margins" in r]
    chosen = [r["logps/chosen"] for r in train if "logps/chosen" in r]
    if len(margins) >= 4 and len(chosen) >= 4:
        grew = margins[-1] > 4 * max(abs(margins[len(margins) // 4]), 0.5)
        fell = chosen[-1] < chosen[0] - 5.0
        if grew and fell:
            alarms.append(f"margins grew to {margins[-1]:.2f} while the chosen answers' log-prob fell from "
                          f"{chosen[0]:.1f} to {chosen[-1]:.1f}: over-optimisation — DPO is pushing rejected answers "
                          "down rather than chosen ones up; add an SFT term (loss_type: [sigmoid, sft]), raise beta or "
                          "lower the learning rate")
    norms = [r["grad_norm"] for r in train if isinstance(r.get("grad_norm"), (int, float))]
    if len(norms) >= 5:
        median = statistics.median(norms)
        spikes = [(r["step"], r["grad_norm"]) for r in train
                  if isinstance(r.get("grad_norm"), (int, float)) and median > 0 and r["grad_norm"] > 10 * median]
        if spikes:
            step, value = spikes[0]
            alarms.append(f"gradient-norm spike: {value:.2f} at step {step} (median {median:.3f}); "
                          "lower the learning rate or check for unusual rows")
    if any(not math.isfinite(v) for v in losses):
        alarms.append("the loss became NaN/inf: training stopped; fp16 overflow, an empty completion with IPO, "
                      "or a learning rate that is too high are the usual causes")
    return alarms


class HealthWatch(TrainerCallback):
    """Stops on a non-finite loss (before anything is saved at that step), and on Ctrl-C or SIGTERM after
    saving a checkpoint at the current step (a second signal stops at once)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.stopped_reason: str | None = None
        self.signum: int | None = None  # the signal that stopped training
        self._previous_handlers: dict[int, object] = {}

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in self.SIGNALS:
            try:
                self._previous_handlers[signum] = signal.signal(signum, self._on_signal)
            except ValueError:  # not the main thread (e.g. some notebook runners): signals act as usual
                pass

    def _on_signal(self, signum, frame):
        from .errors import RunInterrupted

        if self.signum is not None:  # second signal: stop right away
            raise RunInterrupted(signum)
        self.signum = signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"\n{name}: saving a checkpoint and stopping after this step (again to abort now)", flush=True)

    def on_step_end(self, args, state, control, **kwargs):
        if self.signum is not None:
            self.stopped_reason = "interrupted"
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_log(self, args, state, control, logs=None, **kwargs):
        loss = (logs or {}).get("loss")
        if isinstance(loss, (int, float)) and not math.isfinite(loss):
            self.stopped_reason = f"non-finite loss ({loss}) at step {state.global_step}"
            control.should_save = False
            control.should_evaluate = False
            control.should_training_stop = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous_handlers.items():
            signal.signal(signum, handler)
        self._previous_handlers.clear()
