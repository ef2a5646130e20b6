"""More sign-word questions for a ShapesWorld model's training, and its OCR score by template.

    python bench/sign_questions.py write --world runs/shapesworld/world --out signs.json --draws 3
    python bench/sign_questions.py score --model checkpoints/moai-tiny-shapes --world runs/shapesworld/check

``write``: a LLaVA training file of OCR questions about the world's images, one question a record (so no
answer can be copied from an earlier turn of the conversation; moai/worlds/signs.py, which the recipe uses
for its own file), ``--draws`` rounds over the scenes, each
round with absent words of its own: the sign-word question ("What word is written on the sign?") where the
scene has exactly one sign, the word-present question for every sign's word ("yes") and as many absent
words ("no"; one where the scene has no sign). ``--signs-only`` keeps the scenes with a sign (every aux then
holds a text, so "is there a text" answers nothing), ``--no-word-question`` leaves the sign-word question out, ``--words-only`` keeps it alone.
``--negatives`` chooses the absent words: ``any`` (SHAPESWORLD.md's: a random 3-6 letter word, most of them of
another length than the sign's, which a model can tell without reading the letters), ``same-length`` (random
letters as many as one of the scene's sign words) or ``near`` (a sign word with one letter changed); a scene
without a sign gets an ``any`` word.
The images are the world's: the perception cache of its training images serves the file as it is
(`moai train` data source ``{path: FILE, image_root: WORLD}``).

``score``: the world's OCR questions split by template (sign word; word present, answer yes; answer no, the
asked word of a sign word's length or not),
accuracy in % with the model's own aux, with the OCR text alone (the other three modules removed, as a
``drop_modules: [ps, owod, sgg]`` training file has it) and with all four modules removed (docs/shapesworld.md,
"More sign-word questions in the recipe", "A short aux beside the whole one").
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moai.worlds.shapes import SCENES_FILE, image_path, read_scenes, sign_word_question  # noqa: E402
from moai.worlds.signs import NEGATIVES, write_sign_file  # noqa: E402


def template(question: dict, signs: Sequence[str] = ()) -> str:
    """An OCR question's template, split by answer for the word-present one, and a "no" by whether the
    asked word has the length of one of the scene's sign words ``signs`` (then only its letters tell it
    from the sign's) or not."""
    if question["text"] == sign_word_question():
        return "sign word"
    if question["answer"] != "no":
        return f"word present, {question['answer']}"
    word = question["text"].split()[3]  # "Is the word {WORD} written in the image?"
    return "no, same length" if any(len(word) == len(s) for s in signs) else "no, other length"


def score(
    model: str | None, world: Path, limit: int | None = None, show: int = 0, blank: bool = False
) -> dict[str, dict[str, float]]:
    """Accuracy (%) per OCR template with the model's own aux, the OCR text alone and no aux (module docstring);
    ``show``: also print the first ``show`` sign-word questions' expected word and answers; ``blank``: ask about
    a canvas of the image normaliser's mean colour (pixel values zero, as a training source's ``blank_images``)
    with the perception of the question's own image."""
    from PIL import Image

    from moai.engine import Engine  # heavy: torch and the model
    from moai.perception.verbalize import MODULES
    from moai.recipes.shapesworld import answer_all, read_questions, texts
    from moai.worlds.score import is_correct

    engine = Engine.load(model)
    questions = [q for q in read_questions(world) if q["category"] == "ocr"][:limit]

    blanked = {}
    if blank:  # each image perceived once, its questions asked about aux_only's mean-colour canvas
        sys.path.insert(0, str(ROOT / "bench"))
        from aux_only import mean_canvas

        blanked = {
            "images": [mean_canvas(engine)] * len(questions),
            "perceptions": engine.perceive(
                [Image.open(world / q["image"]).convert("RGB") for q in questions]
            ),
        }

    def answers(drop: Sequence[str] = ()) -> list[str]:
        return texts(answer_all(engine, world, questions, drop=drop, **blanked))

    rows = {"own aux": answers()}
    rows["ocr alone"] = answers([m for m in MODULES if m != "ocr"])
    rows["no aux"] = answers(MODULES)
    signs = {image_path(s): [sign.word for sign in s.signs] for s in read_scenes(world)}
    templates = [template(q, signs[q["image"]]) for q in questions]
    counts = {t: templates.count(t) for t in sorted(set(templates))}
    table: dict[str, dict[str, float]] = {}
    for row, answers in rows.items():
        hits = dict.fromkeys(counts, 0)
        for question, kind, answer in zip(questions, templates, answers):
            hits[kind] += is_correct(answer, question["answer"])
        table[row] = {t: 100 * hits[t] / counts[t] for t in counts}
    words = [i for i, kind in enumerate(templates) if kind == "sign word"][:show]
    for i in words:
        said = ", ".join(f"{row} {answers[i]!r}" for row, answers in rows.items())
        print(f"sign word {questions[i]['answer']}: {said}")
    print(" " * 10 + "".join(f"{f'{t} ({counts[t]})':>25}" for t in counts))
    for row, values in table.items():
        print(f"{row:10}" + "".join(f"{values[t]:25.1f}" for t in counts))
    return table


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write a training file of sign-word questions")
    write.add_argument("--world", type=Path, required=True, help="a `moai worlds shapes` directory")
    write.add_argument("--out", type=Path, required=True, help="the training file (LLaVA JSON) to write")
    write.add_argument("--draws", type=int, default=3, help="rounds over the scenes (default 3)")
    write.add_argument("--signs-only", action="store_true", help="only scenes with a sign (default: all)")
    write.add_argument(
        "--no-word-question", action="store_true", help="leave the sign-word question out (default: kept)"
    )
    write.add_argument(
        "--words-only",
        action="store_true",
        help="the sign-word question alone (default: every sign question)",
    )
    write.add_argument(
        "--negatives",
        choices=NEGATIVES,
        default="any",
        help="how absent words are drawn: any 3-6 letters, the sign word's length, or one letter changed "
        "(default any, SHAPESWORLD.md's)",
    )
    scorer = sub.add_parser(
        "score", help="a model's OCR accuracy by template: its own aux, the OCR text alone, no aux"
    )
    scorer.add_argument("--model", default=None, help="a saved MoAI directory (default: the bundled model)")
    scorer.add_argument("--world", type=Path, required=True, help="a `moai worlds shapes` directory")
    scorer.add_argument("--limit", type=int, default=None, help="first N OCR questions (default: all)")
    scorer.add_argument(
        "--show", type=int, default=0, help="print the answers to the first N sign-word questions (default 0)"
    )
    scorer.add_argument(
        "--blank",
        action="store_true",
        help="ask about a blank canvas with each image's own perception, as blank_images trains (default: the image)",
    )
    args = parser.parse_args(argv)
    if not (args.world / SCENES_FILE).is_file():
        parser.error(f"--world {args.world}: no {SCENES_FILE} (not a `moai worlds shapes` directory)")
    if args.command == "score":
        score(args.model, args.world, args.limit, args.show, args.blank)
        return 0
    if args.draws < 1:
        parser.error(f"--draws {args.draws}: must be >= 1")
    if args.words_only and args.no_word_question:
        parser.error("--words-only keeps the sign-word question alone: not with --no-word-question")
    try:
        counts = write_sign_file(
            args.world,
            args.out,
            args.draws,
            args.signs_only,
            not args.no_word_question,
            args.negatives,
            args.words_only,
        )
    except ValueError as err:
        parser.error(str(err))
    print(
        f"wrote {sum(counts.values())} questions to {args.out}: {counts['yes']} yes, {counts['no']} no, "
        f"{counts['sign word']} sign words"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
