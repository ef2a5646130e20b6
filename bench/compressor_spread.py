"""How far apart a never-trained compressor's 64 output tokens start, against ``compressor_query_scale``.

The MoAI-Compressor (arXiv 2403.07508 §3) is a Perceiver resampler: learned latents attend to the aux token
embeddings. Initialised as usual, each latent's attention over ~100 aux tokens is nearly flat, so every
latent is nearly the mean aux embedding: the mixers' AUX experts then see 64 copies of one vector and get
no gradient to attend by content. Scaling the queries at init sharpens that attention. For each scale this
builds the MoAI step-1 model the ShapesWorld recipe builds (its ``step1.yaml`` on the recipe's base), runs
the compressor on the aux texts of the first training scenes and prints

* within-sample cosine: mean cosine similarity between the 64 compressed tokens of one scene (1 = copies);
* between-scene ratio: ``|z - mean over scenes| / |z|`` (0 = every scene compresses to the same tokens).

    python bench/compressor_spread.py [--run runs/shapesworld] [--scenes 16] [--scales 1 2 4 8]

``--run`` is a directory of ``make shapesworld-model`` (its ``base/final``, ``world/`` and ``cache/``).
docs/shapesworld.md ("What the recipe had to get right") quotes a run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from moai.perception.cache import PerceptionCache  # noqa: E402
from moai.perception.verbalize import verbalize_perception  # noqa: E402
from moai.train.build import build_model  # noqa: E402
from moai.train.config import TrainConfig  # noqa: E402

STEP1 = REPO / "moai" / "train" / "configs" / "shapesworld" / "step1.yaml"


def aux_embeddings(model, tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Word embeddings [B, T, D] of the texts, right-padded, and their mask [B, T]."""
    ids = [torch.tensor(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    embed = model.get_input_embeddings()
    x = torch.zeros(len(ids), max(len(i) for i in ids), embed.weight.shape[1])
    mask = torch.zeros(x.shape[:2], dtype=torch.long)
    for b, row in enumerate(ids):
        x[b, : len(row)] = embed(row)
        mask[b, : len(row)] = 1
    return x, mask


def spread(z: torch.Tensor) -> tuple[float, float]:
    """(within-sample cosine, between-scene ratio) of compressed tokens z [B, L, D]."""
    unit = F.normalize(z, dim=-1)
    within = float((unit @ unit.transpose(1, 2)).mean())
    between = float((z - z.mean(0)).norm() / z.norm())
    return within, between


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--run", default="runs/shapesworld", help="recipe run directory (default: %(default)s)"
    )
    parser.add_argument(
        "--scenes", type=int, default=16, help="training scenes to compress (default: %(default)s)"
    )
    parser.add_argument(
        "--scales", type=float, nargs="+", default=[1, 2, 4, 8], help="query scales (default: %(default)s)"
    )
    args = parser.parse_args()
    run = Path(args.run).resolve()
    base = TrainConfig.load(STEP1)
    records = json.loads((run / "world" / "train.json").read_text())[: args.scenes]
    cache = PerceptionCache(run / "cache")
    texts = [
        verbalize_perception(cache.get(run / "world" / r["image"]), style=base.verbalizer) for r in records
    ]
    print(
        f"{len(texts)} scenes, {base.verbalizer} verbalizer, step-1 model of {STEP1.name} on {run / 'base/final'}"
    )
    print(f"{'scale':>6} {'within-sample cos':>18} {'between-scene ratio':>20}")
    for scale in args.scales:
        config = TrainConfig.load(
            STEP1, [f"model={run / 'base' / 'final'}", f"compressor_query_scale={scale}", "data=[]"]
        )
        model, processor = build_model(config)
        with torch.no_grad():
            x, mask = aux_embeddings(model, processor.tokenizer, texts)
            within, between = spread(model.model.compressor(x, mask))  # [B, L, D]
        print(f"{scale:6g} {within:18.3f} {between:20.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
