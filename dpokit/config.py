"""The config schema: one typed section per part of the post-training config guide.

Every key of the guide is a field here with its default and a one-line description. Unknown
keys are refused with a did-you-mean suggestion, and every problem is reported at once with
its dotted path, before any model or dataset is loaded (`load_config`). Rules that involve
several sections live in `dpokit.rules`.
"""

from __future__ import annotations

import copy
import difflib
import functools
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, create_model, field_validator

from .errors import ConfigError, Problem
from .scaling import DistributedSection, ModelLoadingSection, QuantizationSection

EMBEDDED_DATASET = "embedded:instruct-tasks"
EMBEDDED_MODEL = "embedded:smollm2-135m-instruct"


class Section(BaseModel):
    """Strict base: unknown keys are errors, assignments are validated too."""

    # inf/nan are refused for every number: `.inf` in YAML would pass a `gt=0` check and fail mid-training
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelSpec(Section):
    name: str = Field(description="Friendly name used for run directories and reports.")
    huggingface_id: str = Field(
        description="Hub id (org/model), a local directory, or `embedded:smollm2-135m-instruct`."
    )
    trust_remote_code: bool = Field(False, description="Allow the model repo's own Python code to run.")
    # Per-model overrides (see PER_MODEL_SECTIONS): only the keys given here differ from the shared sections.
    lora: LoraOverride | None = Field(
        None, description="This model's own LoRA keys (e.g. its family's target_modules); the others come from "
        "the shared `lora` section.")
    training: TrainingOverride | None = Field(
        None, description="This model's own precision (fp16, bf16) and gradient_checkpointing; the rest of "
        "`training` is shared.")

    def overrides(self) -> dict[str, dict[str, Any]]:
        """{section: {key: value}} this entry sets for its model only (keys it leaves out are not listed)."""
        out = {}
        for section in PER_MODEL_SECTIONS:
            value = getattr(self, section, None)
            if value is not None and value.model_fields_set:
                out[section] = value.model_dump(mode="json", exclude_unset=True)
        return out

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v.strip() or any(c in v for c in "/\\\0") or v in {".", ".."}:
            raise ValueError("must be a non-empty name without '/' or '\\' (it names the run directory)")
        return v.strip()


class DatasetSection(Section):
    name: str = Field(
        EMBEDDED_DATASET,
        description="Hub dataset id, a local file (.jsonl/.json/.jsonl.gz/.parquet/.csv) or directory, "
        "or `embedded:instruct-tasks` (generated offline).",
    )
    subset: str | None = Field(None, description="Dataset subset/config name (hub datasets) or data_dir; for "
                                "`embedded:instruct-tasks`, comma-separated task families (null = the default set).")
    split: str = Field("train", description="Split to train on.")
    prompt_column: str | None = Field(
        "prompt", description="Column with prompts; null = the data has none (implicit prompt as in hh-rlhf, or "
        "conversational rows whose prompt is the shared leading messages).")
    chosen_column: str = Field("chosen", description="Column with preferred responses.")
    rejected_column: str = Field("rejected", description="Column with rejected responses.")
    max_samples: int | None = Field(1000, gt=0, description="Keep at most this many rows (seeded shuffle); null = all.")
    validation_split: float = Field(0.1, ge=0.0, lt=1.0, description="Held-out fraction for evaluation, in [0, 1).")
    chat_template: Literal["auto", "always", "never"] = Field(
        "auto",
        description="Wrap plain-text prompts/answers as chat messages so the tokenizer's chat template is "
        "applied: auto = when the tokenizer has a chat template.",
    )


