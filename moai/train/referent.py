"""A dense training target for the referent lookup: each named shape's centre, read from the LLM's state.

A ShapesWorld position question ("Is the red circle to the left of the blue square?") asks the LLM to find two
referents among the image tokens and compare where they are, and its only training signal is one yes/no token:
a base trained from nothing stays at chance on it. With this target, a linear head (used in training only,
never saved with the model) regresses the centre of the shape that ``the {colour} {kind}`` names, in [-1, 1],
from the hidden state after LLM layer ``referent_layer`` at the phrase's last token; its mean squared error,
weighted by ``referent_weight``, is added to the answer's loss. Measured in docs/shapesworld.md, "Position
with a target for the lookup". Not in the paper: MoAI-7B's LLM arrives pretrained.

The targets come from the world's ground truth (`DataSource.scenes`, a ``scenes.jsonl``), matched to each
record by its image's file name (``images/{scene id}.png``, as `moai worlds shapes` writes them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..model.constants import IGNORE_INDEX
from ..worlds.shapes import CANVAS, SCENES_FILE, Scene, read_scenes, unique_referents

REFERENT_KEYS = ("referent_rows", "referent_cols", "referent_xy")
"""Batch keys of the targets (taken out of the batch before the model's forward)."""

Referents = tuple[tuple[str, tuple[float, float]], ...]
"""(phrase, centre in [-1, 1]) of every shape a scene's ``the {colour} {kind}`` names uniquely."""


def scene_referents(scene: Scene, size: int = CANVAS) -> Referents:
    """The phrase and centre (x, y scaled to [-1, 1] over the ``size``-pixel canvas) of each unique referent."""
    out = []
    for shape in unique_referents(scene):
        x, y = shape.centre
        out.append((f"the {shape.colour} {shape.kind}", (2 * x / size - 1, 2 * y / size - 1)))
    return tuple(out)


def read_referents(scenes: Path) -> dict[str, Referents]:
    """Scene id -> its referents, from a world's ``scenes.jsonl`` (or the world directory holding it)."""
    world = scenes if scenes.is_dir() else scenes.parent
    if scenes.is_file() and scenes.name != SCENES_FILE:
        raise ValueError(f"scenes {scenes}: expected a world directory or its {SCENES_FILE}")
    return {scene.id: scene_referents(scene) for scene in read_scenes(world)}


class PhraseTokens:
    """The token sequences a phrase may have inside a prompt: alone and after a space (word-level tokenizers
    give one, BPE tokenizers may mark the leading space), cached per phrase."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[str, tuple[tuple[int, ...], ...]] = {}

    def __call__(self, phrase: str) -> tuple[tuple[int, ...], ...]:
        if phrase not in self.cache:
            forms = {
                tuple(self.tokenizer(text, add_special_tokens=False).input_ids)
                for text in (phrase, " " + phrase)
            }
            self.cache[phrase] = tuple(f for f in forms if f)
        return self.cache[phrase]


def referent_targets(
    input_ids: torch.Tensor, labels: torch.Tensor, referents: Sequence[Referents], tokens: PhraseTokens
) -> dict[str, torch.Tensor]:
    """Where each referent phrase stands in the batch's prompts, and its centre.

    Every occurrence of a sample's phrase among its prompt tokens (not its answers: ``labels`` is
    ``IGNORE_INDEX`` there) is a target at the phrase's last token. Returns ``referent_rows`` [N] and
    ``referent_cols`` [N] (batch and token index into ``input_ids`` [B, S], after padding) and ``referent_xy``
    [N, 2].
    """
    rows, cols, xy = [], [], []
    for b, sample in enumerate(referents):
        ids = input_ids[b].tolist()
        prompt = (labels[b] == IGNORE_INDEX).tolist()
        for phrase, centre in sample:
            ends = set()  # both forms may match one occurrence (a byte tokenizer's space is its own token)
            for form in tokens(phrase):
                n = len(form)
                for start in range(len(ids) - n + 1):
                    if tuple(ids[start : start + n]) == form and all(prompt[start : start + n]):
                        ends.add(start + n - 1)
            for end in sorted(ends):
                rows.append(b)
                cols.append(end)
                xy.append(centre)
    return {
        "referent_rows": torch.tensor(rows, dtype=torch.long),
        "referent_cols": torch.tensor(cols, dtype=torch.long),
        "referent_xy": torch.tensor(xy, dtype=torch.float32).reshape(-1, 2),
    }


class ReferentHead(nn.Module):
    """Centre (x, y) of a referent from one hidden state: a linear map, trained beside the model, not saved."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 2)

    def forward(
        self, hidden: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, xy: torch.Tensor
    ) -> torch.Tensor:
        """Summed squared error (averaged over x and y) of the targets in ``hidden`` [B, S, D]; a sum, so
        that the caller divides by the step's target count, as the answer's loss by its label count."""
        predicted = self.proj(hidden[rows, cols].float())  # [N, 2]
        return ((predicted - xy.to(predicted.device)) ** 2).mean(dim=-1).sum()


@dataclass
class ReferentTarget:
    """The referent target of a training run: its head, its loss's weight and the hidden state it reads."""

    head: ReferentHead
    weight: float
    """`TrainConfig.referent_weight`."""
    layer: int
    """`TrainConfig.referent_layer`: index into the forward's ``hidden_states`` (0: the embeddings)."""
