"""A ShapesWorld model asked with the image where the engine puts it and where LLaVA data writes it.

    python bench/image_slot.py --model checkpoints/moai-tiny-shapes --world runs/shapesworld/check
    python bench/image_slot.py --model MODEL --world runs/exp-short/ocrcheck --sign-words --blank --show 5

The engine (and `moai predict`, the server, the evaluations) puts the image in the chat template's slot,
before the user's turn, as MoAI-7B's prompt has it; LLaVA-format training data writes ``<image>\\n`` at the
start of the first question, inside the user's turn. `moai train` moves it to the template's slot
(``image_slot: template``, the default); a model trained with ``image_slot: as_written`` (every ShapesWorld
model shipped before that option) was trained on the other prompt. This asks every question of ``--world``
both ways (``template``: the question as the engine gets it; ``turn``: ``<image>\\n`` before it) and prints
the accuracy per category. ``--sign-words``: only the sign-word questions ("What word is written on the
sign?"), with the OCR text alone in the aux (the other three modules removed, as the recipe's blanked sign
questions train), ``--blank`` about a canvas of the normaliser's mean colour with each image's own perception
(as ``blank_images`` trains), ``--show N`` printing the first N answers (docs/shapesworld.md, "The image in
the prompt").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from moai.model.constants import IMAGE_TOKEN  # noqa: E402
from moai.worlds.shapes import QUESTIONS_FILE, sign_word_question  # noqa: E402

SLOTS = {"template": "", "turn": f"{IMAGE_TOKEN}\n"}
"""Where the image goes: the question's prefix that puts it there."""
OCR_ALONE = ("ps", "owod", "sgg")
"""The modules removed for ``--sign-words``: the OCR text alone in the aux."""


def ask(
    model: str | None, world: Path, sign_words: bool = False, blank: bool = False, show: int = 0
) -> dict[str, dict[str, float]]:
    """Accuracy in % per category (``--sign-words``: of the sign words, ``sign word``) for each slot."""
    from aux_only import mean_canvas
    from PIL import Image

    from moai.engine import Engine  # heavy: torch and the model
    from moai.recipes.shapesworld import COLUMNS, accuracy_by_category, answer_all, read_questions, texts
    from moai.worlds.score import is_correct

    engine = Engine.load(model)
    questions = read_questions(world)
    if sign_words:
        questions = [q for q in questions if q["text"] == sign_word_question()]
    if not questions:
        raise ValueError(f"{world}: no {'sign-word ' if sign_words else ''}questions in {QUESTIONS_FILE}")
    images = [Image.open(world / q["image"]).convert("RGB") for q in questions]
    perceptions = engine.perceive(images)  # once, for both slots
    shown = [mean_canvas(engine)] * len(images) if blank else images
    drop = OCR_ALONE if sign_words else ()
    table = {}
    for slot, prefix in SLOTS.items():
        asked = [{**q, "text": prefix + q["text"]} for q in questions]
        said = texts(answer_all(engine, world, asked, images=shown, perceptions=perceptions, drop=drop))
        if sign_words:
            right = sum(is_correct(a, q["answer"]) for a, q in zip(said, questions))
            table[slot] = {"sign word": 100 * right / len(questions)}
        else:
            table[slot] = accuracy_by_category(questions, said)
        if show:
            pairs = ", ".join(f"{q['answer']} -> {a!r}" for q, a in zip(questions[:show], said))
            print(f"{slot}: {pairs}")
    columns = [c for c in COLUMNS if c in table["template"]] or ["sign word"]
    print(f"{'image slot':10}" + "".join(f"{c:>11}" for c in columns) + f"   ({len(questions)} questions)")
    for slot, row in table.items():
        print(f"{slot:10}" + "".join(f"{row[c]:11.1f}" for c in columns))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="a saved MoAI directory (default: the bundled model)")
    parser.add_argument("--world", type=Path, required=True, help="a `moai worlds shapes` directory")
    parser.add_argument(
        "--sign-words",
        action="store_true",
        help="only the sign-word questions, OCR text alone in the aux (default: every question, whole aux)",
    )
    parser.add_argument(
        "--blank",
        action="store_true",
        help="ask about a mean-colour canvas with each image's own perception (default: the image)",
    )
    parser.add_argument(
        "--show", type=int, default=0, help="print the first N answers of each slot (default 0)"
    )
    args = parser.parse_args(argv)
    if not (args.world / QUESTIONS_FILE).is_file():
        parser.error(f"--world {args.world}: no {QUESTIONS_FILE} (not a `moai worlds shapes` directory)")
    if args.show < 0:
        parser.error(f"--show {args.show}: must be >= 0")
    try:
        ask(args.model, args.world, args.sign_words, args.blank, args.show)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
