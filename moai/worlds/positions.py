"""Position questions for training: every position question of a scene, one question a record.

The base starts answering "Is the red circle to the left of the blue square?" from the pixels only when the
easiest case comes first: scenes of two shapes, where finding one referent almost gives the answer; every
scene's position questions from the start leave it at chance (docs/shapesworld.md, "Position: the easiest
case first"). `write_position_world` renders a world of such scenes (the ones among the first scenes of a seed
whose shape count is in range: the generator's own scenes, none drawn again) with the file of their
questions; `position_records` makes the same records for any world's scenes, `world_position_records` for a
world's scenes of a shape range (the recipe's ``world/positions2.json``, on which its ``base_pos`` stage trains;
bench/position_questions.py). Both templates, both orders of each pair, every pair the rules of SHAPESWORLD.md
allow (`position_candidates`). Not in the paper: a curriculum for a base trained from nothing, where MoAI-7B's
LLM arrives pretrained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from .shapes import (
    SCENES_FILE,
    SHAPE_COUNT_RANGE,
    Scene,
    generate_scene,
    image_path,
    position_candidates,
    read_scenes,
    render,
    write_jsonl,
)

POSITIONS_FILE = "positions.json"
"""The training file of a world's position questions (beside ``train.json``)."""


def position_records(scenes: Iterable[Scene]) -> list[dict]:
    """One LLaVA record a position question of each scene, ids ``{scene}-pos{k}``."""
    records = []
    for scene in scenes:
        for k, (question, answer) in enumerate(position_candidates(scene)):
            turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
            records.append({"id": f"{scene.id}-pos{k}", "image": image_path(scene), "conversations": turns})
    return records


def world_position_records(world: Path, shapes: tuple[int, int] = (2, 2)) -> list[dict]:
    """`position_records` of the scenes of the world in ``world`` that hold ``shapes[0]``..``shapes[1]`` shapes
    (the recipe's ``world/positions2.json``: its two-shape scenes)."""
    low, high = shapes
    return position_records(s for s in read_scenes(world) if low <= len(s.shapes) <= high)


def write_position_file(records: list[dict], out: Path) -> dict[str, int]:
    """Write ``records`` to ``out`` (LLaVA JSON); returns the count of each answer. An empty list is refused:
    a training stage cannot start on an empty file."""
    if not records:
        raise ValueError(f"{out}: no position question to write (make more scenes)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records))
    return {a: sum(r["conversations"][1]["value"] == a for r in records) for a in ("yes", "no")}


def write_position_world(
    out: Path, draws: int, seed: int, shapes: tuple[int, int] = (2, 2)
) -> dict[str, int]:
    """Of the first ``draws`` scenes of ``seed``, render those that hold ``shapes[0]``..``shapes[1]`` shapes
    into ``out`` (``images/``, ``scenes.jsonl``) with their position questions (``positions.json``); returns
    the count of each answer and of the scenes kept. Refused when the scenes kept ask no position question."""
    low, high = shapes
    if not 2 <= low <= high <= SHAPE_COUNT_RANGE[1]:
        raise ValueError(
            f"shapes {shapes}: a position question needs two shapes and a scene holds {SHAPE_COUNT_RANGE[1]} "
            f"at most, so 2 <= MIN <= MAX <= {SHAPE_COUNT_RANGE[1]}"
        )
    if draws < 1:
        raise ValueError(f"draws {draws}: must be >= 1")
    (out / "images").mkdir(parents=True, exist_ok=True)
    kept = [s for s in (generate_scene(seed, i) for i in range(draws)) if low <= len(s.shapes) <= high]
    for scene in kept:
        render(scene).save(out / image_path(scene))
    write_jsonl(out / SCENES_FILE, (s.to_dict() for s in kept))
    counts = write_position_file(position_records(kept), out / POSITIONS_FILE)
    return {**counts, "scenes": len(kept)}
