"""``moai predict``: answer a question file (LLaVA ``model_vqa`` JSONL, docs/shapesworld.md Files) with the engine.

    moai predict --questions Q.jsonl --images-root DIR --out ANSWERS.jsonl [--model PATH] [--batch-size N]
                 [--aux on|off|drop:ocr,sgg,ps,owod] [--strict] [--verbose]

Reads ``{"question_id", "image", "text"}`` lines (``category`` / ``answer`` ignored), runs perception once per
image (the engine's cache), batched generation, and appends ``{"question_id", "text"}`` lines to ``--out``
after every batch: a rerun skips the ids already answered there. A malformed line, a missing or unreadable
image is reported with its line number and skipped (``--strict`` stops at the first); the exit code is 0
when every question was answered, 1 when some were skipped.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .args import add_model_device, positive_int
from .io import ImageLoadError, Problem, load_image
from .worlds.score import json_lines, read_answers, string_field

EXIT_SKIPPED = 1
"""Exit code when some questions were reported and skipped (the others are answered)."""

SHAPESWORLD_NOTE = (
    "note: the bundled model was trained on ShapesWorld only (docs/shapesworld.md): it answers questions "
    "about coloured circles, squares, triangles and signs; on other images and questions its answers are "
    "guesses"
)


@dataclass(frozen=True)
class PredictQuestion:
    """One line of a question file."""

    question_id: str
    image: Path
    text: str
    line: int
    written_id: str | int
    """The id as the file wrote it: the answer file writes it back (an integer stays an integer)."""


def read_questions(path: Path, images_root: Path) -> Iterator[PredictQuestion | Problem]:
    """Each question of ``path`` (image resolved against ``images_root``), or a `Problem` for a bad line."""
    seen: set[str] = set()
    for number, row in json_lines(path):
        if isinstance(row, Problem):
            yield row
            continue
        if not isinstance(row, dict):
            yield Problem(str(path), number, "not a JSON object")
            continue
        fields = {k: string_field(row, k) for k in ("question_id", "image", "text")}
        missing = [k for k, v in fields.items() if v is None]
        if missing:
            yield Problem(str(path), number, f"no {', '.join(missing)} (non-empty strings are needed)")
            continue
        if fields["question_id"] in seen:
            yield Problem(str(path), number, f"duplicate question_id {fields['question_id']!r}")
            continue
        seen.add(fields["question_id"])
        yield PredictQuestion(
            fields["question_id"], images_root / fields["image"], fields["text"], number, row["question_id"]
        )


def cmd_predict(args: argparse.Namespace) -> int:
    from .compat.resolve import resolve_model  # heavy: the converter (torch)
    from .engine import DEFAULT_MODEL, Engine, parse_aux  # heavy: torch, transformers

    questions_path, out = Path(args.questions), Path(args.out)
    if not questions_path.is_file():
        raise FileNotFoundError(f"{questions_path}: question file not found")
    images_root = Path(args.images_root) if args.images_root else questions_path.parent
    if not images_root.is_dir():
        raise NotADirectoryError(f"{images_root}: images root is not a directory")
    drop = parse_aux(args.aux)
    gate_bias = None
    if args.gate_bias:
        from .model.mixer import parse_gate_bias  # heavy: torch

        gate_bias = parse_gate_bias(args.gate_bias, "--gate-bias")  # a bad value fails before the model loads
    if out.is_dir():
        raise IsADirectoryError(f"{out}: --out is a directory, not an answer file")

    answered: set[str] = set()
    if out.is_file():
        done, problems = read_answers(out)
        answered = set(done)
        for problem in problems:
            print(f"moai predict: ignored {problem} (it will be answered again)", file=sys.stderr)
    skipped: list[Problem] = []
    todo: list[PredictQuestion] = []
    for item in read_questions(questions_path, images_root):
        if isinstance(item, Problem):
            _report(item, skipped, args.strict)
        elif item.question_id not in answered:
            todo.append(item)
    model_path = Path(args.model) if args.model else DEFAULT_MODEL
    if args.verbose or not args.model:
        shown = "the bundled checkpoints/moai-tiny-shapes" if not args.model else model_path
        print(f"moai predict: model {shown}", file=sys.stderr)
    if args.verbose and model_path.resolve() == DEFAULT_MODEL.resolve():
        print(f"moai predict: {SHAPESWORLD_NOTE}", file=sys.stderr)
    if answered:
        print(
            f"moai predict: {len(answered)} question(s) already answered in {out}, skipped", file=sys.stderr
        )
    engine = Engine.load(
        resolve_model(model_path, log=lambda line: print(line, file=sys.stderr)), device=args.device
    )
    if gate_bias is not None:
        engine.model.set_mixer(gate_bias=gate_bias)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as sink, _progress(len(todo), args.progress) as bar:
        for start in range(0, len(todo), args.batch_size):
            batch, images = [], []
            for q in todo[start : start + args.batch_size]:
                try:
                    images.append(load_image(q.image))
                    batch.append(q)
                except (ImageLoadError, OSError) as err:
                    reason = err.reason if isinstance(err, ImageLoadError) else str(err)
                    _report(
                        Problem(str(questions_path), q.line, f"image {q.image}: {reason}"),
                        skipped,
                        args.strict,
                    )
            if batch:
                answers = engine.answer(
                    images, [q.text for q in batch], drop=drop, max_new_tokens=args.max_new_tokens
                )
                for q, a in zip(batch, answers):
                    sink.write(json.dumps({"question_id": q.written_id, "text": a.text}) + "\n")
                    if args.verbose:
                        print(f"{q.question_id}\t{q.text}\t{a.text}", file=sys.stderr)
                sink.flush()
            bar.update(len(todo[start : start + args.batch_size]))
    print(f"wrote {len(todo) - len(skipped)} answers to {out} ({len(skipped)} skipped)")
    return EXIT_SKIPPED if skipped else 0


def _report(problem: Problem, skipped: list[Problem], strict: bool) -> None:
    if strict:
        raise ValueError(f"{problem} (--strict)")
    print(f"moai predict: skipped {problem}", file=sys.stderr)
    skipped.append(problem)


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="predict", unit="q", disable=not enabled, file=sys.stderr)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``moai predict`` to the ``moai`` subcommands."""
    p = sub.add_parser(
        "predict",
        help="answer a question file (JSONL) with a MoAI model",
        description="Answer every question of a LLaVA model_vqa-style JSONL file (question_id, image, text): "
        "perception once per image, batched generation, answers appended to --out as JSONL "
        "(question_id, text); a rerun skips answered ids.",
    )
    p.add_argument(
        "--questions",
        required=True,
        help="question file, JSONL (question_id, image, text) (required, no default)",
    )
    p.add_argument(
        "--out", required=True, help="answer file to write or continue, JSONL (required, no default)"
    )
    p.add_argument(
        "--images-root", help="directory the 'image' paths are relative to (default: the question file's)"
    )
    p.add_argument(
        "--model", help="a saved MoAI directory (default: the bundled checkpoints/moai-tiny-shapes)"
    )
    add_model_device(p)
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=16,
        help="questions per generate call (default: %(default)s)",
    )
    p.add_argument(
        "--aux",
        default="on",
        help="on | off | drop:MODULE[,MODULE] with modules ps, owod, sgg, ocr: remove those modules' aux "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--gate-bias",
        metavar="EXPERT=B[,...]",
        help="test-time gate steering: add B to the gate logit of EXPERT (I_AUX, I_LANG, I_SELF, L_AUX, L_IMG, "
        "L_SELF), e.g. I_AUX=+1 (default: none)",
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=16, help="most answer tokens (default: %(default)s)"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first bad line or image (default: off)")
    p.add_argument(
        "--verbose", action="store_true", help="print each question and answer to stderr (default: off)"
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (default: shown)"
    )
    p.set_defaults(func=cmd_predict)
