"""Can the base's vision tower tell the kind of a shape? Linear probes on its patch features and on raw pixels.

    python bench/vision_probe.py [--model runs/shapesworld/base2/final] [--scenes 1200] [--seed 5000]

For every shape of a fresh world (``--seed``, not a training seed), a linear classifier (held-out 20 %) says its
kind (circle / square / triangle) and its colour from:

* the model's projected image feature of the patch under the shape's centre (what the LLM reads);
* the raw pixels of that same patch (what the tower's patch embedding sees of the shape);
* the raw pixels of a crop centred on the shape, as wide as the largest shape (a view that holds it whole).

A tower that learned the kinds scores near the crop; one that reads only what its patch holds scores near the
patch. ShapesWorld's shapes are 22-48 px and fall anywhere on the patch grid (docs/shapesworld.md, "What
limits the model").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moai.engine import Engine  # noqa: E402
from moai.worlds.shapes import COLOURS, KINDS, SIDE_RANGE, generate_scene, render  # noqa: E402


def linear_probe(x: torch.Tensor, y: torch.Tensor, train: int, steps: int = 400) -> float:
    """Held-out accuracy (%) of a softmax regression (standardised inputs, Adam, L2 1e-4) from x [N, F] to
    y [N]."""
    torch.manual_seed(0)
    x = (x - x[:train].mean(0)) / (x[:train].std(0) + 1e-3)
    linear = torch.nn.Linear(x.shape[1], int(y.max()) + 1)
    opt = torch.optim.Adam(linear.parameters(), lr=1e-3)
    for _ in range(steps):
        loss = F.cross_entropy(linear(x[:train]), y[:train]) + 1e-4 * linear.weight.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return 100 * (linear(x[train:]).argmax(-1) == y[train:]).float().mean().item()


def order_probe(
    x: torch.Tensor, centre: torch.Tensor, scene: torch.Tensor, train: int, margin: float
) -> float:
    """Held-out accuracy (%) of a least-squares linear regression from x [N, F] to the centre coordinate
    ``centre`` [N], scored as the world's position question scores it: for every pair of held-out shapes of one
    scene (``scene`` [N]) at least ``margin`` px apart, is the predicted order the true one?"""
    mean, std = x[:train].mean(0), x[:train].std(0) + 1e-3
    design = torch.cat([(x - mean) / std, torch.ones(len(x), 1)], 1).double()  # [N, F + 1]
    ridge = 1e-2 * torch.eye(design.shape[1], dtype=torch.float64)
    weights = torch.linalg.solve(
        design[:train].T @ design[:train] + ridge, design[:train].T @ centre[:train].double()
    )
    predicted = design[train:] @ weights  # [N - train]
    true, ids = centre[train:].double(), scene[train:]
    same = (ids[:, None] == ids[None, :]) & (
        (true[:, None] - true[None, :]) >= margin
    )  # [M, M] pairs i right of j
    right = (predicted[:, None] - predicted[None, :]) > 0
    return 100 * right[same].double().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=str(ROOT / "runs/shapesworld/base2/final"),
        help="a model with a vision tower (default: the recipe's base, runs/shapesworld/base2/final)",
    )
    parser.add_argument("--scenes", type=int, default=1200, help="scenes (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=5000, help="world seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=50, help="images a forward (default: %(default)s)")
    args = parser.parse_args()

    engine = Engine.load(args.model)
    vision = engine.model.config.vision_config
    patch, grid = vision.patch_size, vision.image_size // vision.patch_size
    crop = SIDE_RANGE[1]
    scenes = [generate_scene(args.seed, i) for i in range(args.scenes)]
    features, patches, crops, kinds, colours = [], [], [], [], []
    centres, cells, owners = [], [], []
    with torch.no_grad():
        for start in range(0, len(scenes), args.batch_size):
            chunk = scenes[start : start + args.batch_size]
            images = [render(s) for s in chunk]
            batch, _, _ = engine.prepare(images, ["?"] * len(chunk))
            encoded = engine.model.encode_images(batch["pixel_values"])  # [B, grid*grid, D]
            for scene, image, tokens in zip(chunk, images, encoded):
                pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255  # [H, W, 3]
                padded = np.pad(
                    pixels, ((crop // 2, crop // 2), (crop // 2, crop // 2), (0, 0)), constant_values=1
                )
                for shape in scene.shapes:
                    x0, y0, x1, y1 = shape.box
                    cx, cy = int((x0 + x1) / 2), int((y0 + y1) / 2)
                    row, col = cy // patch, cx // patch
                    features.append(tokens[row * grid + col])
                    cell = pixels[row * patch : (row + 1) * patch, col * patch : (col + 1) * patch]
                    patches.append(torch.from_numpy(cell.reshape(-1).copy()))
                    crops.append(torch.from_numpy(padded[cy : cy + crop, cx : cx + crop].reshape(-1).copy()))
                    centres.append((cx, cy))
                    cells.append(F.one_hot(torch.tensor(row * grid + col), grid * grid).float())
                    owners.append(scene.index)
                    kinds.append(KINDS.index(shape.kind))
                    colours.append(list(COLOURS).index(shape.colour))
    train = int(0.8 * len(kinds))
    y_kind, y_colour = torch.tensor(kinds), torch.tensor(colours)
    majority = 100 * (y_kind[train:] == y_kind[:train].mode().values).float().mean().item()
    print(
        f"{args.model}: {len(kinds)} shapes of {args.scenes} scenes (world seed {args.seed}), 20 % held out"
    )
    print(f"{'linear probe on':<44}{'kind':>8}{'colour':>8}")
    print(f"{'majority answer':<44}{majority:7.1f}%")
    rows = (
        (f"the tower's feature of the centre patch ({patch} px)", torch.stack(features)),
        (f"raw pixels of the centre patch ({patch} px)", torch.stack(patches)),
        (f"raw pixels of a {crop} px crop centred on it", torch.stack(crops)),
    )
    for name, x in rows:
        print(f"{name:<44}{linear_probe(x, y_kind, train):7.1f}%{linear_probe(x, y_colour, train):7.1f}%")
    # the position question's reading: which of two shapes is further right / lower, from a linear read-out
    xy, scene_ids = torch.tensor(centres, dtype=torch.float64), torch.tensor(owners)
    print(f"\n{'linear read-out of the centre, pairs >= 8 px apart':<44}{'x order':>8}{'y order':>8}")
    for name, x in ((rows[0][0], rows[0][1]), ("the index of the centre patch alone", torch.stack(cells))):
        orders = [order_probe(x, xy[:, axis], scene_ids, train, margin=8) for axis in (0, 1)]
        print(f"{name:<44}{orders[0]:7.1f}%{orders[1]:7.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
