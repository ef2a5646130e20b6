# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""Stage 0 of the ShapesWorld recipe: the vision tower pretrained on the training scenes' ground truth.

MoAI-7B starts from a pretrained CLIP tower (paper §3, "Model architecture"); the bundled model has no such
tower to start from. Trained from nothing inside the LLaVA-style base, a tower learns the colour of a shape but
not its kind: its patch feature tells the kind no better than the raw pixels of the patch (bench/vision_probe.py,
docs/shapesworld.md "What limits the model"). This stage gives it what CLIP pretraining gives the real tower, a
supervised signal: at the patch under the centre of every item of a training scene, the item's kind
(circle, square, triangle, sign) and colour, predicted from the patch features MoAI reads
(`select_patch_features`) by two linear heads that are dropped afterwards. The ground truth is the one the world
writes beside each image for training (`moai worlds shapes`: ``scenes.jsonl``); perception never reads it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from ..model.vision import select_patch_features
from ..worlds.shapes import COLOURS, KINDS, Scene, image_path, read_scenes

ITEM_CLASSES: tuple[str, ...] = (*KINDS, "sign")
"""What an item is: a shape of one kind, or a sign."""
COLOUR_CLASSES: tuple[str, ...] = (*COLOURS, "none")
"""The colour of an item (``none``: a sign)."""
IGNORE = -100
"""Label of a patch under no item's centre (no loss there)."""


@dataclass
class TowerConfig:
    """Pretraining of the vision tower on patch labels (`pretrain_tower`)."""

    steps: int = 1200
    """Optimizer steps (AdamW, linear warm-up, cosine decay to a tenth)."""
    batch_size: int = 32
    """Images a step."""
    lr: float = 3e-4
    """Peak learning rate of the tower and the two heads."""
    warmup_steps: int = 30
    """Linear warm-up steps."""
    colour_weight: float = 1.0
    """Weight of the second target, the item's colour, beside its kind (0: the kind alone). A base on a tower
    taught the kind alone learned colour slowly; with both, the kind needs more steps (docs/shapesworld.md)."""
    position_weight: float = 0.0
    """Weight of a third target, the item's centre (x, y in [-1, 1] of the canvas, mean squared error), read by a
    linear head from the same patch feature (0: none). The kind and colour targets alone leave the patch
    features with no linear trace of where the patch is (bench/vision_probe.py: which of two shapes is further
    right, read linearly, at chance), so the base's LLM has nothing to compare in a position question."""
    position_of: str = "item"
    """Where the position target is: ``item``, the centre of the item labelled at a patch (sub-patch precise);
    ``patch``, every patch its own centre (what the patch grid says, at every patch)."""
    seed: int = 0
    """Seed of the heads' init and of the order of the scenes."""

    def __post_init__(self) -> None:
        if self.position_of not in ("item", "patch"):
            raise ValueError(f"tower setting position_of={self.position_of!r}: expected 'item' or 'patch'")

    def overridden(self, settings: Sequence[str]) -> TowerConfig:
        """A copy with ``KEY=VALUE`` settings applied (``position_weight=1``); a one-line error names a bad one."""
        types = {f.name: f.type for f in dataclasses.fields(self)}
        changes: dict[str, float | int] = {}
        for setting in settings:
            key, _, value = setting.partition("=")
            if key not in types:
                raise ValueError(f"tower setting {setting!r}: no key {key!r} (keys: {', '.join(types)})")
            try:
                changes[key] = {"int": int, "float": float, "str": str}[types[key]](value)
            except ValueError:
                raise ValueError(f"tower setting {setting!r}: {value!r} is not a {types[key]}") from None
        return dataclasses.replace(self, **changes)


