"""Training checkpoints: ``checkpoints/step-N`` (trainable weights, optimizer, scheduler, RNG), written
atomically, found again and restored for ``--resume`` (moai/train/loop.py), whole or FSDP2-sharded."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .config import TrainConfig, trained_image_slot


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_sharded(model: nn.Module) -> bool:
    """Whether FSDP2 shards the model's parameters (they are DTensors)."""
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def gathered_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict] | None:
    """(model state dict, optimizer state dict), whole and on the CPU, of a model whose parameters are sharded
    by FSDP2 (DTensors); ``None`` for any other model (its own state dicts hold whole tensors already).

    A collective: every process calls it; the main process gets the state, the others empty dicts."""
    if not is_sharded(model):
        return None
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (
        get_model_state_dict(model, options=options),
        get_optimizer_state_dict(model, optimizer, options=options),
    )


def save_checkpoint(
    run: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    keep: int,
    gathered: tuple[dict, dict] | None = None,
    head: nn.Module | None = None,
) -> Path:
    """Write ``checkpoints/step-N`` atomically (temp dir + rename), then point ``latest`` at it. ``gathered``:
    the `gathered_state` of a sharded model (its trainable weights and optimizer state are written); ``head``:
    the referent target's head (moai/train/referent.py), kept with the optimizer state, not the model."""
    from safetensors.torch import save_file

    root = run / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final, tmp = root / f"step-{step:07d}", root / f".step-{step:07d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    weights = gathered[0] if gathered is not None else dict(model.named_parameters())
    trainable = {n: weights[n].detach().cpu().contiguous() for n in names}
    save_file(trainable, str(tmp / "trainable.safetensors"))
    torch.save(
        {
            "step": step,
            "optimizer": gathered[1] if gathered is not None else optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": _rng_state(),
            **({"referent_head": head.state_dict()} if head is not None else {}),
        },
        tmp / "state.pt",
    )
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / "latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    others = sorted(p for p in root.glob("step-*") if p != final)
    for old in others[: max(0, len(others) - max(keep - 1, 0))]:  # keep `keep` checkpoints, this one included
        shutil.rmtree(old, ignore_errors=True)
    return final


def _complete(path: Path) -> bool:
    return (path / "state.pt").is_file() and (path / "trainable.safetensors").is_file()


def check_same_image_slot(config: TrainConfig, run: Path) -> None:
    """Refuse to resume ``run`` with another image slot than it was trained with: every prompt would change at
    the resumed step (a run started before the option resumed with today's default, say)."""
    trained = trained_image_slot(run)
    if trained is not None and trained != config.image_slot:
        raise ValueError(
            f"--resume: {run} was trained with image_slot {trained}, this config asks {config.image_slot}: the "
            f"prompts would change at the resumed step; resume it with --override image_slot={trained}"
        )


def latest_checkpoint(run: Path) -> Path | None:
    """The checkpoint ``checkpoints/latest`` names, or (pointer missing or broken) the newest complete one."""
    root = run / "checkpoints"
    pointer = root / "latest"
    if pointer.is_file():
        path = root / pointer.read_text().strip()
        if _complete(path):
            return path
    found = sorted(p for p in root.glob("step-*") if _complete(p)) if root.is_dir() else []
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler, head: nn.Module | None = None) -> int:
    """Restore trainable weights, optimizer, scheduler, RNG (and the referent target's ``head``) from
    ``path``; return its step.

    A checkpoint that cannot be read, or that was written for other trainable parameters, is a one-line
    `ValueError` naming it.
    """
    from safetensors.torch import load_file

    try:
        weights = load_file(str(path / "trainable.safetensors"))
        state = torch.load(path / "state.pt", weights_only=False)
    except Exception as err:  # safetensors, pickle and zip errors differ by kind of damage
        reason = " ".join(str(err).split())
        raise ValueError(f"checkpoint {path} is unreadable ({type(err).__name__}: {reason})") from None
    params = dict(model.named_parameters())
    trainable = {n for n, p in params.items() if p.requires_grad}
    if set(weights) != trainable:
        extra, missing = sorted(set(weights) - trainable), sorted(trainable - set(weights))
        parts = [
            f"{len(names)} {what}, e.g. {names[0]}"
            for what, names in (("missing", missing), ("unexpected", extra))
            if names
        ]
        raise ValueError(
            f"checkpoint {path} does not match this config's trainable parameters ({'; '.join(parts)})"
        )
    if (head is not None) != ("referent_head" in state):
        raise ValueError(
            f"checkpoint {path} was written {'without' if head is not None else 'with'} the referent target "
            f"(referent_weight {'0' if head is not None else '> 0'}); resume it with the same referent_weight"
        )
    for name, value in weights.items():
        if params[name].shape != value.shape:
            raise ValueError(
                f"checkpoint {path}: {name} has shape {tuple(value.shape)}, the model {tuple(params[name].shape)}"
            )
    if is_sharded(model):  # FSDP2: each process takes its shards of the whole tensors
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True, strict=False)
        set_model_state_dict(model, weights, options=options)
        set_optimizer_state_dict(model, optimizer, state["optimizer"], options=options)
    else:
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(value)
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if head is not None:
        head.load_state_dict(state["referent_head"])
    _set_rng_state(state["rng"])
    return int(state["step"])
