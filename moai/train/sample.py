"""A small LLaVA-format training set and the shipped sample config, for trying ``moai train``.

``python -m moai.train.sample DIR [--samples N] [--seed S]`` writes ``DIR/data.jsonl`` (one record per image,
with an ``aux_text`` field), ``DIR/images/*.png`` (a coloured square each) and ``DIR/tiny_step2.yaml`` (a
copy of ``moai/train/configs/tiny_step2.yaml``, whose ``data.jsonl`` path is relative to it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
SAMPLE_CONFIG = Path(__file__).resolve().parent / "configs" / "tiny_step2.yaml"


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


def main(argv: list[str] | None = None) -> int:
    """Write the sample data set and config into DIR; print what was written."""
    parser = argparse.ArgumentParser(prog="python -m moai.train.sample", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="directory to write into (created if missing)")
    parser.add_argument("--samples", type=int, default=16, help="records to write (default: 16)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the squares' positions (default: 0)")
    args = parser.parse_args(argv)
    try:
        if args.samples < 1:
            raise ValueError(f"--samples must be >= 1, got {args.samples}")
        if args.dir.exists() and not args.dir.is_dir():
            raise ValueError(f"{args.dir} exists and is not a directory")
        data = write_dataset(args.dir, n=args.samples, seed=args.seed)
        config = Path(shutil.copyfile(SAMPLE_CONFIG, args.dir / SAMPLE_CONFIG.name))
    except (ValueError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {data} ({args.samples} records, images in {args.dir / 'images'}) and {config}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
