"""The scaling part of `--dry-run`: how the weights load, how the run is launched, and `--plan TARGET`.

Nothing here loads weights or starts a process: the launch plan is printed with the accelerate config
dpokit would write (dpokit/launch.py), and the verdict comes from the GPU memory planner
(dpokit/planner.py) on the model's transformers config — or, for a hub model that is not available
offline, on the bundled published config of the same model when dpokit has one.
"""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, Problem
from .machine import DeviceInfo

SHARDING = ("fsdp", "zero2", "zero3")
ASSUMED_GPUS = 8  # GPUs a launch is shown for on a machine without any, when neither device_ids nor --plan say


def read_target(text: str, device: DeviceInfo):
    """The planner's GpuTarget for `--plan TEXT` ("here": this machine's GPUs); ConfigError when unreadable."""
    from .planner import GpuTarget, parse_target

    if text == "here":
        if not device.cuda_devices:
            raise ConfigError([Problem("--plan", "without a target plans for this machine's GPUs, and it has none",
                                       "name the GPUs to plan for, e.g. --plan 1xA10G-24GB or --plan 8x80GB")],
                              "command line")
        import torch

        props = torch.cuda.get_device_properties(0)
        return GpuTarget(device.cuda_devices, round(props.total_memory / 2**30, 1), props.name.replace(" ", ""))
    try:
        return parse_target(text)
    except ValueError as e:
        raise ConfigError([Problem("--plan", str(e), "e.g. --plan 1xA10G-24GB, --plan 8x80GB, --plan 2xH100")],
                          "command line") from None


def loaded_dtype_note(config, cuda_devices: int) -> str:
    """Where the model dtype comes from, in words."""
    from .scaling import config_model_dtype

    dtype = config_model_dtype(config, cuda_devices)
    setting = config.model_loading.dtype
    if setting != "auto":
        why = "model_loading.dtype" + (" (fp16 falls back to fp32 on a CPU)" if setting != dtype else "")
    elif config.training.bf16:
        why = "auto: follows training.bf16"
    elif config.training.fp16:
        why = "auto: follows training.fp16" if dtype == "fp16" else "auto: training.fp16 is ignored on a CPU"
    else:
        why = "auto: no half precision set"
    return f"{dtype} ({why})"


def describe_loading(config, model_config, device: DeviceInfo) -> list[str]:
    """Lines saying how the policy's weights load: dtype, attention kernel, quantization; and precision advice."""
    from .rules import model_precision_advice
    from .scaling import config_model_dtype, resolve_compute_dtype, resolve_quant_storage, resolve_strategy

    loading, quant = config.model_loading, config.quantization
    attn = loading.attn_implementation or "transformers' default (sdpa where the model supports it)"
    lines = [f"loading: weights in {loaded_dtype_note(config, device.cuda_devices)}, attention {attn}"]
    if quant.load_in == "4bit":
        dtype = config_model_dtype(config, device.cuda_devices)
        strategy = resolve_strategy(config.distributed, config.gpu.use_ddp)
        lines.append(f"quantization: 4-bit {quant.quant_type}{' with double quantization' if quant.double_quant else ''}"
                     f" (QLoRA), computed in {resolve_compute_dtype(quant, dtype)}, stored as "
                     f"{resolve_quant_storage(quant, strategy, dtype)}; the adapter stays in 16/32 bits and loads on "
                     "the unquantized base after training")
    elif quant.load_in == "8bit":
        lines.append("quantization: 8-bit (bitsandbytes LLM.int8); the adapter loads on the unquantized base after "
                     "training")
    if model_config is not None:  # the checkpoint's own dtype
        lines += [f"! {note}" for note in model_precision_advice(config, model_config, device)]
    return lines


def bundled_name_for(model_id: str) -> str | None:
    """The bundled published config (dpokit/model_configs/) of a hub id, e.g. Qwen/Qwen2.5-7B-Instruct -> qwen2.5-7b."""
    from .plan_inputs import BUNDLED

    name = model_id.rsplit("/", 1)[-1].lower()
    for suffix in ("-instruct", "-chat", "-hf", "-it"):
        name = name.removesuffix(suffix)
    names = {p.stem for p in BUNDLED.glob("*.json")}
    if name in names:
        return name
    name = name.replace("meta-", "")
    return name if name in names else None


def explain_plan(config, spec, weights, target) -> None:
    """Print the planner's verdict for this model's effective config on `target` (`--plan`)."""
    from .plan_inputs import bundled_model_config, model_facts, setup_from_config
    from .planner import format_verdict, plan

    if weights is not None:
        model_config, layout = weights
        source = ""
    else:
        bundled = bundled_name_for(spec.huggingface_id)
        if bundled is None:
            print(f"   plan: needs the model's config.json, which is not available here ({spec.huggingface_id}); "
                  "download it once, or point huggingface_id at a local directory")
            return
        model_config, layout = bundled_model_config(bundled), None
        source = f" (from the published config of {bundled}, dpokit/model_configs/)"
    facts = model_facts(model_config, layout)
    setup, ctx = setup_from_config(config, cuda=True)
    lines = format_verdict(plan(facts, setup, target, ctx))
    print(f"   {lines[0]}{source}")
    for line in lines[1:]:
        print(f"   {line}")


def launch_gpus(config, cuda_devices: int, target=None) -> tuple[int, str | None]:
    """GPUs per machine to show the launch for, and why when they are not this machine's: on a machine without
    CUDA, a run that needs GPUs (a sharding strategy, or device_ids that would stop here) is shown as it would
    start on machines with them (the --plan target's GPUs shared by the machines, else the GPUs device_ids
    names, else 8)."""
    from .scaling import resolve_strategy

    if cuda_devices:
        return cuda_devices, None
    gpu, dist = config.gpu, config.distributed
    strategy = resolve_strategy(dist, gpu.use_ddp)
    needs_gpus = strategy in SHARDING or (gpu.device_ids and gpu.on_missing == "stop")
    if not needs_gpus or dist.accelerate_config:
        return 0, None
    if target is not None:  # the target counts the GPUs of every machine
        n = -(-target.count // dist.num_machines)
    else:
        n = max(gpu.device_ids) + 1 if gpu.device_ids else ASSUMED_GPUS
    machines = f"{dist.num_machines} machines" if dist.num_machines > 1 else "a machine"
    return n, (f"this machine has no CUDA GPU; the launch is shown as it starts on {machines} with {n} GPU(s)"
               + (" each" if dist.num_machines > 1 else "")
               + ("" if target is not None else " (--plan COUNTxSIZE shows another count)"))


def explain_launch(config, argv: list[str], device: DeviceInfo, output_dir: str | None, target=None) -> None:
    """Print how `dpokit train` would start this config: the exact command(s) and the generated accelerate config."""
    from .launch import format_plan, plan_for_config

    gpus, note = launch_gpus(config, device.cuda_devices, target)
    plan = plan_for_config(config, argv, gpus, output_dir=output_dir)
    print("\n== launch")
    if note:
        print(f"   ({note})")
    for line in format_plan(plan):
        print(f"   {line}")
    if plan.accelerate_config is not None:
        where = Path(plan.config_file)
        print(f"   (written to {where} when the run starts; each run directory keeps a copy as accelerate_config.yaml)")
    if gpus != device.cuda_devices:  # the schedule on the machine the launch is shown for
        from .schedule import schedule

        print(f"   on that machine: {schedule(config, gpus).describe()}")