class PostTrainingSection(Section):
    method: str = Field("dpo", description="dpo, ipo, kto or orpo (the methods registered in dpokit.methods).")
    beta: float = Field(0.1, gt=0.0, description="Strength of the pull towards the reference model (KL weight).")
    label_smoothing: float = Field(
        0.0, ge=0.0, lt=1.0, description="Assumed label-noise rate; only the robust, exo_pair and aot losses use it."
    )
    loss_type: str | list[str] | None = Field(
        None, description="Loss variant (dpo: sigmoid, hinge, ipo, robust, ...); null = the method's default."
    )
    loss_weights: list[float] | None = Field(
        None, description="Weights when several loss types are combined, e.g. [sigmoid, sft] with [1, 1]."
    )
    use_ref_model: bool = Field(
        True,
        description="true: keep a separate frozen reference model in memory; false: the reference is the "
        "policy with its LoRA adapter switched off (no second copy).",
    )
    ref_model_id: str | None = Field(None, description="Separate reference model; null = the policy's base model.")
    ref_model_trust_remote_code: bool = Field(False, description="Allow ref_model_id's own Python code to run "
                                              "(the policy's trust_remote_code does not carry over to it).")
    precompute_ref_log_probs: bool = Field(
        False, description="Compute reference log-probs once before training (and cache them across runs)."
    )

    @field_validator("method")
    @classmethod
    def _registered(cls, v: str) -> str:
        from .methods import get_method

        try:
            get_method(v)
        except KeyError as e:
            raise ValueError(e.args[0]) from None
        return v

    @field_validator("loss_type")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("an empty list; give one loss type or several, or null for the method's default")
        return v

    @property
    def loss_types(self) -> list[str]:
        """The loss types as a list (the method's default when none is set)."""
        from .methods import get_method

        return get_method(self.method).loss_types_of(self)


class LoraSection(Section):
    r: int = Field(16, gt=0, description="LoRA rank (lower = fewer trainable parameters).")
    lora_alpha: float = Field(32, gt=0, description="LoRA scaling numerator (scale = alpha / r; usually 2*r).")
    lora_dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases are trained.")
    target_modules: list[str] | str = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Module names to adapt (checked against the model), or 'all-linear'.",
    )

    @field_validator("target_modules")
    @classmethod
    def _some_targets(cls, v):
        if (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not [t for t in v if t.strip()]):
            raise ValueError("is empty, so LoRA would adapt nothing; list module names (e.g. [q_proj, v_proj]) "
                             "or use 'all-linear'")
        return v
    task_type: Literal["CAUSAL_LM"] = Field("CAUSAL_LM", description="PEFT task type; preference training here is causal LM.")
    use_rslora: bool = Field(False, description="Rank-stabilised LoRA: scale = alpha / sqrt(r).")
    use_dora: bool = Field(False, description="Weight-decomposed LoRA (DoRA).")


class TrainingSection(Section):
    output_dir: str = Field("./outputs", description="Each run gets a fresh subdirectory here.")
    num_epochs: float = Field(1, gt=0, description="Passes over the training data (ignored when max_steps is set).")
    max_steps: int | None = Field(None, gt=0, description="Stop after this many optimizer steps (overrides num_epochs).")
    per_device_train_batch_size: int = Field(2, gt=0, description="Pairs per device per forward pass (train).")
    per_device_eval_batch_size: int = Field(2, gt=0, description="Pairs per device per forward pass (eval).")
    gradient_accumulation_steps: int = Field(8, gt=0, description="Forward passes per optimizer step.")
    learning_rate: float = Field(5.0e-7, gt=0.0, description="Peak learning rate.")
    warmup_steps: int = Field(100, ge=0, description="Linear warm-up steps.")
    max_seq_length: int = Field(512, gt=0, description="Max tokens of prompt + completion.")
    max_prompt_length: int | None = Field(256, gt=0, description="Max prompt tokens (the start is cut, the end kept).")
    max_completion_length: int | None = Field(256, gt=0, description="Max completion tokens (the end is cut).")
    logging_steps: int = Field(10, gt=0, description="Log metrics every N steps.")
    save_steps: int = Field(500, gt=0, description="Save a checkpoint every N steps.")
    eval_steps: int = Field(500, gt=0, description="Evaluate every N steps (when there is a validation split).")
    save_total_limit: int | None = Field(3, gt=0, description="Keep at most N checkpoints.")
    fp16: bool = Field(False, description="fp16 mixed precision (CUDA only).")
    bf16: bool = Field(False, description="bfloat16 mixed precision (recent GPUs; on CPU fast only with "
                       "bfloat16 instructions, e.g. AVX512-BF16/AMX).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward to save memory.")
    optim: str = Field("adamw_torch", description="Optimizer name as transformers knows it.")
    weight_decay: float = Field(0.0, ge=0.0, description="Weight decay (often 0 for DPO).")
    max_grad_norm: float = Field(1.0, gt=0.0, description="Gradient clipping norm.")

    @field_validator("optim")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        names = optimizer_names()
        if v not in names:
            close = difflib.get_close_matches(v, names, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown optimizer '{v}'.{hint} Common: adamw_torch, adamw_torch_fused, sgd, adafactor")
        return v


@functools.lru_cache(maxsize=1)
def optimizer_names() -> tuple[str, ...]:
    """The optimizer names the installed transformers accepts (`training_args.OptimizerNames`).

    Importing `transformers.training_args` imports PEFT and, when it is installed, bitsandbytes (several
    seconds, most of a dry run), so the names are read from the module's source; if its layout ever
    changes, the module is imported instead."""
    import ast
    import importlib.util

    try:
        origin = importlib.util.find_spec("transformers.training_args").origin
        tree = ast.parse(Path(origin).read_text(encoding="utf-8"))
        enum = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OptimizerNames")
        names = tuple(stmt.value.value for stmt in enum.body if isinstance(stmt, ast.Assign)
                      and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str))
        if names:
            return names
    except (AttributeError, OSError, StopIteration, SyntaxError, ValueError):
        pass
    from transformers.training_args import OptimizerNames

    return tuple(o.value for o in OptimizerNames)


