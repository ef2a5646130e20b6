"""``moai demo``: fresh ShapesWorld scenes answered by the bundled model, one question per category.

Renders scenes the model never saw (world seed ``DEMO_SEED_BASE + --seed``), runs the perception preset the
model was trained with, and answers through the engine (`moai.engine.Engine`: perception -> verbalization ->
processor -> generate; arXiv 2403.07508 §3). Prints, per category, the image path, the question, the aux
text, the answer and the ground truth.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .worlds.score import is_correct
from .worlds.shapes import CATEGORIES, Question, generate, image_path, render

DEMO_SEED_BASE = 900_000
"""World seeds of demo scenes start here: far from the seeds the bundled model was trained and tested on."""


@dataclass(frozen=True)
class DemoItem:
    """One answered demo question."""

    image: Path
    category: str
    question: str
    aux_text: str
    answer: str
    truth: str


def demo_questions(seed: int, out: Path) -> list[tuple[Path, Question]]:
    """One question of each category from fresh scenes (rendered to ``out``), in category order."""
    found: dict[str, tuple[Path, Question]] = {}
    world_seed = DEMO_SEED_BASE + seed
    index = 0
    while len(found) < len(CATEGORIES):
        scene, questions = generate(world_seed, index)
        index += 1
        new = [q for q in questions if q.category not in found]
        if not new:
            continue
        path = out / image_path(scene)
        path.parent.mkdir(parents=True, exist_ok=True)
        render(scene).save(path)
        for q in new:
            found.setdefault(q.category, (path, q))
    return [found[c] for c in CATEGORIES]


def run_demo(
    seed: int = 0, out: str | Path = "runs/demo", model: str | Path | None = None, max_new_tokens: int = 12
) -> int:
    from .compat.resolve import resolve_model  # heavy: the converter (torch)
    from .engine import DEFAULT_MODEL, Engine  # heavy: torch, transformers

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    out = Path(out)
    items = demo_questions(seed, out)
    start = time.perf_counter()
    engine = Engine.load(resolve_model(model))
    loaded = time.perf_counter()
    answers = engine.answer(
        [path for path, _ in items], [q.text for _, q in items], max_new_tokens=max_new_tokens
    )
    elapsed = time.perf_counter() - loaded
    n_params = sum(p.numel() for p in engine.model.parameters())
    shown = model or f"the bundled {DEFAULT_MODEL.parent.name}/{DEFAULT_MODEL.name}"
    print(f"model    {shown} ({n_params:,} parameters), loaded in {loaded - start:.1f} s")
    right = 0
    for (path, q), a in zip(items, answers):
        ok = is_correct(a.text, q.answer)
        right += ok
        print()
        print(f"image    {path}")
        print(f"category {q.category}")
        print(f"question {q.text}")
        print(f"aux      {a.aux_text}")
        print(f"answer   {a.text}")
        print(f"truth    {q.answer}  ({'right' if ok else 'wrong'})")
    print()
    print(f"{right}/{len(items)} right; perception + answers in {elapsed:.1f} s")
    return 0
