"""The ``moai`` command. Subcommands are plain functions; ``main(argv)`` runs in-process for tests."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence


def cmd_info(args: argparse.Namespace) -> int:
    """Parameter counts of a preset, built on the meta device (no memory)."""
    import torch

    from .model.configuration import MoAIConfig
    from .model.modeling import MoAIForConditionalGeneration

    config = MoAIConfig.from_preset(args.preset)
    with torch.device("meta"):
        model = MoAIForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    report = {
        "preset": args.preset,
        "total_params": total,
        "trainable_params": trainable,
        "moai_params": sum(
            p.numel() for n, p in model.named_parameters() if n in set(model.moai_parameter_names())
        ),
        "components": model.component_parameter_counts(),
        "image_tokens": config.num_image_tokens,
        "mixer_layers": list(config.mixer_config.layers),
        "compat": config.compat,
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"preset {args.preset} ({config.compat} compatibility)")
        print(f"  total params      {total:>15,}")
        print(f"  trainable params  {trainable:>15,}  (MoAI modules: compressor + mixers)")
        for name, count in report["components"].items():
            print(f"  {name:<17} {count:>15,}")
        print(f"  image tokens {config.num_image_tokens}, mixer layers {report['mixer_layers']}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Image + question -> processor -> generate, on the embedded default (the random tiny preset for now)."""
    from .demo import run_demo

    return run_demo(seed=args.seed, max_new_tokens=args.max_new_tokens)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moai", description="MoAI: Mixture of All Intelligence")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameter counts of a preset (meta device)")
    p.add_argument("--preset", default="tiny", help="tiny | mid | moai-7b")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="answer a question about a rendered image end to end")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=12)
    p.set_defaults(func=cmd_demo)

    for register in EXTRA_COMMANDS:
        register(sub)
    return parser


def _register_compat(sub: argparse._SubParsersAction) -> None:
    from .compat.cli import register

    register(sub)


def _register_train(sub: argparse._SubParsersAction) -> None:
    from .train.cli import register

    register(sub)


def _register_perceive(sub: argparse._SubParsersAction) -> None:
    from .perception.cli import register

    register(sub)


# subcommand groups of other modules: each takes the subparsers object
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _register_train,
    _register_compat,
    _register_perceive,
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError, ImportError) as err:
        print(f"moai {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
