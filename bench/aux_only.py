"""How much of a ShapesWorld model's answers comes from its aux knowledge alone? The image taken away.

    python bench/aux_only.py --model checkpoints/moai-tiny-shapes --world runs/shapesworld/check

Every question of ``--world`` (a `moai worlds shapes` directory: its questions.jsonl and images) is asked about
a flat canvas in the image normaliser's mean colour (pixel values zero, as `image_dropout` and a data source's
`blank_images` blank an image in training), with the perception of its own scene: once with the aux on and
once with all four modules removed. A model that reads its aux scores above the no-aux row; one that answers
from the pixels alone falls to the majority answers in both. A model never trained on a blank canvas may not
end its answer there, so an answer is scored by its first word (`first_word`): the sign words are one word
too. ``--shapes N`` keeps the scenes with N shapes (1: nothing to search, one colour and one kind word in
the aux). Prints accuracy (%) per category (docs/shapesworld.md, "A no-search aux task in the recipe's data").
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from moai.engine import Engine  # noqa: E402
from moai.perception.verbalize import MODULES  # noqa: E402
from moai.recipes.shapesworld import COLUMNS, accuracy_by_category, read_questions  # noqa: E402
from moai.worlds.score import is_correct  # noqa: E402
from moai.worlds.shapes import image_path, read_scenes  # noqa: E402


def mean_canvas(engine: Engine) -> Image.Image:
    """A canvas of the processor's image size in its normaliser's mean colour: pixel values zero."""
    processor = engine.processor
    colour = tuple(round(255 * m) for m in processor.image_mean)
    return Image.new("RGB", (processor.image_size, processor.image_size), colour)


def scenes_with(world: Path, shapes: int) -> set[str]:
    """The image paths (as the question file names them) of the world's scenes with ``shapes`` shapes."""
    return {image_path(scene) for scene in read_scenes(world) if len(scene.shapes) == shapes}


POSITION = re.compile(r"Is the (\w+ \w+) (to the left of|above) the (\w+ \w+)\?")
"""The world's two position templates: (first referent, relation, second referent)."""


def relation_in_aux(question: str, aux_text: str) -> bool | None:
    """Whether the aux text holds a relation between a position question's two referents on its axis (either
    order, either predicate: "A is left of B", "B is right of A", "B is left of A", "A is right of B"); None
    for a question of another template. The SGG verbalizers keep their top-k relations (official: 10), so the
    asked pair can be missing."""
    match = POSITION.fullmatch(question)
    if match is None:
        return None
    a, relation, b = match.groups()
    before, after = ("left of", "right of") if relation == "to the left of" else ("above", "below")
    said = ((a, before, b), (b, after, a), (b, before, a), (a, after, b))
    return any(re.search(rf"\b{x}(?: \(#\d+\))? is {r} {y}\b", aux_text) for x, r, y in said)


def first_word(answer: str) -> str:
    return (answer.split() or [""])[0]


def aux_only_answers(
    engine: Engine, world: Path, questions: Sequence[dict], batch_size: int = 32
) -> tuple[list[str], list[str], list[str]]:
    """(aux on, all modules removed) answers to ``questions`` asked about `mean_canvas` with the perception
    of their own image, and the aux text each was asked with."""
    canvas = mean_canvas(engine)
    own, none, aux_texts = [], [], []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        perceptions = engine.perceive([Image.open(world / q["image"]).convert("RGB") for q in chunk])
        asked = ([canvas] * len(chunk), [q["text"] for q in chunk])
        own += [first_word(a.text) for a in engine.answer(*asked, perceptions=perceptions)]
        none += [first_word(a.text) for a in engine.answer(*asked, perceptions=perceptions, drop=MODULES)]
        aux_texts += [engine.aux_inputs(p)[0] for p in perceptions]
    return own, none, aux_texts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a saved MoAI directory (default: the bundled model)")
    parser.add_argument(
        "--world", type=Path, required=True, help="a moai worlds shapes directory (required, no default)"
    )
    parser.add_argument(
        "--shapes", type=int, default=None, help="only the scenes with this many shapes (default: all scenes)"
    )
    parser.add_argument("--limit", type=int, default=None, help="the first N questions only (default: all)")
    args = parser.parse_args(argv)
    engine = Engine.load(args.model)
    questions = read_questions(args.world)
    if args.shapes is not None:
        images = scenes_with(args.world, args.shapes)
        questions = [q for q in questions if q["image"] in images]
    questions = questions[: args.limit]
    own, none, aux_texts = aux_only_answers(engine, args.world, questions)
    rows = {"aux on": accuracy_by_category(questions, own), "no aux": accuracy_by_category(questions, none)}
    which = f" ({args.shapes}-shape scenes)" if args.shapes is not None else ""
    print(
        f"{args.model or 'bundled model'}, image blanked, {len(questions)} questions of {args.world}{which}"
    )
    print(" " * 8 + "".join(f"{c:>10}" for c in COLUMNS))
    for name, acc in rows.items():
        print(f"{name:<8}" + "".join(f"{acc.get(c, float('nan')):>10.1f}" for c in COLUMNS))
    print_position_split(questions, aux_texts, own, none)
    return 0


def print_position_split(
    questions: Sequence[dict], aux_texts: Sequence[str], own: Sequence[str], none: Sequence[str]
) -> None:
    """The position questions' accuracy split by whether their aux holds the asked pair (`relation_in_aux`)."""
    groups: dict[bool, list[tuple[bool, bool]]] = {True: [], False: []}
    for q, aux_text, a, n in zip(questions, aux_texts, own, none):
        held = relation_in_aux(q["text"], aux_text)
        if held is not None:
            groups[held].append((is_correct(a, q["answer"]), is_correct(n, q["answer"])))
    for held, rows in groups.items():
        if rows:
            on, off = (100.0 * sum(r[i] for r in rows) / len(rows) for i in (0, 1))
            where = "in the aux" if held else "not in the aux"
            print(
                f"position, the asked pair's relation {where}: {len(rows)} questions, aux on {on:.1f}, no aux {off:.1f}"
            )


if __name__ == "__main__":
    raise SystemExit(main())
