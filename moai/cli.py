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
from pathlib import Path
from typing import Any

#: Exit codes: a bad input or usage (as argparse), a bug, Ctrl-C (128 + SIGINT).
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 1
EXIT_INTERRUPTED = 130
#: Set to 1 to see the traceback of an internal error instead of the one-line message.
TRACEBACK_ENV = "MOAI_TRACEBACK"


# -- argument types (a bad value is argparse's one-line usage error, exit code 2) -------------------------------
def positive_int(text: str) -> int:
    """An integer >= 1 (``--max-new-tokens``, ``--batch-size``, ...)."""
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def seed_int(text: str) -> int:
    """A random seed: an integer in 0 .. 2**63 - 1 (what ``torch.manual_seed`` accepts on every platform)."""
    value = _int(text)
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be an integer in 0 .. 2**63 - 1, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def torch_device(text: str) -> str:
    """A torch device string that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...)."""
    import torch

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError, TypeError):
        raise argparse.ArgumentTypeError(
            f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:0, mps)"
        ) from None
    if device.type in ("cpu", "meta"):
        if device.type == "meta":
            raise argparse.ArgumentTypeError("the meta device holds no data; use cpu or an accelerator")
        return text
    backend = getattr(torch, device.type, None) if device.type != "mps" else torch.backends.mps
    available = getattr(backend, "is_available", None)
    if available is None or not available():
        raise argparse.ArgumentTypeError(
            f"device {text!r}: no {device.type} device on this machine (torch {torch.__version__})"
        )
    count = getattr(backend, "device_count", lambda: 1)()
    if device.index is not None and device.index >= count:
        raise argparse.ArgumentTypeError(
            f"device {text!r}: this machine has {count} {device.type} device(s), indices 0..{count - 1}"
        )
    return text


def torch_device_or_auto(text: str) -> str:
    """``auto`` (CUDA when available, else CPU) or a `torch_device`."""
    return text if text == "auto" else torch_device(text)


# -- reading inputs (errors name the file and the reason) ------------------------------------------------------
def read_json(path: Path, what: str) -> Any:
    """A JSON file, or ``ValueError("PATH: not valid JSON (...; expected WHAT)")``; ``OSError`` if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not a UTF-8 text file (expected {what})") from None
    if not text.strip():
        raise ValueError(f"{path}: empty file (expected {what})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; expected {what})"
        ) from None
    except RecursionError:
        raise ValueError(f"{path}: JSON nested too deeply (expected {what})") from None


# -- subcommands ------------------------------------------------------------------------------------------------
def cmd_info(args: argparse.Namespace) -> int:
    """Parameter counts of a preset, built on the meta device (no memory)."""
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
    """Image + question -> processor -> generate, on the embedded default (the random tiny preset for now)."""
    from .demo import run_demo

    return run_demo(seed=args.seed, max_new_tokens=args.max_new_tokens)


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from . import __version__

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
        "--preset", default="tiny", help="model preset: tiny | mid | moai-7b (default: %(default)s)"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("demo", help="answer a question about a rendered image end to end")
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        help="seed of the random tiny model's weights; the same seed gives the same answer (default: %(default)s)",
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