def patch_labels(scene: Scene, image_size: int, patch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Item class and colour class of every patch, row-major: two [grid * grid] long tensors.

    The patch under the centre of an item's bounding box takes the item's kind and colour; every other patch
    is `IGNORE`. Labelling each item at one patch asks the tower to gather the whole item there from the pieces
    its neighbours see (the shapes straddle the patch grid). Chosen after a development comparison that is not a
    repository command (so no numbers here): labelling every patch an item covers, or the empty patches as
    background, taught the kinds far less (the many easy labels outweigh the few hard ones).
    The scene's coordinates are those of the image the tower reads (`_batch` checks that the sizes agree).
    """
    grid = image_size // patch
    kinds = torch.full((grid, grid), IGNORE, dtype=torch.long)
    colours = torch.full((grid, grid), IGNORE, dtype=torch.long)
    for kind, colour, box in _items(scene):
        row, col = _centre_patch(box, grid, patch)
        kinds[row, col], colours[row, col] = kind, colour
    return kinds.flatten(), colours.flatten()  # [grid * grid] each


def patch_centres(scene: Scene, image_size: int, patch: int) -> torch.Tensor:
    """The centre of the item labelled at each patch (`patch_labels`), x and y scaled to [-1, 1] of the canvas:
    a [grid * grid, 2] float tensor, NaN at a patch under no item's centre."""
    grid = image_size // patch
    centres = torch.full((grid, grid, 2), float("nan"))
    for _, _, (x0, y0, x1, y1) in _items(scene):
        row, col = _centre_patch((x0, y0, x1, y1), grid, patch)
        centres[row, col] = torch.tensor([(x0 + x1) / image_size - 1, (y0 + y1) / image_size - 1])
    return centres.flatten(0, 1)  # [grid * grid, 2]


def _items(scene: Scene) -> list[tuple[int, int, tuple[int, int, int, int]]]:
    """Item class, colour class and box of every shape, then every sign (a later item on the same patch wins)."""
    items = [(KINDS.index(s.kind), list(COLOURS).index(s.colour), s.box) for s in scene.shapes]
    return items + [(len(ITEM_CLASSES) - 1, len(COLOUR_CLASSES) - 1, s.box) for s in scene.signs]


def _centre_patch(box: tuple[int, int, int, int], grid: int, patch: int) -> tuple[int, int]:
    """Row and column of the patch under the centre of ``box``."""
    x0, y0, x1, y1 = box
    return min(grid - 1, (y0 + y1) // 2 // patch), min(grid - 1, (x0 + x1) // 2 // patch)


def position_targets(scenes: Sequence[Scene], image_size: int, patch: int, position_of: str) -> torch.Tensor:
    """The position target of every patch of some scenes, [B, N, 2] in [-1, 1]: the labelled item's centre
    (`patch_centres`, NaN elsewhere) or, with ``position_of="patch"``, every patch's own centre."""
    if position_of == "item":
        return torch.stack([patch_centres(s, image_size, patch) for s in scenes])
    grid = image_size // patch
    steps = (torch.arange(grid) + 0.5) * 2 / grid - 1  # [grid] patch centres in [-1, 1]
    rows, cols = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack([cols, rows], -1).flatten(0, 1).expand(len(scenes), -1, -1)  # [B, N, 2]


def _batch(model, processor, world: Path, scenes: Sequence[Scene]) -> tuple[torch.Tensor, ...]:
    """Pixel values [B, 3, S, S] and patch labels (kind, colour) [B, N] of some scenes."""
    vision = model.config.vision_config
    images = [Image.open(world / image_path(s)) for s in scenes]
    if images[0].width != vision.image_size:
        raise ValueError(
            f"world {world}: images are {images[0].width} px, the tower reads {vision.image_size} px"
        )
    pixels = processor.preprocess_images(images)
    labels = [patch_labels(s, vision.image_size, vision.patch_size) for s in scenes]
    return pixels, torch.stack([k for k, _ in labels]), torch.stack([c for _, c in labels])


def pretrain_tower(
    model,
    processor,
    world: Path,
    config: TowerConfig,
    say: Callable[[str], None] = print,
    on_step: Callable[[float], None] | None = None,
) -> dict[str, float]:
    """Train ``model``'s vision tower in place on ``world``'s patch labels; returns the final loss and the kind
    accuracy on the labelled patches of the last 20 steps' batches (each scored before its update), with
    `TowerConfig.position_weight` also the centre's mean absolute error there, in pixels.

    Only the tower trains (the projector and the LLM are untouched); the linear heads are made here and dropped.
    ``on_step`` gets each step's loss.
    """
    tower = model.model.vision_tower
    width, layer = model.config.vision_config.hidden_size, model.config.vision_feature_layer
    torch.manual_seed(config.seed)
    head, colour_head = nn.Linear(width, len(ITEM_CLASSES)), nn.Linear(width, len(COLOUR_CLASSES))
    position_head = nn.Linear(width, 2)
    params = [p for p in tower.parameters() if p.requires_grad] + list(head.parameters())
    params += list(colour_head.parameters()) if config.colour_weight > 0 else []
    params += list(position_head.parameters()) if config.position_weight > 0 else []
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=0.01)

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(progress * math.pi))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    scenes = read_scenes(world)
    order = torch.randperm(len(scenes), generator=torch.Generator().manual_seed(config.seed)).tolist()
    tower.train()
    start, cursor, hits, scored, position_error, placed_count = time.perf_counter(), 0, 0, 0, 0.0, 0
    loss = torch.zeros(())
    for step in range(config.steps):
        if cursor + config.batch_size > len(order):
            cursor = 0
        chunk = [scenes[i] for i in order[cursor : cursor + config.batch_size]]
        cursor += config.batch_size
        pixels, labels, colours = _batch(model, processor, world, chunk)
        outputs = tower(pixels.to(tower.dtype), output_hidden_states=layer != -1)
        features = select_patch_features(outputs, layer)  # [B, N, C]
        logits = head(features)  # [B, N, kinds]
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
        if config.colour_weight > 0:
            colour_logits = colour_head(features).flatten(0, 1)  # [B * N, colours]
            loss = loss + config.colour_weight * F.cross_entropy(
                colour_logits, colours.flatten(), ignore_index=IGNORE
            )
        if config.position_weight > 0:
            vision = model.config.vision_config
            centres = position_targets(chunk, vision.image_size, vision.patch_size, config.position_of)
            placed = ~centres[..., 0].isnan()  # [B, N]: the patches with a target
            predicted = position_head(features)[placed]  # [items, 2]
            loss = loss + config.position_weight * F.mse_loss(predicted, centres[placed])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if on_step is not None:
            on_step(loss.item())
        if step >= config.steps - 20:
            kept = labels != IGNORE
            hits += int((logits.argmax(-1)[kept] == labels[kept]).sum())
            scored += int(kept.sum())
            if config.position_weight > 0:
                error = (predicted.detach() - centres[placed]).abs().sum()
                placed_count += int(placed.sum())
                position_error += float(error) * model.config.vision_config.image_size / 2
        if (step + 1) % 100 == 0 or step + 1 == config.steps:
            say(
                f"tower step {step + 1}/{config.steps}: loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)"
            )
    tower.eval()
    result = {
        "loss": round(loss.item(), 4),
        "accuracy": round(100 * hits / max(1, scored), 2),
        "seconds": round(time.perf_counter() - start, 1),
    }
    if config.position_weight > 0:  # mean over both coordinates of the placed patches
        result["position_error_px"] = round(position_error / max(1, 2 * placed_count), 2)
    return result
