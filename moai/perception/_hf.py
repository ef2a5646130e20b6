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


def from_pretrained(cls: Any, checkpoint: str, revision: str | None, backend: str, **kwargs: Any) -> Any:
    """``cls.from_pretrained`` with an error that names the checkpoint when it cannot be loaded."""
    try:
        return cls.from_pretrained(checkpoint, revision=revision, **kwargs)
    except OSError as err:
        text = str(err).strip()
        first = text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(err).__name__
        offline = (
            " (HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") not in (None, "", "0") else ""
        )
        raise FileNotFoundError(
            f"{backend}: cannot load checkpoint {checkpoint!r} ({first}); pass a local directory or allow "
            f"downloads{offline}"
        ) from None


def hf_versions() -> dict[str, str]:
    return {"torch": package_version("torch"), "transformers": package_version("transformers")}
