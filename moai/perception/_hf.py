"""Shared plumbing of the transformers backends (lazy imports, device / dtype, offline loading)."""

from __future__ import annotations

import os
from typing import Any

from .registry import missing_extra, package_version

DTYPES = ("float32", "float16", "bfloat16")


def import_torch(backend: str) -> Any:
    """``torch``, or the one-line ``MissingExtraError``."""
    try:
        import torch
    except ImportError:
        raise missing_extra(backend, "torch", None) from None
    return torch


def torch_dtype(name: str, backend: str) -> Any:
    torch = import_torch(backend)
    if name not in DTYPES:
        raise ValueError(f"{backend}: dtype must be one of {DTYPES}, got {name!r}")
    return getattr(torch, name)


def from_pretrained(
    cls: Any, checkpoint: str, revision: str | None, backend: str, role: str, **kwargs: Any
) -> Any:
    """``cls.from_pretrained`` with a one-line error naming the checkpoint and how to pass a local copy."""
    from safetensors import SafetensorError

    try:
        return cls.from_pretrained(checkpoint, revision=revision, **kwargs)
    except OSError as err:  # not found, not downloadable
        raise FileNotFoundError(
            f"{backend}: cannot load checkpoint {checkpoint!r} ({_first_sentence(err)}); "
            f"{local_checkpoint_hint(role)}"
        ) from None
    except (ValueError, RuntimeError, SafetensorError) as err:  # found, but corrupt or of another model
        raise ValueError(
            f"{backend}: cannot load checkpoint {checkpoint!r} ({type(err).__name__}: {_first_sentence(err)})"
        ) from None


def _first_sentence(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__


def local_checkpoint_hint(role: str) -> str:
    """How to point a backend at a local copy, and, when offline, how to allow downloads."""
    hint = (
        f"pass a local directory with `moai perceive --checkpoint {role}=DIR` "
        f'(or the option "checkpoint" of the {role} backend in a --config file)'
    )
    if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0"):
        hint += ", or allow downloads (HF_HUB_OFFLINE is set: unset it)"
    return hint


def hf_versions() -> dict[str, str]:
    return {"torch": package_version("torch"), "transformers": package_version("transformers")}
