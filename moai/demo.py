"""``moai demo``: the main job end to end on the embedded default.

The bundled ShapesWorld model does not exist yet (SHAPESWORLD.md), so the demo runs the ``tiny`` preset
with *random weights*: it shows the whole path (image + question + aux text -> processor -> generate) and
says plainly that the answer is noise.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image, ImageDraw

from .model.configuration import MoAIConfig
from .model.modeling import MoAIForConditionalGeneration
from .model.processing import MoAIProcessor


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


def run_demo(seed: int = 0, max_new_tokens: int = 12) -> int:
    torch.manual_seed(seed)
    config = MoAIConfig.from_preset("tiny")
    model = MoAIForConditionalGeneration(config).eval()
    processor = MoAIProcessor.from_config(config)
    image, aux = render_scene()
    colour_map = np.zeros((config.image_size, config.image_size, 3), dtype=np.uint8)
    question = "Is the red circle to the left of the blue square?"
    inputs = processor(images=[image], text=[question], aux_text=[aux], aux_images=[colour_map])
    start = time.perf_counter()
    with torch.no_grad():
        ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    elapsed = time.perf_counter() - start
    answer = processor.batch_decode(ids[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)[0]
    n_params = sum(p.numel() for p in model.parameters())
    print("NOTE: the bundled ShapesWorld model is not trained yet; this demo runs the `tiny` preset with")
    print("      RANDOM weights, so the answer below is noise. It shows the pipeline end to end.")
    print(f"model      tiny preset, {n_params:,} parameters, {config.num_image_tokens} image tokens")
    print(f"question   {question}")
    print(f"aux text   {aux.strip()[:90]}...")
    print(f"prompt     {inputs['input_ids'].shape[1]} tokens, aux {inputs['aux_input_ids'].shape[1]} tokens")
    print(f"answer     {answer!r}")
    print(
        f"generated  {ids.shape[1] - inputs['input_ids'].shape[1]} tokens in {elapsed:.2f} s (greedy, KV cache)"
    )
    return 0