def partial_section(section: type[Section], keys: tuple[str, ...] | None = None) -> type[Section]:
    """A strict section with `section`'s keys (or only `keys`), each optional and unset by default.

    A `models` entry uses it to override part of a shared section for its model: the types and bounds
    of the keys are checked here (errors name `models.N.<section>.<key>`), and the merged section is
    validated again as a whole by `Config.for_model`."""
    fields: dict[str, Any] = {}
    for name, info in section.model_fields.items():
        if keys is not None and name not in keys:
            continue
        annotation = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        fields[name] = (annotation | None, Field(None, description=info.description))
    return create_model(f"{section.__name__.removesuffix('Section')}Override", __base__=Section, **fields)


LoraOverride = partial_section(LoraSection)
TrainingOverride = partial_section(TrainingSection, ("fp16", "bf16", "gradient_checkpointing"))
# Sections a `models` entry may override, each a `ModelSpec` field holding a `partial_section`. Adding one is
# a field on ModelSpec and a name here; `Config.for_model` merges and validates it like the others.
PER_MODEL_SECTIONS: tuple[str, ...] = ("lora", "training")
ModelSpec.model_rebuild()


class GpuSection(Section):
    device_ids: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="GPU ids to use, applied as CUDA_VISIBLE_DEVICES with or without DDP; null = what is "
        "visible (one process uses GPU 0).")
    use_ddp: bool = Field(False, description="One process per device with DistributedDataParallel (accelerate "
                          "launch; torchrun with gloo on a CPU); distributed.strategy picks FSDP or ZeRO instead.")
    on_missing: Literal["stop", "cpu"] = Field(
        "stop", description="When the requested GPUs are not there: stop with an error, or fall back to CPU "
        "on a machine with no GPU (with use_ddp, one CPU process per requested GPU: the advice says what that "
        "costs); with only some of them present the run stops either way.")


class FinetuningSection(Section):
    resume_from_checkpoint: str | None = Field(None, description="A checkpoint path, or 'latest' for this model's newest.")
    load_best_model_at_end: bool = Field(False, description="Restore the best checkpoint (by metric) at the end.")
    metric_for_best_model: str = Field("eval_loss", description="Metric that picks the best checkpoint.")
    greater_is_better: bool = Field(False, description="Whether a higher metric is better.")
    early_stopping_patience: int | None = Field(None, gt=0, description="Stop after N evaluations without improvement.")


