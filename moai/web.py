"""``moai web``: a web page to try a MoAI model (Gradio), on the engine.

Upload an image (or click one of the bundled example scenes), ask a question, and watch the answer stream
in, next to a picture of what the four CV modules found (masks, boxes, relations, OCR) and a bar chart of
the mean gate weight of each expert (arXiv 2403.07508 §3, MoAI-Mixer) for that question. The page is a
Gradio app mounted on a FastAPI app (`build_app`), so tests serve it like any ASGI app.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .args import add_model_device, port_number, positive_int
from .model.constants import EXPERT_NAMES

if TYPE_CHECKING:  # heavy imports only when the page is built
    from PIL import Image

    from .engine import Engine

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
"""The bundled example scenes (examples/README.md)."""

EXAMPLE_QUESTIONS = (
    "Is there a yellow triangle in the image?",
    "What word is written on the sign?",
    "How many yellow objects are there?",
)
"""One question per example scene, in file order."""


def examples() -> list[list[str]]:
    """[image path, question] rows for the page's example table."""
    images = sorted(EXAMPLES_DIR.glob("scene-*.png"))
    return [[str(path), question] for path, question in zip(images, EXAMPLE_QUESTIONS)]


def gate_chart(weights: dict[str, dict[str, float]]) -> Any:
    """A matplotlib bar chart of the mean gate weight per expert (one bar group per mixer layer)."""
    import matplotlib  # heavy: matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    layers = list(weights)
    width = 0.8 / max(1, len(layers))
    for i, layer in enumerate(layers):
        xs = [j + i * width for j in range(len(EXPERT_NAMES))]
        ax.bar(xs, [weights[layer].get(n, 0.0) for n in EXPERT_NAMES], width, label=layer)
    ax.set_xticks([j + width * (len(layers) - 1) / 2 for j in range(len(EXPERT_NAMES))], EXPERT_NAMES)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean gate weight")
    ax.set_title("MoAI-Mixer experts")
    if layers:
        ax.legend(fontsize=8)
    fig.tight_layout()
    plt.close(fig)
    return fig


def answer_stream(
    engine: Engine, image: Image.Image | None, question: str, max_new_tokens: int
) -> Iterator[tuple[str, Any, Any]]:
    """(answer so far, perception overlay, gate chart) as the answer is generated; the chart comes last."""
    from .perception.draw import draw_on_image  # heavy: numpy, PIL drawing

    question = (question or "").strip()
    if image is None:
        yield "Upload an image or click an example first.", None, None
        return
    if not question:
        yield "Type a question first.", None, None
        return
    image = image.convert("RGB")
    perception = engine.perceive([image])[0]
    picture = draw_on_image(image, perception)
    text = ""
    yield text, picture, None
    for piece in engine.stream(image, question, perception=perception, max_new_tokens=max_new_tokens):
        text += piece
        yield text.strip(), picture, None
    batch, _, _ = engine.prepare([image], [question], perceptions=[perception])
    yield text.strip(), picture, gate_chart(engine.gate_weights(batch)[0])


def build_demo(engine: Engine, max_new_tokens: int = 16) -> Any:
    """The Gradio Blocks page."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home (and none offline)
    import gradio as gr  # heavy: gradio

    with gr.Blocks(title="MoAI") as demo:
        gr.Markdown(
            "# MoAI\nAsk a question about an image. The bundled model only knows ShapesWorld scenes "
            "(circles, squares, triangles and signs): try an example."
        )
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="pil", label="image", elem_id="image")
                question = gr.Textbox(label="question", elem_id="question")
                ask = gr.Button("Ask", variant="primary", elem_id="ask")
                gr.Examples(examples(), [image, question], label="example scenes")
            with gr.Column():
                answer = gr.Textbox(label="answer", elem_id="answer", interactive=False)
                picture = gr.Image(label="what the CV modules found", elem_id="overlay", interactive=False)
                chart = gr.Plot(label="gate weights", elem_id="gates")

        def respond(img: Any, text: str) -> Iterator[tuple[str, Any, Any]]:
            yield from answer_stream(engine, img, text, max_new_tokens)

        ask.click(respond, [image, question], [answer, picture, chart])
        question.submit(respond, [image, question], [answer, picture, chart])
    return demo


def build_app(engine: Engine, max_new_tokens: int = 16) -> Any:
    """A FastAPI app with the page mounted at ``/``."""
    import gradio as gr  # heavy: gradio, fastapi
    from fastapi import FastAPI

    return gr.mount_gradio_app(FastAPI(), build_demo(engine, max_new_tokens), path="/")


def cmd_web(args: argparse.Namespace) -> int:
    try:
        import gradio  # noqa: F401
        import uvicorn
    except ImportError:
        raise ValueError("moai web needs gradio and uvicorn: pip install 'moai-vlm[web]'") from None
    # heavy: the engine (torch, transformers)
    from .compat.resolve import resolve_model
    from .engine import Engine

    app = build_app(Engine.load(resolve_model(args.model), device=args.device), args.max_new_tokens)
    print(f"moai web: http://{args.host}:{args.port}/", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``moai web`` to the ``moai`` subcommands."""
    p = sub.add_parser("web", help="a web page to try the model (Gradio)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=port_number, default=7860, help="port to listen on (default: %(default)s)")
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
    p.set_defaults(func=cmd_web)
