"""Which model a command runs: ``--model PATH`` resolved to a saved MoAI directory.

A saved MoAI directory (``save_pretrained``, ``model_type: moai``) is used as it is. An official MoAI
checkpoint directory (the released ``BK-Lee/MoAI-7B`` layout; docs/official.md) is converted on first use
(`moai.compat.official.convert_checkpoint`) into a cache directory keyed by the checkpoint's path, sizes
and modification times, and one line says so; later runs reuse the converted copy. ``None`` stays ``None``
(the engine's default, the bundled model).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "MOAI_CACHE_DIR"
"""Where converted checkpoints go (default ``~/.cache/moai``)."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "moai")


def is_saved_moai(path: Path) -> bool:
    """A ``save_pretrained`` MoAI directory (its config says ``model_type: moai``)."""
    try:
        return json.loads((path / "config.json").read_text()).get("model_type") == "moai"
    except (OSError, ValueError, AttributeError):
        return False


def checkpoint_key(src: Path) -> str:
    """A short hash of the checkpoint's location and of the name, size and mtime of each of its files."""
    digest = hashlib.sha256(str(src.resolve()).encode())
    for file in sorted(p for p in src.iterdir() if p.is_file()):
        stat = file.stat()
        digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def resolve_model(model: str | Path | None, log: Callable[[str], None] = print) -> Path | None:
    """The saved MoAI directory to load for ``--model`` (converting an official checkpoint on first use)."""
    if model is None:
        return None
    path = Path(model)
    if not path.is_dir():
        raise FileNotFoundError(f"model {path}: not a directory")
    if is_saved_moai(path) or not (path / "config.json").is_file():
        return path  # a saved MoAI directory, or not a model at all (the loader names the problem)
    from .official import convert_checkpoint, read_official_config  # heavy: torch, transformers

    read_official_config(path / "config.json")  # neither ours nor official: a one-line error naming it
    target = cache_root() / "converted" / f"{path.resolve().name}-{checkpoint_key(path)}"
    if not is_saved_moai(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        convert_checkpoint(path, target, log=lambda _: None)
        log(f"converted the official checkpoint {path} into {target} (first use; later runs reuse it)")
    return target
