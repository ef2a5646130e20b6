"""``moai train CONFIG.yaml [--override key=value ...] [--resume] [--strict]`` and ``moai train --plot RUN_DIR``."""

from __future__ import annotations

import argparse


def cmd_train(args: argparse.Namespace) -> int:
    if args.plot:
        from .plot import plot_run

        print(f"wrote {plot_run(args.plot)}")
        return 0
    if not args.config:
        raise ValueError("give a CONFIG.yaml (or --plot RUN_DIR)")
    from .config import TrainConfig
    from .loop import train

    overrides = list(args.override or [])
    if args.strict:
        overrides.append("strict=true")
    config = TrainConfig.load(args.config, overrides)
    print(f"config: {config.to_dict()}")
    train(config, resume=args.resume)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="two-step MoAI training (step1 / step2 / base) on accelerate")
    p.add_argument("config", nargs="?", help="training config YAML (see moai/train/configs/)")
    p.add_argument(
        "--override", action="append", metavar="KEY=VALUE", help="override a config field (repeatable)"
    )
    p.add_argument("--resume", action="store_true", help="continue from the run's latest checkpoint")
    p.add_argument("--strict", action="store_true", help="abort on the first bad record")
    p.add_argument("--plot", metavar="RUN_DIR", help="write RUN_DIR/training.png from its metrics and exit")
    p.set_defaults(func=cmd_train)
