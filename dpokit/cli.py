"""Command line: argument parsing only; every command calls the public API.

Exit status: 0 success, 1 if any model failed (or an unexpected error), 2 for config/data/environment
problems (explained in plain words, without a traceback unless --debug), 128 + the signal number when
a signal stopped training after a checkpoint (130 Ctrl-C, 143 SIGTERM).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path


def positive_int(text: str) -> int:
    """argparse type: an integer above 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


TRUST_HELP = ("let the run's model run its own Python code (needed when its config has trust_remote_code: true; "
              "a run directory never passes that trust on by itself)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpokit", description="Preference fine-tuning (DPO, IPO, KTO, ORPO) "
                                     "with LoRA, from one YAML config.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the config's models (or explain them with --dry-run)")
    train.add_argument("--config", help="YAML config (see configs/)")
    train.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue an unfinished run from its latest checkpoint, with its own resolved_config.yaml")
    train.add_argument("--extend", action="store_true",
                       help="with --resume and a larger --set training.max_steps (or num_epochs): train further, from "
                       "the run's last checkpoint, in a new run directory (the run itself is never rewritten)")
    train.add_argument("--model-index", type=int, default=None, help="train only models[N] (0-based)")
    train.add_argument("--dry-run", action="store_true", help="validate and explain; load no weights, train nothing")
    train.add_argument("--plan", nargs="?", const="here", default=None, metavar="TARGET",
                       help="with --dry-run: will it fit on these GPUs (e.g. 1xA10G-24GB, 8x80GB; without a value: "
                       "this machine's GPUs), and the cheapest change that makes it fit")
    train.add_argument("--output-dir", default=None, help="override training.output_dir")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set training.learning_rate=1e-6 (repeatable)")
    train.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    ev = sub.add_parser("eval", help="before/after answers of a finished run (base vs trained adapter)")
    ev.add_argument("--run", required=True, help="a run directory written by `dpokit train`")
    ev.add_argument("--num-prompts", type=positive_int, default=None, help="held-out prompts to answer")
    ev.add_argument("--max-new-tokens", type=positive_int, default=None,
                    help="answer length (default: evaluation.max_new_tokens, with --bench "
                    "evaluation.benchmark_max_new_tokens)")
    ev.add_argument("--bench", default=None, metavar="NAME",
                    help="run a public benchmark instead of the held-out prompts: ifeval (base vs trained, "
                    "written to the run as bench_ifeval.json and shown by `dpokit report`)")
    ev.add_argument("--limit", type=positive_int, default=None,
                    help="with --bench: a fixed seeded subset of N prompts (default: evaluation.benchmark_limit, "
                    "else all)")
    ev.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    ev.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    rep = sub.add_parser("report", help="one comparison page (Markdown + PNG plots) of one or more runs")
    rep.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                     help="run directories; a folder holding runs (e.g. outputs/) stands for all of them")
    rep.add_argument("--out", default=None, help="report file (default: RUN_DIR/report.md for one run, "
                     "report.md in the runs' common folder for several)")
    rep.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    exp = sub.add_parser("export", help="write a run's adapter + tokenizer, or a merged full model")
    exp.add_argument("run_dir", metavar="RUN_DIR", help="a completed run directory")
    exp.add_argument("--out", required=True, help="new (or empty) directory to write")
    exp.add_argument("--merge", action="store_true", help="fold the adapter into the base weights: a plain "
                     "transformers model, loadable without PEFT")
    exp.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    exp.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    ch = sub.add_parser("chat", help="type prompts, read the trained model's answers (greedy)")
    ch.add_argument("run_dir", metavar="RUN_DIR", help="a completed run directory")
    ch.add_argument("--compare", action="store_true", help="show the base model's answer next to the trained one")
    ch.add_argument("--max-new-tokens", type=positive_int, default=128)
    ch.add_argument("--trust-remote-code", action="store_true", help=TRUST_HELP)
    ch.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    debug = args.debug or os.environ.get("DPOKIT_DEBUG") == "1"
    from .compat import quiet_import_noise
    from .errors import DpokitError, RunInterrupted

    quiet_import_noise()

    def on_sigterm(signum, frame):  # outside training (where a checkpoint is saved first): stop now, recorded
        raise RunInterrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    try:
        return _dispatch(args)
    except DpokitError as e:
        if debug:
            raise
        print(f"\nerror: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(f"\ninterrupted ({signal.Signals(signum).name})", file=sys.stderr)
        return 128 + signum
    except Exception as e:  # a bug or an unforeseen environment problem: say it plainly
        if debug:
            raise
        print(f"\nerror: unexpected {type(e).__name__}: {e}\n(run again with --debug for the traceback, and "
              "please report it)", file=sys.stderr)
        return 1
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _dispatch(args) -> int:
    from .config import load_config, parse_override
    from .errors import ConfigError, Problem

    if args.command == "eval":
        from .evaluate import evaluate_run, print_report

        if args.bench is not None or args.limit is not None:
            return _bench(args)
        print_report(evaluate_run(args.run, args.num_prompts, args.max_new_tokens,
                                  trust_remote_code=args.trust_remote_code))
        return 0
    if args.command == "report":
        from .report import expand_run_dirs, readable_runs, write_report

        runs = readable_runs(expand_run_dirs(args.run_dirs), explicit=args.run_dirs)
        out = args.out or (runs[0] / "report.md" if len(runs) == 1
                           else Path(os.path.commonpath([str(r) for r in runs])) / "report.md")
        print(f"report: {write_report(runs, out)}")
        return 0
    if args.command == "export":
        from .export import export_run

        print(f"exported: {export_run(args.run_dir, args.out, merge=args.merge, trust_remote_code=args.trust_remote_code)}")
        return 0
    if args.command == "chat":
        from .export import chat

        chat(args.run_dir, compare=args.compare, max_new_tokens=args.max_new_tokens,
             trust_remote_code=args.trust_remote_code)
        return 0

    overrides = dict(parse_override(o) for o in args.overrides)
    if args.command == "train" and args.resume:
        if args.config or args.output_dir:
            flag = "--config" if args.config else "--output-dir"
            raise ConfigError([Problem(flag, "cannot be combined with --resume: a run continues with its own "
                                       "resolved_config.yaml, in its own output folder",
                                       "drop it (use --set KEY=VALUE for what may change), or start a new run "
                                       "with --config")], "command line")
        args.config, args.model_index, overrides = _resume_target(args.resume, overrides, args.extend)
    elif args.command == "train" and args.extend:
        raise ConfigError([Problem("--extend", "only goes with --resume RUN_DIR", "dpokit train --resume RUN_DIR "
                                   "--extend --set training.max_steps=N")], "command line")
    elif args.command == "train" and not args.config:
        raise ConfigError([Problem("--config", "is required", "dpokit train --config configs/quickstart.yaml "
                                   "(or --resume RUN_DIR to continue a run)")], "command line")
    config = load_config(args.config, overrides=overrides)
    if args.model_index is not None and not 0 <= args.model_index < len(config.models):
        names = ", ".join(f"{i}: {m.name}" for i, m in enumerate(config.models))
        raise ConfigError([Problem("--model-index", f"{args.model_index} is out of range; the config has "
                                   f"{len(config.models)} model(s) ({names})", "use an index from that list")],
                          args.config)
    if args.command == "train":
        if args.dry_run:
            from .dryrun import dry_run

            return dry_run(config, model_index=args.model_index, output_dir=args.output_dir, plan_target=args.plan,
                           argv=_child_argv(args.argv))
        if args.plan is not None:
            raise ConfigError([Problem("--plan", "only goes with --dry-run (it plans, it does not train)",
                                       f"dpokit train --config {args.config} --dry-run --plan {args.plan}")],
                              "command line")
        from .compat import check_versions
        from .launch import in_launched_process
        from .run import train

        check_versions()
        if not in_launched_process():
            status = _launch_if_needed(config, args)
            if status is not None:
                return status
        results = train(config, model_index=args.model_index, output_dir=args.output_dir)
        return report_results(results)
    return 2


def _child_argv(argv: list[str]) -> list[str]:
    """The command line each launched process runs: this one without --dry-run / --plan."""
    out, skip = [], False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg == "--dry-run" or arg.startswith("--plan="):
            continue
        if arg == "--plan":
            skip = i + 1 < len(argv) and not argv[i + 1].startswith("-")
            continue
        out.append(arg)
    return out


def _launch_if_needed(config, args) -> int | None:
    """Re-run this command under accelerate launch / torchrun when the config asks for several processes,
    a strategy engine, several machines or particular GPUs (dpokit.launch); None when it runs right here."""
    from .errors import ConfigError
    from .launch import format_plan, plan_for_config, run_launch
    from .machine import DeviceInfo
    from .rules import device_problems, scaling_advice

    device = DeviceInfo.detect()
    plan = plan_for_config(config, _child_argv(args.argv), device.cuda_devices, output_dir=args.output_dir)
    if not plan.commands:
        return None
    indices = [args.model_index] if args.model_index is not None else range(len(config.models))
    problems = [p for i in indices for p in device_problems(config.for_model(i), device)]
    if problems:  # once here, rather than in every process
        raise ConfigError(problems, args.config)
    for line in format_plan(plan):
        print(f"== {line}" if line.startswith("launch:") else line, flush=True)
    for note in scaling_advice(config, device, plan.world_size):
        print(f"   ! {note}", flush=True)
    return run_launch(plan)


def _bench(args) -> int:
    """`dpokit eval --bench NAME [--limit N]`: the public benchmark on a run, base vs trained."""
    from .bench.runs import benchmark_run, check_benchmark, print_benchmark
    from .errors import ConfigError, Problem

    if args.bench is None:
        raise ConfigError([Problem("--limit", "only goes with --bench", "dpokit eval --run RUN --bench ifeval "
                                   "--limit 20")], "command line")
    if args.num_prompts is not None:
        raise ConfigError([Problem("--num-prompts", "is for the held-out prompts, not a benchmark",
                                   "use --limit N with --bench")], "command line")
    check_benchmark(args.bench)
    print_benchmark(benchmark_run(args.run, args.bench, limit=args.limit, max_new_tokens=args.max_new_tokens,
                                  trust_remote_code=args.trust_remote_code))
    return 0


def _resume_target(run_dir: str, overrides: dict, extend: bool):
    """(config path, model index, overrides) that continue `run_dir` from its latest checkpoint."""
    from .config import load_config
    from .errors import ConfigError, Problem
    from .resume import EXTENDING, config_differences
    from .rundir import CONFIG_FILE, RunDir

    run = RunDir(run_dir)
    resolved = run.file(CONFIG_FILE)
    ckpt = run.latest_checkpoint() if run.path.is_dir() else None
    if not resolved.exists() or ckpt is None:
        raise ConfigError([Problem("--resume", f"{run} is not a run directory with a checkpoint "
                                   "(resolved_config.yaml and checkpoint-N/)",
                                   "point it at outputs/<model>-<method>-<time>/ of a run that saved a checkpoint")],
                          "command line")
    config = run.config()
    spec = run.model_spec(config)
    changed = config_differences(config, load_config(resolved, overrides=overrides), spec.name)
    extends = sorted(k for k in changed if k in EXTENDING)
    status, steps = run.effective_status(), run.summary().get("steps")
    if status == "stale":
        print(f"note: {run.name} was not finished: {run.stale_reason()}; continuing it", flush=True)
    if status == "completed" and not extend:
        raise ConfigError([Problem("--resume", f"{run} is completed ({steps} steps, adapter saved); resuming would "
                                   "train into a finished run", "to train further, add --extend and a larger "
                                   "--set training.max_steps=N: it continues from the last checkpoint in a new run "
                                   "directory and leaves this one as it is")], "command line")
    if extends and not extend:
        raise ConfigError([Problem("--set", f"changes {', '.join(extends)}: that trains the run further than it "
                                   "was started for", "add --extend to continue in a new run directory (this run "
                                   "stays as it is)")], "command line")
    if extend and not extends:
        raise ConfigError([Problem("--extend", "needs more steps than the run was started with",
                                   "add --set training.max_steps=N (or training.num_epochs) with a larger value")],
                          "command line")
    index = config.models.index(spec)
    return str(resolved), index, {**overrides, "finetuning.resume_from_checkpoint": str(ckpt)}


def report_results(results) -> int:
    from .console import is_rank_zero

    ok = 0 if all(r.status == "completed" for r in results) else 1
    if not is_rank_zero():
        return ok
    print("\n== results")
    width = max(len(r.model) for r in results)
    for r in results:
        detail = r.run_dir if r.status == "completed" else (r.error or "")
        print(f"  {r.model:<{width}}  {r.status:<9}  {detail}")
    return ok


if __name__ == "__main__":
    sys.exit(main())
