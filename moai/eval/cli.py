# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""``moai eval``: run, rescore and compare benchmark evaluations (docs/eval.md).

    moai eval run --benchmark NAME --data PATH --out DIR [--model PATH] [--batch-size N] [--limit K] [--strict]
    moai eval score --benchmark NAME --data PATH --predictions FILE [--json] [--strict]
    moai eval report DIR... [--out FILE.md] [--chart FILE.png]

Bad input is one line and exit code 2 (``moai.cli``): a ``ValueError`` / ``OSError`` naming the input, or
argparse's usage error. Bad records are reported one line each on stderr and left out of the scores
(``--strict``: exit code 2 instead).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..args import positive_int, torch_device_or_auto
from . import BENCHMARKS, get_benchmark
from .report import bar_chart, format_scores, markdown_table, read_run
from .run import PRECISIONS, RunSettings, load_examples, run_benchmark, score_file


def report_excluded(command: str, scores: dict[str, Any], each: bool) -> None:
    """On stderr: each problem (``each``) and how many records the scores leave out."""
    if each:
        for problem in scores["problems"]:
            print(f"{command}: {problem}", file=sys.stderr)
    for note in scores.get("notes", ()):
        print(f"{command}: {note}", file=sys.stderr)
    if scores["excluded"]:
        print(
            f"{command}: {scores['excluded']} record(s) excluded from the scores ({scores['scored']} scored)",
            file=sys.stderr,
        )


def cmd_run(args: argparse.Namespace) -> int:
    settings = RunSettings(
        benchmark=args.benchmark,
        data=Path(args.data),
        out=Path(args.out),
        model=Path(args.model) if args.model else None,
        batch_size=args.batch_size,
        limit=args.limit,
        strict=args.strict,
        device=args.device,
        precision=args.precision,
        max_new_tokens=args.max_new_tokens,
        progress=args.progress,
    )
    scores = run_benchmark(settings)
    if scores is not None:  # rank 0; the skipped records were reported as they were met
        report_excluded("moai eval run", scores, each=False)
        print(format_scores(scores))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    benchmark = get_benchmark(args.benchmark)
    examples = load_examples(benchmark, Path(args.data))
    scores = score_file(benchmark, examples, Path(args.predictions), strict=args.strict)
    report_excluded("moai eval score", scores, each=True)
    print(json.dumps(scores, indent=2, ensure_ascii=False) if args.json else format_scores(scores))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    runs = {str(directory): read_run(Path(directory)) for directory in args.runs}
    table = markdown_table(runs)
    if args.out:
        Path(args.out).write_text(table, encoding="utf-8")
        print(f"wrote {args.out}")
    else:
        print(table, end="")
    if args.chart:
        print(f"wrote {bar_chart(runs, Path(args.chart))}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``moai eval run``, ``moai eval score`` and ``moai eval report`` to the ``moai`` subcommands."""
    names = ", ".join(BENCHMARKS)
    group = sub.add_parser("eval", help="benchmark evaluation: run a model, rescore answers, compare runs")
    inner = group.add_subparsers(dest="eval_command", required=True, metavar="COMMAND")

    p = inner.add_parser(
        "run",
        help="answer a benchmark with a MoAI model and score it",
        description="Answer every question of a benchmark with the inference engine (greedy, batched), "
        "appending DIR/predictions.jsonl (LLaVA answer format) as it goes, then write DIR/scores.json with "
        "the run's metadata. A rerun answers only what DIR lacks. Under torchrun / accelerate launch each "
        "rank answers its share into DIR/predictions.rank{R}.jsonl and rank 0 merges and scores.",
    )
    p.add_argument(
        "--benchmark", required=True, metavar="NAME", help=f"one of: {names} (required, no default)"
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="PATH",
        help="the benchmark's files, laid out as docs/eval.md says (required, no default)",
    )
    p.add_argument(
        "--out",
        required=True,
        metavar="DIR",
        help="run directory to write or continue (required, no default)",
    )
    p.add_argument(
        "--model",
        metavar="PATH",
        help="a saved MoAI directory or an official checkpoint (default: the bundled checkpoints/moai-tiny-shapes)",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        metavar="N",
        default=16,
        help="questions per generate call (default: %(default)s)",
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        metavar="K",
        help="answer and score only the first K questions (default: all)",
    )
    p.add_argument(
        "--device",
        type=torch_device_or_auto,
        default="auto",
        help="torch device; auto: each rank's CUDA device when there is one, else cpu (default: %(default)s)",
    )
    p.add_argument(
        "--precision", choices=PRECISIONS, default="float32", help="model dtype (default: %(default)s)"
    )
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        metavar="N",
        default=16,
        help="most answer tokens (default: %(default)s)",
    )
    p.add_argument(
        "--strict", action="store_true", help="stop at the first bad record or image, exit 2 (default: off)"
    )
    p.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar (default: shown)"
    )
    p.set_defaults(func=cmd_run)

    p = inner.add_parser(
        "score",
        help="score a predictions file without the model",
        description="Score answers (JSONL with question_id and text, LLaVA's answer format as it is; or a "
        "moai eval run directory, whose rank shards are merged) against a benchmark's ground truth.",
    )
    p.add_argument(
        "--benchmark", required=True, metavar="NAME", help=f"one of: {names} (required, no default)"
    )
    p.add_argument(
        "--data", required=True, metavar="PATH", help="the benchmark's files (required, no default)"
    )
    p.add_argument(
        "--predictions",
        required=True,
        metavar="FILE",
        help="answers, JSONL, or a moai eval run directory (required, no default)",
    )
    p.add_argument(
        "--json", action="store_true", help="print the scores as one JSON object (default: a table)"
    )
    p.add_argument("--strict", action="store_true", help="exit 2 at any bad or missing record (default: off)")
    p.set_defaults(func=cmd_score)

    p = inner.add_parser(
        "report",
        help="compare runs: a Markdown table and a bar chart",
        description="Put several runs' scores.json side by side: a Markdown table (one column per run, one "
        "row per metric) and, with --chart, a bar chart PNG.",
    )
    p.add_argument("runs", nargs="+", metavar="DIR", help="moai eval run directories (required, no default)")
    p.add_argument("--out", metavar="FILE.md", help="write the Markdown table here (default: print it)")
    p.add_argument("--chart", metavar="FILE.png", help="write a bar chart PNG here (default: none)")
    p.set_defaults(func=cmd_report)
