"""`moai train CONFIG.yaml [--override key=value ...] [--resume] [--strict]` and `moai train --plot RUN_DIR`."""

from __future__ import annotations

import argparse
import os
import signal
import sys


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or plot a run); SIGINT / SIGTERM end it with a checkpoint, one line and exit code 128 + N."""
    try:
        return _cmd_train(args)
    except KeyboardInterrupt:  # Ctrl-C before the loop installed its handlers (imports, config)
        print("moai train: interrupted by SIGINT before training started; nothing saved", file=sys.stderr)
        return 128 + signal.SIGINT


def _cmd_train(args: argparse.Namespace) -> int:
    if args.plot:
        from .plot import plot_run  # heavy: matplotlib (imported when the command runs, not at start-up)

        print(f"wrote {plot_run(args.plot)}")
        return 0
    if not args.config:
        raise ValueError("give a CONFIG.yaml (or --plot RUN_DIR)")
    # heavy: torch, transformers (imported when the command runs, not at CLI start-up)
    from .config import TrainConfig
    from .loop import Interrupted, train

    overrides = list(args.override or [])
    if args.strict:
        overrides.append("strict=true")
    config = TrainConfig.load(args.config, overrides)
    if not config.data:
        raise ValueError(f"{args.config}: data is empty: list at least one LLaVA data file")
    if os.environ.get("RANK", "0") == "0":  # one line, not one a process under torchrun
        print(f"config: {config.to_dict()}", flush=True)
    try:
        summary = train(config, resume=args.resume)
    except Interrupted as stopped:
        print(f"moai train: {stopped}", file=sys.stderr)
        return stopped.exit_code
    if summary["processes"] > 1:  # end without tearing down the process group (loop.DISTRIBUTED_LEFTOVERS)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``moai train`` to the ``moai`` subcommands."""
    p = sub.add_parser(
        "train",
        help="two-step MoAI training (step1 / step2 / base) on accelerate",
        description="Train one stage of MoAI (paper arXiv 2403.07508 §3.3: step 1 samples one expert per "
        "stream, step 2 trains the gates too) from a YAML config. Ctrl-C / SIGTERM saves a checkpoint at the "
        "last finished step and exits with 130 / 143; --resume continues from it.",
    )
    p.add_argument(
        "config",
        nargs="?",
        help="training config YAML (examples in moai/train/configs/); needed unless --plot is given",
    )
    p.add_argument(
        "--override",
        action="append",
        metavar="KEY=VALUE",
        help="override a config field, value read as YAML, dotted keys for nesting (repeatable; default: none)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's latest checkpoint (default: off, start at step 0 and restart metrics.jsonl)",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="abort on the first bad record instead of reporting and skipping it (default: off)",
    )
    p.add_argument(
        "--plot",
        metavar="RUN_DIR",
        help="write RUN_DIR/training.png from its metrics.jsonl and exit (default: none, train)",
    )
    p.set_defaults(func=cmd_train)
