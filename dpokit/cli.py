"""Command line: argument parsing only; every command calls the public API.

Exit status: 0 success, 1 if any model failed, 2 for config/data/environment problems
(explained in plain words, without a traceback unless --debug).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpokit", description="Preference fine-tuning (DPO, IPO, KTO, ORPO) "
                                     "with LoRA, from one YAML config.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train the config's models (or explain them with --dry-run)")
    train.add_argument("--config", help="YAML config (see configs/)")
    train.add_argument("--resume", metavar="RUN_DIR", default=None,
                       help="continue an interrupted run from its latest checkpoint (uses its resolved_config.yaml)")
    train.add_argument("--model-index", type=int, default=None, help="train only models[N] (0-based)")
    train.add_argument("--dry-run", action="store_true", help="validate and explain; load no weights, train nothing")
    train.add_argument("--output-dir", default=None, help="override training.output_dir")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set training.learning_rate=1e-6 (repeatable)")
    train.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    ev = sub.add_parser("eval", help="before/after answers of a finished run (base vs trained adapter)")
    ev.add_argument("--run", required=True, help="a run directory written by `dpokit train`")
    ev.add_argument("--num-prompts", type=int, default=None, help="held-out prompts to answer")
    ev.add_argument("--max-new-tokens", type=int, default=None)
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
    exp.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)

    ch = sub.add_parser("chat", help="type prompts, read the trained model's answers (greedy)")
    ch.add_argument("run_dir", metavar="RUN_DIR", help="a completed run directory")
    ch.add_argument("--compare", action="store_true", help="show the base model's answer next to the trained one")
    ch.add_argument("--max-new-tokens", type=int, default=128)
    ch.add_argument("--debug", action="store_true", help=argparse.SUPPRESS)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    debug = args.debug or os.environ.get("DPOKIT_DEBUG") == "1"
    from .errors import DpokitError

    try:
        return _dispatch(args)
    except DpokitError as e:
        if debug:
            raise
        print(f"\nerror: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from .config import load_config, parse_override
    from .errors import ConfigError, Problem

    if args.command == "eval":
        from .evaluate import evaluate_run, print_report

        print_report(evaluate_run(args.run, args.num_prompts, args.max_new_tokens))
        return 0
    if args.command == "report":
        from .report import expand_run_dirs, write_report

        runs = expand_run_dirs(args.run_dirs)
        out = args.out or (runs[0] / "report.md" if len(runs) == 1
                           else Path(os.path.commonpath([str(r) for r in runs])) / "report.md")
        print(f"report: {write_report(runs, out)}")
        return 0
    if args.command == "export":
        from .export import export_run

        print(f"exported: {export_run(args.run_dir, args.out, merge=args.merge)}")
        return 0
    if args.command == "chat":
        from .export import chat

        chat(args.run_dir, compare=args.compare, max_new_tokens=args.max_new_tokens)
        return 0

    overrides = dict(parse_override(o) for o in args.overrides)
    if args.command == "train" and args.resume:
        args.config, args.model_index, overrides = _resume_target(args.resume, overrides)
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

            return dry_run(config, model_index=args.model_index, output_dir=args.output_dir)
        from .compat import check_versions
        from .distributed import in_launched_process, launch
        from .machine import DeviceInfo
        from .run import train

        check_versions()
        if config.gpu.use_ddp and not in_launched_process():
            return launch(config, args.argv, DeviceInfo.detect().cuda_devices)
        results = train(config, model_index=args.model_index, output_dir=args.output_dir)
        return report_results(results)
    return 2


def _resume_target(run_dir: str, overrides: dict):
    """(config path, model index, overrides) that continue `run_dir` from its latest checkpoint."""
    from .errors import ConfigError, Problem
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
    index = config.models.index(run.model_spec(config))
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