def _refuse_unknown(values: list[str], known: tuple[str, ...], kind: str, cutoff: float = 0.6,
                    tail: str = "") -> None:
    """A ValueError for the first value not in `known`, with the closest name and the choices."""
    for value in values:
        if value not in known:
            close = difflib.get_close_matches(value, known, n=1, cutoff=cutoff)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise ValueError(f"unknown {kind} '{value}'.{hint} Choose from {', '.join(known)}{tail}")


class LoggingSection(Section):
    report_to: list[str] = Field(default_factory=lambda: ["tensorboard"], description="tensorboard, mlflow, wandb or none.")
    logging_dir: str = Field("./logs", description="Where tracking backends write (a subfolder per run).")
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field("info", description="Console verbosity.")

    @field_validator("report_to", mode="before")
    @classmethod
    def _as_list(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("report_to")
    @classmethod
    def _known_backends(cls, v: list[str]) -> list[str]:
        _refuse_unknown(v, ("tensorboard", "mlflow", "wandb", "none"), "backend")
        return [b for b in v if b != "none"]


# Public benchmarks dpokit can run on a run (dpokit/bench/runs.py holds how each is run).
BENCHMARKS: tuple[str, ...] = ("ifeval",)


class EvaluationSection(Section):
    enabled: bool | Literal["auto"] = Field(
        "auto", description="Generate before/after answers on held-out prompts at the end (auto: embedded data, "
        "or any data with a validation split)."
    )
    num_prompts: int = Field(60, gt=0, description="Held-out prompts to generate answers for.")
    max_new_tokens: int = Field(48, gt=0, description="Greedy generation length.")
    benchmarks: list[str] = Field(default_factory=list, description="Public benchmarks to run at the end of "
                                  "training, base vs trained (`ifeval`); also `dpokit eval --bench NAME`.")
    benchmark_limit: int | None = Field(None, gt=0, description="Benchmark prompts to answer: a fixed seeded "
                                        "subset of this size; null = all (IFEval: 541).")
    benchmark_max_new_tokens: int = Field(256, gt=0, description="Greedy generation length for benchmark answers "
                                          "(lighteval's IFEval allows 1280; see docs/ifeval.md).")

    @field_validator("benchmarks", mode="before")
    @classmethod
    def _benchmarks_as_list(cls, v):
        return [v] if isinstance(v, str) else v

    @field_validator("benchmarks")
    @classmethod
    def _known_benchmarks(cls, v: list[str]) -> list[str]:
        _refuse_unknown(v, BENCHMARKS, "benchmark", cutoff=0.5, tail=" (or leave the list empty)")
        return list(dict.fromkeys(v))


class Config(Section):
    """A whole dpokit config (the guide's sections plus `seed`, `evaluation` and the scaling sections
    `model_loading`, `quantization`, `distributed` of dpokit/scaling.py)."""

    models: list[ModelSpec] = Field(description="Models to train one after another.")
    dataset: DatasetSection = Field(default_factory=DatasetSection)
    post_training: PostTrainingSection = Field(default_factory=PostTrainingSection)
    lora: LoraSection = Field(default_factory=LoraSection)
    training: TrainingSection = Field(default_factory=TrainingSection)
    gpu: GpuSection = Field(default_factory=GpuSection)
    model_loading: ModelLoadingSection = Field(default_factory=ModelLoadingSection)
    quantization: QuantizationSection = Field(default_factory=QuantizationSection)
    distributed: DistributedSection = Field(default_factory=DistributedSection)
    finetuning: FinetuningSection = Field(default_factory=FinetuningSection)
    logging: LoggingSection = Field(default_factory=LoggingSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    seed: int = Field(42, ge=0, le=2**32 - 1, description="Seed for data shuffling/splitting, LoRA init and training "
                      "(0 to 2**32-1, what numpy accepts).")

    @field_validator("models")
    @classmethod
    def _some_models(cls, v: list[ModelSpec]) -> list[ModelSpec]:
        if not v:
            raise ValueError("the list is empty; add at least one model with `name` and `huggingface_id`")
        names = [m.name for m in v]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique (they name run directories); repeated: {dupes}")
        return v

    # (index in the batch, dotted keys overridden) when this is one model's effective config (for_model)
    _origin: tuple[int, frozenset[str]] | None = PrivateAttr(default=None)

    def to_yaml(self) -> str:
        data = self.model_dump(mode="json")
        for entry, spec in zip(data["models"], self.models):  # overrides: only the keys a model sets
            for section in PER_MODEL_SECTIONS:
                entry.pop(section, None)
            entry.update(spec.overrides())
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True)
        if self._origin is not None:
            index, keys = self._origin
            changed = f" with its own {', '.join(sorted(keys))}" if keys else ""
            text = f"# effective config of models[{index}] ({self.models[0].name}){changed}\n" + text
        return text

    def for_model(self, index: int) -> "Config":
        """The config `models[index]` trains with: its entry's overrides merged into the shared sections,
        validated again, with that model as the only entry (what its run directory records).

        Raises pydantic's ValidationError if the merged sections are invalid (`load_config` reports it
        with the `models.N.` path, see dpokit/overrides.py)."""
        spec = self.models[index]
        overrides = spec.overrides()
        data = self.model_dump(mode="json")
        for section, values in overrides.items():
            data[section] = {**data[section], **values}
        entry = {k: v for k, v in data["models"][index].items() if k not in PER_MODEL_SECTIONS}
        data["models"] = [entry]
        effective = Config.model_validate(data)
        effective._origin = (index, frozenset(f"{s}.{k}" for s, values in overrides.items() for k in values))
        return effective

    def path_of(self, dotted: str) -> str:
        """Where the user wrote `dotted` (e.g. lora.target_modules): `models.N.<dotted>` when this effective
        config took it from the model's own entry, else the shared section's path."""
        if self._origin is not None and dotted in self._origin[1]:
            return f"models.{self._origin[0]}.{dotted}"
        return dotted


# ----------------------------------------------------------------------------- loading


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key, line: int, first_line: int):
        super().__init__(f"duplicate key {key!r} at line {line}")
        self.key, self.line, self.first_line = key, line, first_line


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key repeated in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, line, seen[key])
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping safely (no Python objects), with a clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError([Problem(str(path), "file not found", "check the path passed to --config")], str(path))
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = e.object[:e.start].count(b"\n") + 1
        raise ConfigError([Problem(f"{path}:{line}", f"is not UTF-8 text (byte {e.object[e.start:e.start + 1]!r} "
                                   f"at offset {e.start})", "save the file as UTF-8")], str(path)) from None
    except OSError as e:
        raise ConfigError([Problem(str(path), f"cannot be read ({e.strerror or e})", "check the path and its "
                                   "permissions")], str(path)) from None
    try:
        data = yaml.load(text, Loader=_StrictLoader)
    except DuplicateKeyError as e:
        raise ConfigError([Problem(f"{path}:{e.line}", f"the key '{e.key}' appears twice in the same section "
                                   f"(first at line {e.first_line}); which value you meant cannot be known",
                                   "keep one of them")], str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        raise ConfigError([Problem(where, f"not valid YAML ({getattr(e, 'problem', e)})",
                                   "check indentation and quoting near that line")], str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError([Problem(str(path), f"expected a mapping of sections, got {type(data).__name__}")], str(path))
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """Parse `section.key=value` (value read as YAML: numbers, lists, null, true/false)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError([Problem(f"--set {text}", "expected KEY=VALUE, e.g. training.learning_rate=1e-6")], "--set")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Return a copy of `data` with dotted-path overrides applied (`models.0.name` indexes lists)."""
    data = copy.deepcopy(data)
    for dotted, value in (overrides or {}).items():
        parts = dotted.split(".")
        node: Any = data
        for i, part in enumerate(parts[:-1]):
            if isinstance(node, list):
                node = node[int(part)]
                continue
            if not isinstance(node.get(part), (dict, list)):
                node[part] = {}
            node = node[part]
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return data


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                data: dict[str, Any] | None = None) -> Config:
    """Load and validate a config: schema defaults < YAML file (or `data`) < `overrides`.

    Raises ConfigError listing every problem (with dotted paths) before anything is loaded.
    """
    from .rules import check_rules

    source = str(path) if path is not None else "config"
    raw = read_yaml(path) if path is not None else copy.deepcopy(data or {})
    try:
        raw = apply_overrides(raw, overrides)
    except (IndexError, ValueError, AttributeError, TypeError) as e:
        raise ConfigError([Problem("--set", f"cannot apply overrides {overrides}: {e}")], source) from None
    # YAML 1.1 reads `5e-7` (no dot) as a string; pydantic's lax mode accepts it for float fields.
    try:
        config = Config.model_validate(raw)
    except ValidationError as e:
        problems = problems_from_validation(e)
        # Report cross-field problems too: validate again without the broken keys (so their
        # defaults stand in) and add what the rules find about the rest.
        repaired = _validate_without(raw, [err["loc"] for err in e.errors()])
        if repaired is not None:
            seen = {p.where for p in problems}
            problems += [p for p in check_rules(repaired) if p.where not in seen]
        raise ConfigError(problems, source) from None
    problems = check_rules(config)
    problems += model_override_problems(config, problems)
    if problems:
        raise ConfigError(problems, source)
    return config


def model_override_problems(config: Config, shared: list[Problem]) -> list[Problem]:
    """Problems of each model's effective config that the shared sections do not already have."""
    from .overrides import override_problems
    from .rules import check_rules

    return override_problems(config, shared, check_rules, problems_from_validation)


def _validate_without(raw: dict[str, Any], locs: list[tuple]) -> Config | None:
    """Validate `raw` with the keys at `locs` removed; None if it still fails."""
    data = copy.deepcopy(raw)
    for loc in locs:
        node: Any = data
        for part in loc[:-1]:
            try:
                node = node[part]
            except (KeyError, IndexError, TypeError):
                node = None
                break
        if isinstance(node, dict):
            node.pop(loc[-1], None)
    try:
        return Config.model_validate(data)
    except ValidationError:
        return None


def problems_from_validation(error: ValidationError) -> list[Problem]:
    """Turn pydantic errors into Problems with dotted paths and did-you-mean hints."""
    problems = []
    for err in error.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc) or "config"
        kind = err["type"]
        if kind == "extra_forbidden":
            problems.append(_unknown_key_problem(loc))
        elif kind == "missing":
            problems.append(Problem(where, "is required but missing", f"add it: {_field_help(loc)}"))
        else:
            msg = err["msg"].removeprefix("Value error, ")
            given = err.get("input")
            if not isinstance(given, (dict, list)):
                msg += f" (got {given!r})"
            help_text = _field_help(loc)
            problems.append(Problem(where, msg, f"expected: {help_text}" if help_text else ""))
    return problems


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in loc:
        if model is None:
            return None
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        candidates = [ann, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
    return model


def _unknown_key_problem(loc: list[str]) -> Problem:
    parent, key = loc[:-1], loc[-1]
    model = _model_at(parent)
    where = ".".join(loc)
    if model is None:
        return Problem(where, "unknown key")
    known = list(model.model_fields)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if close:
        return Problem(where, "unknown key", f"did you mean '{close[0]}'? ({'.'.join(parent + [close[0]])})")
    section = ".".join(parent) or "the top level"
    return Problem(where, "unknown key", f"keys allowed in {section}: {', '.join(known)}")


def _field_help(loc: list[str]) -> str:
    model = _model_at(loc[:-1])
    if model is None or loc[-1] not in getattr(model, "model_fields", {}):
        return ""
    return model.model_fields[loc[-1]].description or ""


def schema_reference() -> str:
    """Markdown table of every section and key with default and description (for the README)."""
    lines = []
    for section, field in Config.model_fields.items():
        model = _model_at([section])
        if model is None:
            lines.append(f"| `{section}` | `{field.default!r}` | {field.description} |")
            continue
        for key, f in model.model_fields.items():
            default = f.default_factory() if f.default_factory else f.default
            default = "required" if f.is_required() else default
            lines.append(f"| `{section}.{key}` | `{default!r}` | {f.description} |")
    return "| key | default | meaning |\n|---|---|---|\n" + "\n".join(lines)
