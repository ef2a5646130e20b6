"""The ``moai`` command. Subcommands are plain functions; ``main(argv)`` runs in-process for tests.

Bad input never prints a traceback: the place that reads an input turns a problem into a ``ValueError``
(or ``OSError``) naming the input and the reason, and ``main`` prints it as one line
``moai SUBCOMMAND: error: ...`` with exit code 2. Ctrl-C prints ``moai SUBCOMMAND: interrupted`` and exits
with 130. Any other exception is a bug: one line ``moai SUBCOMMAND: internal error: ...`` and exit code 1
(``MOAI_TRACEBACK=1`` re-raises it with its traceback).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from importlib.metadata import PackageNotFoundError, version

from . import __version__
from .args import positive_int, seed_int
from .ask import register as register_ask
from .compat.cli import register as register_compat
from .demo import run_demo
from .eval.cli import register as register_eval
from .perception.cli import register as register_perceive
from .predict import register as register_predict
from .serve.cli import register as register_serve
from .train.cli import register as register_train
from .web import register as register_web
from .worlds.cli import register as register_worlds

#: Exit codes: a bad input or usage (as argparse), a bug, Ctrl-C (128 + SIGINT).
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
#: Set to 1 to see the traceback of an internal error instead of the one-line message.
TRACEBACK_ENV = "MOAI_TRACEBACK"


# -- subcommands ------------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    """Parameter counts of a preset, built on the meta device (no memory)."""
    # heavy: torch, transformers (imported when the command runs, not at CLI start-up)
    import torch

    from .model.configuration import MoAIConfig
    from .model.modeling import MoAIForConditionalGeneration

    config = MoAIConfig.from_preset(args.preset)
    with torch.device("meta"):
        model = MoAIForConditionalGeneration(config)
    total = sum(p.numel() for p in model.parameters())
    trainable = model.set_trainable("moai")  # the paper's recipe (what `moai train` trains by default)
    moai_names = set(model.moai_parameter_names())
    report = {
        "preset": args.preset,
        "total_params": total,
        "trainable_params": trainable,
        "moai_params": sum(p.numel() for n, p in model.named_parameters() if n in moai_names),
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
    """Fresh ShapesWorld scenes answered by the bundled model (or ``--model``), one question per category."""
    return run_demo(seed=args.seed, out=args.out, model=args.model, max_new_tokens=args.max_new_tokens)


def _package_version() -> str:
    try:
        return version("moai-vlm")
    except PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="moai", description="MoAI: Mixture of All Intelligence")
    parser.add_argument(
        "--version", action="version", version=f"moai {_package_version()}", help="print the version and exit"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="parameter counts of a preset (meta device)")
    p.add_argument(
        "--preset", default="tiny", help="model preset: tiny | shapes | mid | moai-7b (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="answer one question of each ShapesWorld category on fresh scenes")
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="which fresh scenes: the same seed gives the same scenes and answers (default: %(default)s)",
    )
    p.add_argument(
        "--out", default="runs/demo", help="directory the scenes are written to (default: %(default)s)"
    )
    p.add_argument(
        "--model", help="a saved MoAI directory (default: the bundled checkpoints/moai-tiny-shapes)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=12,
        help="most tokens to generate, >= 1 (default: %(default)s)",
    )
    p.set_defaults(func=cmd_demo)

    for register in EXTRA_COMMANDS:
        register(sub)
    for leaf in walk_parsers(parser):
        leaf.set_defaults(_prog=leaf.prog)  # the innermost subcommand's name wins (``moai compat keys``)
    return parser


def walk_parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """``parser`` and every sub-parser below it, depth first."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):  # aliases map to the same parser
                yield from walk_parsers(child)


# subcommand groups of other modules: each takes the subparsers object
EXTRA_COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    register_train,
    register_compat,
    register_perceive,
    register_worlds,
    register_predict,
    register_ask,
    register_serve,
    register_web,
    register_eval,
]


def describe_error(err: BaseException) -> str:
    """One line for a bad-input error: ``FILE: reason`` for an ``OSError``, the message otherwise."""
    if isinstance(err, OSError) and err.filename is not None and err.strerror:
        text = f"{err.filename}: {err.strerror}"
    else:
        text = str(err) or type(err).__name__
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version and usage errors (argparse printed them)
        return done.code if isinstance(done.code, int) else EXIT_BAD_INPUT
    name = getattr(args, "_prog", f"moai {args.command}")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, ImportError) as err:
        print(f"{name}: error: {describe_error(err)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as err:  # a bug: one line, the traceback on request
        if os.environ.get(TRACEBACK_ENV, "") not in ("", "0"):
            raise
        print(
            f"{name}: internal error: {type(err).__name__}: {describe_error(err)} "
            f"(set {TRACEBACK_ENV}=1 for the traceback; please report it)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
