"""Small LLaVA-format data sets written into a temp dir for the training tests."""

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}


def write_dataset(root: Path, n: int = 16, seed: int = 0, name: str = "data.jsonl") -> Path:
    """n images with one coloured square each; question: its colour; answers differ per sample."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    colours = list(COLOURS)
    for i in range(n):
        colour = colours[i % len(colours)]
        image = Image.new("RGB", (64, 64), (240, 240, 240))
        x, y = (int(v) for v in rng.integers(4, 30, 2))
        ImageDraw.Draw(image).rectangle((x, y, x + 24, y + 24), fill=COLOURS[colour])
        image.save(root / "images" / f"{i}.png")
        record = {
            "id": f"s{i}",
            "image": f"images/{i}.png",
            "aux_text": f"The image includes bounding box coordinates and their objects: [{x / 64:.2f}] square.",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat color is the square?"},
                {"from": "gpt", "value": f"{colour} {i}"},
            ],
        }
        lines.append(json.dumps(record))
    path = root / name
    path.write_text("\n".join(lines) + "\n")
    return path


def write_config(root: Path, data: Path, **fields) -> Path:
    import yaml

    config = {
        "output_dir": str(root / "run"),
        "model": "tiny",
        "step": "step2",
        "data": [{"path": str(data)}],
        "batch_size": 4,
        "max_steps": 4,
        "lr": 1e-3,
        "min_lr": 1e-4,
        "progress": False,
        "tensorboard": False,
        **fields,
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
