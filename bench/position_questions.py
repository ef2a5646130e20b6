"""Every position question of a ShapesWorld world's images, one question a record: a training file for a
position curriculum, and the check set's position score by number of shapes.

    python bench/position_questions.py write --world runs/shapesworld/world --out pos2.json --shapes 2:2
    python bench/position_questions.py score --model MODEL --world runs/shapesworld/check
    python bench/position_questions.py score --run RUN --world runs/shapesworld/check

``write``: a LLaVA training file with every (question, answer) the position rules allow in each scene whose
shape count is within ``--shapes MIN:MAX`` (`position_candidates`: two different unique referents, centres
at least 8 px apart on the asked axis; both templates, both orders), one question a record
(`moai.worlds.positions.world_position_records`, which writes the recipe's ``world/positions2.json``, the
file its ``base_pos`` stage trains on, with ``--shapes 2:2``). The images are
the world's, so its perception cache serves the file as it is (`moai train` data source ``{path: FILE,
image_root: WORLD}``).

``score``: the world's position questions answered by the model, accuracy in % by the scene's number of
shapes (a curriculum that starts on two-shape scenes shows there first); ``--run`` scores every checkpoint
of a `moai train` run directory and its final model.

Not in the paper: a probe of whether the position question is learnt when its easiest case comes first
(docs/shapesworld.md, "Position: the easiest case first").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moai.worlds.positions import world_position_records, write_position_file  # noqa: E402
from moai.worlds.shapes import read_scenes  # noqa: E402


def shape_range(text: str) -> tuple[int, int]:
    """``MIN:MAX`` as two integers, 2 <= MIN <= MAX; ValueError otherwise."""
    low, high = (int(v) for v in text.split(":"))
    if not 2 <= low <= high:
        raise ValueError(f"{text!r}: expected MIN:MAX with 2 <= MIN <= MAX")
    return low, high


def records(world: Path, shapes: tuple[int, int]) -> list[dict]:
    """One LLaVA record a position question of every scene with ``shapes`` shapes, ids ``{scene}-pos{k}``."""
    return world_position_records(world, shapes)


def score(engine, world: Path) -> dict[int, tuple[int, int]]:
    """(correct, asked) of the world's position questions answered by ``engine``, by the scene's number of
    shapes."""
    # heavy: the recipe's answering loads torch
    from moai.recipes.shapesworld import answer_all, read_questions, texts
    from moai.worlds.score import is_correct

    shapes = {s.id: len(s.shapes) for s in read_scenes(world)}
    questions = [q for q in read_questions(world) if q["category"] == "position"]
    answers = texts(answer_all(engine, world, questions))
    tally: dict[int, list[int]] = {}
    for q, answer in zip(questions, answers):
        row = tally.setdefault(shapes[q["question_id"].rsplit("-", 1)[0]], [0, 0])
        row[0] += int(is_correct(answer, q["answer"]))
        row[1] += 1
    return {n: (c, t) for n, (c, t) in sorted(tally.items())}


def report(name: str, tally: dict[int, tuple[int, int]]) -> str:
    """One line: overall and per shape count, accuracy in %."""
    correct, asked = sum(c for c, _ in tally.values()), sum(t for _, t in tally.values())
    parts = "  ".join(f"{n}: {100 * c / t:5.1f}" for n, (c, t) in tally.items())
    return f"{name:>12}  {100 * correct / asked:5.1f} ({asked})  by shapes  {parts}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    write = sub.add_parser("write", help="write a training file of position questions")
    write.add_argument("--world", type=Path, required=True, help="a world made by `moai worlds shapes`")
    write.add_argument("--out", type=Path, required=True, help="the LLaVA JSON file to write")
    write.add_argument("--shapes", default="2:6", help="scenes with MIN:MAX shapes (default: 2:6, every one)")
    check = sub.add_parser("score", help="position accuracy by number of shapes")
    which = check.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a saved MoAI model directory")
    which.add_argument("--run", type=Path, help="a `moai train` run directory: every checkpoint and final/")
    check.add_argument("--world", type=Path, required=True, help="a world with questions.jsonl")
    args = parser.parse_args()
    if args.command == "write":
        try:
            shapes = shape_range(args.shapes)
        except ValueError as error:
            parser.error(f"--shapes {error}")
        rows = records(args.world, shapes)
        if not rows:
            parser.error(f"--world {args.world}: no scene with {args.shapes} shapes asks a position question")
        answers = write_position_file(rows, args.out)
        print(f"wrote {len(rows)} position questions to {args.out}: yes {answers['yes']}, no {answers['no']}")
        return 0
    # heavy: the engine loads torch and the model
    from moai.engine import Engine

    engine = Engine.load(args.model or args.run / "final")
    if args.run:
        sys.path.insert(0, str(ROOT / "bench"))
        from aux_probe import scorable_checkpoints

        final = {k: v.clone() for k, v in engine.model.state_dict().items()}
        for step, weights in scorable_checkpoints(args.run, final):
            engine.model.load_state_dict(weights, strict=False)
            print(report(f"step {step}", score(engine, args.world)), flush=True)
        engine.model.load_state_dict(final)
    print(report("final" if args.run else "model", score(engine, args.world)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
