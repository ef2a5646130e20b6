"""``moai worlds``: generate ShapesWorld data sets and score answers (docs/shapesworld.md).

    moai worlds shapes --out DIR --scenes N [--seed S] [--overwrite]
    moai worlds score --questions FILE --answers FILE [--strict] [--json]

Bad input is one line and exit code 2 (``moai.cli``): argparse's usage errors for bad numbers, a
``ValueError`` / ``OSError`` naming the file otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..args import positive_int, seed_int
from .score import format_table, score_files
from .shapes import QUESTIONS_FILE, SCENES_FILE, TRAIN_FILE, write_world

#: Question ids listed in full when some have no answer (then "... and N more").
LIST_AT_MOST = 10


def cmd_shapes(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        raise ValueError(f"{out}: directory is not empty (give --overwrite to write into it)")
    summary = write_world(out, args.scenes, args.seed, args.conversations)
    counts = ", ".join(f"{c} {n}" for c, n in summary.per_category.items())
    print(f"wrote {summary.scenes} scenes (seed {args.seed}) to {out}: images/, {SCENES_FILE}, {TRAIN_FILE}")
    print(f"wrote {summary.questions} questions to {out / QUESTIONS_FILE}: {counts}")
    if summary.conversations > summary.scenes:
        print(
            f"wrote {summary.conversations} training conversations to {out / TRAIN_FILE}: "
            f"{summary.training_questions} distinct questions"
        )
    return 0


def _listed(ids: list[str]) -> str:
    more = len(ids) - LIST_AT_MOST
    return ", ".join(ids[:LIST_AT_MOST]) + (f" ... and {more} more" if more > 0 else "")


def cmd_score(args: argparse.Namespace) -> int:
    result = score_files(Path(args.questions), Path(args.answers), strict=args.strict)
    for problem in result.problems:
        print(f"moai worlds score: skipped {problem}", file=sys.stderr)
    if result.missing:
        print(
            f"moai worlds score: {len(result.missing)} question(s) have no answer, counted wrong: "
            f"{_listed(result.missing)}",
            file=sys.stderr,
        )
    if result.unknown:
        print(
            f"moai worlds score: {len(result.unknown)} answer(s) for no question, ignored: "
            f"{_listed(result.unknown)}",
            file=sys.stderr,
        )
    if args.json:
        print(json.dumps(result.to_dict(by_template=args.by_template), indent=2))
    else:
        print(format_table(result, by_template=args.by_template))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``moai worlds shapes`` and ``moai worlds score`` to the ``moai`` subcommands."""
    worlds = sub.add_parser("worlds", help="synthetic worlds: generate ShapesWorld data, score answers")
    inner = worlds.add_subparsers(dest="world_command", required=True, metavar="COMMAND")

    p = inner.add_parser(
        "shapes",
        help="render ShapesWorld scenes with ground truth, training conversations and questions",
        description="Write DIR/images/*.png, DIR/scenes.jsonl (ground truth), DIR/train.json (LLaVA "
        "conversations, every question of a scene in one record) and DIR/questions.jsonl (question file). "
        "The same seed gives the same files; scene i depends only on (seed, i).",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="output directory, created if missing (required, no default)",
    )
    p.add_argument(
        "--scenes",
        required=True,
        type=positive_int,
        metavar="N",
        help="number of scenes, >= 1 (required, no default)",
    )
    p.add_argument(
        "--seed",
        type=seed_int,
        default=0,
        metavar="S",
        help="seed, 0 .. 2**63 - 1; use different seeds for training and held-out sets (default: %(default)s)",
    )
    p.add_argument(
        "--conversations",
        type=positive_int,
        default=1,
        metavar="N",
        help="training conversations per scene in train.json: the question file's questions, then N - 1 "
        "fresh draws of the generator's questions (default: %(default)s)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="write into a non-empty DIR, replacing files of the same names (default: off, refuse)",
    )
    p.set_defaults(func=cmd_shapes)

    p = inner.add_parser(
        "score",
        help="accuracy per category and overall of an answer file",
        description="Score a JSONL answer file ({question_id, text}) against a question file with "
        "answers: case-insensitive exact match after stripping whitespace and one trailing period. "
        "A malformed line is reported with its line number and skipped; a question without an answer "
        "counts as wrong.",
    )
    p.add_argument(
        "--questions",
        required=True,
        metavar="FILE",
        help="question file (JSONL) with answers (required, no default)",
    )
    p.add_argument(
        "--answers", required=True, metavar="FILE", help="answer file (JSONL) (required, no default)"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="abort with exit code 2 at the first malformed line (default: off, report and skip it)",
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: off)")
    p.add_argument(
        "--by-template",
        action="store_true",
        help="also score each question template (colour, kind and sign words as placeholders) beside the "
        "accuracy of its majority answer, what answering without looking scores (default: off)",
    )
    p.set_defaults(func=cmd_score)
