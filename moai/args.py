"""Argument types shared by every ``moai`` subcommand (a bad value is argparse's one-line usage error, exit 2).

A low-level module (docs/architecture.md): ``moai.cli`` and the subcommand modules of ``moai.compat``,
``moai.train`` and ``moai.perception`` import it; it imports no other ``moai`` module.
"""

from __future__ import annotations

import argparse


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


def port_number(text: str) -> int:
    """A TCP port 0 .. 65535 (``--port``; 0: the OS picks one)."""
    value = _int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port 0 .. 65535, got {text!r}")
    return value


def non_negative_float(text: str) -> float:
    """A finite number >= 0 (``--max-wait-ms``)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text!r}")
    return value


def thread_setting(text: str) -> int | str:
    """``--threads``: ``auto`` or a number of intra-op threads >= 0 (0: torch's setting; `moai.engine.Engine`)."""
    if text == "auto":
        return text
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be auto or an integer >= 0, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def torch_device(text: str) -> str:
    """A torch device string that exists on this machine (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ...)."""
    import torch  # heavy: imported when a --device is parsed, not at CLI start-up

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


def add_model_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` of a command that loads the model into an `Engine` (``Engine.load``)."""
    parser.add_argument(
        "--device",
        type=torch_device_or_auto,
        default="auto",
        help="torch device of the model: auto (CUDA when there is one, else cpu), cpu, cuda, cuda:N "
        "(default: %(default)s)",
    )
