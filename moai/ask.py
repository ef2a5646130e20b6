"""``moai ask`` and ``moai chat``: questions about one image from the shell, through the engine.

``ask`` answers one question (``--json`` for a machine-readable record, ``--show-aux`` for the verbalized
aux knowledge, ``--explain`` for the gate weights per mixer layer and expert plus a picture of what the four
CV modules found). ``chat`` keeps a multi-turn conversation about an image in the model's conversation
template and streams each answer as it is generated (arXiv 2403.07508 §3: perception -> verbalization ->
MoAI-Compressor -> MoAI-Mixer; `moai.engine.Engine`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .args import add_model_device, positive_int
from .model.constants import EXPERT_NAMES

if TYPE_CHECKING:  # heavy imports only when a command runs
    from PIL import Image

    from .engine import Engine

CHAT_HELP = "commands: /image PATH (switch image, new conversation), /aux, /explain, /quit"


def gate_table(weights: dict[str, dict[str, float]]) -> str:
    """The mean gate weight per mixer layer (rows) and expert (columns) as an aligned text table."""
    if not weights:
        return "(this model has no MoAI-Mixer: no gate weights)"
    lines = ["layer    " + "  ".join(f"{name:>6}" for name in EXPERT_NAMES)]
    for layer, stats in weights.items():
        cells = [f"{stats[n]:6.3f}" if n in stats else f"{'-':>6}" for n in EXPERT_NAMES]
        lines.append(f"{layer:<8} " + "  ".join(cells))
    return "\n".join(lines)


def read_question(text: str) -> str:
    """A question from the command line: not empty after stripping."""
    question = text.strip()
    if not question:
        raise ValueError("question: empty")
    return question


def load_engine(model: str | None, device: str = "auto") -> Engine:
    from .compat.resolve import resolve_model  # heavy: the converter (torch)
    from .engine import Engine  # heavy: torch, transformers

    return Engine.load(resolve_model(model, log=lambda line: print(line, file=sys.stderr)), device=device)


def explain(
    engine: Engine, image: Image.Image, question: str, history: list[tuple[str, str]], out: Path
) -> str:
    """Gate-weight table of ``question`` (after ``history``) and the perception overlay written to ``out``."""
    from .perception.draw import draw_on_image  # heavy: numpy, PIL drawing

    batch, _, perceptions = engine.prepare([image], [question], history=[history])
    table = gate_table(engine.gate_weights(batch)[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_on_image(image, perceptions[0]).save(out)
    return f"{table}\nperception overlay: {out}"


# -- moai ask ---------------------------------------------------------------------------------------------------
def cmd_ask(args: argparse.Namespace) -> int:
    from .io import load_image  # heavy: PIL

    question = read_question(args.question)
    image = load_image(args.image)
    engine = load_engine(args.model, args.device)
    answer = engine.answer([image], [question], gates=args.explain, max_new_tokens=args.max_new_tokens)[0]
    from .perception.draw import draw_on_image  # heavy: numpy, PIL drawing

    explain_out = Path(args.explain_out or f"{Path(args.image).stem}-explain.png")
    if args.explain:
        explain_out.parent.mkdir(parents=True, exist_ok=True)
        draw_on_image(image, answer.perception).save(explain_out)
    if args.json:
        record: dict = {"image": str(args.image), "question": question, "answer": answer.text}
        if args.show_aux:
            record["aux_text"] = answer.aux_text
        if args.explain:
            record["gate_weights"] = answer.gate_weights
            record["overlay"] = str(explain_out)
        print(json.dumps(record))
        return 0
    if args.show_aux:
        print(f"aux: {answer.aux_text}")
    print(answer.text)
    if args.explain:
        print(gate_table(answer.gate_weights or {}))
        print(f"perception overlay: {explain_out}")
    return 0


# -- moai chat --------------------------------------------------------------------------------------------------
def chat(engine: Engine, image_path: str, lines: TextIO, out: TextIO, max_new_tokens: int) -> int:
    """Run the chat loop over ``lines`` (stdin); answers stream to ``out``. Returns the exit code.

    A bad ``/image`` path or an unknown command is reported on ``out`` and the chat goes on."""
    from .io import load_image  # heavy: PIL

    image = load_image(image_path)
    history: list[tuple[str, str]] = []
    interactive = lines.isatty()
    print(f"chatting about {image_path}; {CHAT_HELP}", file=out)
    while True:
        if interactive:
            print("you> ", end="", file=out, flush=True)
        line = lines.readline()
        if not line:
            return 0
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            command, _, rest = text.partition(" ")
            if command == "/quit":
                return 0
            if command == "/image":
                try:
                    image = load_image(rest.strip())
                except ValueError as err:
                    print(f"error: {err}", file=out)
                    continue
                image_path, history = rest.strip(), []
                print(f"now chatting about {image_path} (new conversation)", file=out)
            elif command == "/aux":
                aux_text, _ = engine.aux_inputs(engine.perceive([image])[0])
                print(f"aux: {aux_text}", file=out)
            elif command == "/explain":
                if not history:
                    print("ask a question first: /explain shows the gate weights of the last one", file=out)
                    continue
                question = history[-1][0]
                target = Path(f"{Path(image_path).stem}-explain.png")
                print(explain(engine, image, question, history[:-1], target), file=out)
            else:
                print(f"unknown command {command}; {CHAT_HELP}", file=out)
            continue
        print("moai> ", end="", file=out, flush=True)
        pieces = []
        for piece in engine.stream(image, text, history=history, max_new_tokens=max_new_tokens):
            pieces.append(piece)
            print(piece, end="", file=out, flush=True)
        print(file=out)
        history.append((text, "".join(pieces).strip()))


def cmd_chat(args: argparse.Namespace) -> int:
    from .io import load_image  # heavy: PIL

    load_image(args.image)  # a bad image is a one-line error before the model loads
    return chat(load_engine(args.model, args.device), args.image, sys.stdin, sys.stdout, args.max_new_tokens)


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``moai ask`` and ``moai chat`` to the ``moai`` subcommands."""
    p = sub.add_parser("ask", help="answer one question about an image")
    p.add_argument("image", help="image file (required, no default)")
    p.add_argument("question", help="the question (required, no default)")
    p.add_argument(
        "--model", help="a saved MoAI directory (default: the bundled checkpoints/moai-tiny-shapes)"
    )
    add_model_device(p)
    p.add_argument("--json", action="store_true", help="print one JSON record (default: plain text)")
    p.add_argument(
        "--show-aux", action="store_true", help="also print the verbalized aux knowledge (default: off)"
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="also print the gate weights per mixer layer and expert and draw the perception (default: off)",
    )
    p.add_argument(
        "--explain-out",
        metavar="FILE.png",
        help="where --explain writes the perception overlay (default: IMAGE-STEM-explain.png here)",
    )
    p.add_argument(
        "--max-new-tokens", type=positive_int, default=16, help="most answer tokens (default: %(default)s)"
    )
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("chat", help="multi-turn chat about an image, answers streamed")
    p.add_argument("image", help="image file (required, no default)")
    p.add_argument(
        "--model", help="a saved MoAI directory (default: the bundled checkpoints/moai-tiny-shapes)"
    )
    add_model_device(p)
    p.add_argument(
        "--max-new-tokens",
        type=positive_int,
        default=16,
        help="most tokens per answer (default: %(default)s)",
    )
    p.set_defaults(func=cmd_chat)
