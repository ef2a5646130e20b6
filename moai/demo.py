"""``moai demo``: the main job end to end on the embedded default.

The bundled ShapesWorld model is not trained yet (README), so the demo runs the ``tiny`` preset with
*random weights* (seeded by ``--seed``): it shows the whole path (image + question + aux text ->
processor -> generate; arXiv 2403.07508 §3, docs/model.md §1) and says plainly that the answer is noise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from .model.configuration import MoAIConfig
from .model.modeling import MoAIForConditionalGeneration
from .model.processing import MoAIProcessor

QUESTION = "Is the red circle to the left of the blue square?"


@dataclass(frozen=True)
class DemoResult:
    """What one demo run produced (printed by `print_demo`)."""

    n_params: int
    image_tokens: int
    prompt_tokens: int
    aux_tokens: int
    generated_ids: tuple[int, ...]
    answer: str
    seconds: float


def render_scene(size: int = 224) -> tuple[Image.Image, str]:
    """A small scene (a red circle left of a blue square) and a hand-written verbalization of it."""
    image = Image.new("RGB", (size, size), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    draw.ellipse((30, 80, 80, 130), fill=(220, 40, 40))
    draw.rectangle((130, 90, 175, 135), fill=(40, 80, 220))
    aux = (
        "The image includes bounding box coordinates and their objects: [0.13, 0.36, 0.36, 0.58] circle, "
        "and [0.58, 0.40, 0.78, 0.60] square. The image includes relationships between objects: "
        "circle is left of square. "
    )
    return image, aux


def demo_inputs(processor: MoAIProcessor, config: MoAIConfig) -> dict[str, torch.Tensor]:
    """The processor's tensors for the rendered scene, the question and its aux text (blank colour map)."""
    image, aux = render_scene()
    colour_map = np.zeros((config.image_size, config.image_size, 3), dtype=np.uint8)
    return processor(images=[image], text=[QUESTION], aux_text=[aux], aux_images=[colour_map])


def answer_demo(seed: int = 0, max_new_tokens: int = 12) -> DemoResult:
    """Build the seeded random tiny model and answer the demo question greedily."""
    torch.manual_seed(seed)
    config = MoAIConfig.from_preset("tiny")
    model = MoAIForConditionalGeneration(config).eval()
    processor = MoAIProcessor.from_config(config)
    inputs = demo_inputs(processor, config)
    start = time.perf_counter()
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    elapsed = time.perf_counter() - start
    new = ids[:, inputs["input_ids"].shape[1] :]
    return DemoResult(
        n_params=sum(p.numel() for p in model.parameters()),
        image_tokens=config.num_image_tokens,
        prompt_tokens=inputs["input_ids"].shape[1],
        aux_tokens=inputs["aux_input_ids"].shape[1],
        generated_ids=tuple(new[0].tolist()),
        answer=processor.batch_decode(new, skip_special_tokens=True)[0],
        seconds=elapsed,
    )


def print_demo(result: DemoResult) -> None:
    _, aux = render_scene()
    print("NOTE: the bundled ShapesWorld model is not trained yet; this demo runs the `tiny` preset with")
    print("      RANDOM weights, so the answer below is noise. It shows the pipeline end to end.")
    print(f"model      tiny preset, {result.n_params:,} parameters, {result.image_tokens} image tokens")
    print(f"question   {QUESTION}")
    print(f"aux text   {aux.strip()[:90]}...")
    print(f"prompt     {result.prompt_tokens} tokens, aux {result.aux_tokens} tokens")
    print(f"answer     {result.answer!r}")
    print(f"generated  {len(result.generated_ids)} tokens in {result.seconds:.2f} s (greedy, KV cache)")


def run_demo(seed: int = 0, max_new_tokens: int = 12) -> int:
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    print_demo(answer_demo(seed, max_new_tokens))
    return 0
