"""Does the MoAI-Compressor's output still hold what the ShapesWorld questions ask? A linear probe.

    python bench/compressor_probe.py [--model checkpoints/moai-tiny-shapes] [--scenes 2000] [--seed 4000]

On a fresh world (``--seed``, not a training seed) each scene's aux knowledge is built as at inference (the
model's perception preset and verbalizer) and three representations of it are extracted:

* the compressor's output (its 64 tokens, flattened): what the mixers' AUX experts read (paper §3);
* the mean of the compressor's 64 tokens, and the max over them of a linear score per pair (a lookup, as an
  attention expert reads them);
* the mean of the bare aux word embeddings (a bag of words: it knows which colours and kinds occur, not
  which colour goes with which kind).

A logistic regression per representation is trained on the first 80 % of the scenes to say, for each of the
12 colour-kind pairs, whether the scene holds such a shape (the answer of an existence question), and scored on
the other 20 %. The aux text names every pair outright ("objects: red circle, ..."), so a compressor that kept
it would score near 100 %; one below the bag of words has thrown away what the questions need.

Then (``--train-steps``) whether the compressor architecture can learn it at all: the aux text's tokens after
k frozen LLM layers (k = 0 is the bare word embeddings the paper's compressor reads; k > 0 gives each word its
context, e.g. the colour before a kind), probed directly (max over the tokens of a linear score: is the pair
readable from single tokens?) and through a new compressor trained with the probe's head on the labels alone.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moai.engine import Engine  # noqa: E402
from moai.model.compressor import MoAICompressor  # noqa: E402
from moai.train.build import fan_in_init  # noqa: E402
from moai.worlds.shapes import COLOURS, KINDS, generate_scene, render  # noqa: E402

PAIRS = [(c, k) for c in COLOURS for k in KINDS]


@torch.no_grad()
def representations(
    engine: Engine, images: list, batch_size: int
) -> tuple[dict[str, torch.Tensor], list[tuple[torch.Tensor, torch.Tensor]]]:
    """The three [N, F] representations of each image's aux knowledge, and each batch's tokenised aux text
    (ids, mask), so that later passes need not perceive the images again."""
    model, texts = engine.model, []
    out: dict[str, list[torch.Tensor]] = {
        "compressed (64 tokens)": [],
        "compressed (mean)": [],
        "bag of words": [],
    }
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch, _, _ = engine.prepare(chunk, ["?"] * len(chunk))
        ids, mask = batch["aux_input_ids"], batch["aux_attention_mask"]
        embeds, aux_mask = model.model.build_aux_embeds(ids, mask, batch.get("aux_pixel_values"))
        compressed = model.model.compressor(embeds, aux_mask)  # [B, L, D]
        words = model.get_input_embeddings()(ids) * mask[..., None]  # [B, T, D]
        out["compressed (64 tokens)"].append(compressed.flatten(1))  # [B, L*D]
        out["compressed (mean)"].append(compressed.mean(1))  # [B, D]
        out["bag of words"].append(words.sum(1) / mask.sum(1, keepdim=True))  # [B, D]
        texts.append((ids, mask))
    return {name: torch.cat(parts).float() for name, parts in out.items()}, texts


def probe(x: torch.Tensor, y: torch.Tensor, train: int, steps: int = 300) -> float:
    """Held-out accuracy of a logistic regression (standardised inputs, L2 1e-3) from x [N, F] to y [N, P]."""
    torch.manual_seed(0)
    mean, std = x[:train].mean(0), x[:train].std(0) + 1e-5
    x = (x - mean) / std
    weight = torch.zeros(x.shape[1], y.shape[1], requires_grad=True)
    bias = torch.zeros(y.shape[1], requires_grad=True)
    opt = torch.optim.Adam([weight, bias], lr=1e-2)
    for _ in range(steps):
        logits = x[:train] @ weight + bias
        loss = F.binary_cross_entropy_with_logits(logits, y[:train]) + 1e-3 * weight.pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((x[train:] @ weight + bias > 0).float() == y[train:]).float().mean().item()


def probe_max(tokens: torch.Tensor, y: torch.Tensor, train: int, steps: int = 300) -> float:
    """Held-out accuracy of a per-pair score taken as the max over the tokens [N, L, D] of a linear function of
    each token: a lookup, as an attention expert can do it."""
    torch.manual_seed(0)
    flat = tokens[:train].flatten(0, 1)
    tokens = (tokens - flat.mean(0)) / (flat.std(0) + 1e-5)
    linear = torch.nn.Linear(tokens.shape[-1], y.shape[1])
    opt = torch.optim.Adam(linear.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.binary_cross_entropy_with_logits(linear(tokens[:train]).amax(1), y[:train])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return ((linear(tokens[train:]).amax(1) > 0).float() == y[train:]).float().mean().item()


@torch.no_grad()
def aux_text_states(
    engine: Engine, texts: list[tuple[torch.Tensor, torch.Tensor]], layers: list[int]
) -> tuple[dict, torch.Tensor]:
    """The aux text's token states after each of ``layers`` LLM decoder layers (0: the bare word embeddings,
    the compressor's input in the paper) for the tokenised batches ``texts`` (ids, mask), left-padded to one
    length: ({k: [N, T, D]}, mask [N, T])."""
    model, states, masks = engine.model, {k: [] for k in layers}, []
    for ids, mask in texts:
        hidden = model.model.language_model(
            inputs_embeds=model.get_input_embeddings()(ids),
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            output_hidden_states=True,
        ).hidden_states  # num_layers + 1 of [B, T, D]
        for k in layers:
            states[k].append(hidden[k] * mask[..., None])
        masks.append(mask)
    length = max(m.shape[1] for m in masks)
    pad = [length - m.shape[1] for m in masks]
    mask = torch.cat([F.pad(m, (p, 0)) for m, p in zip(masks, pad)])
    return {k: torch.cat([F.pad(h, (0, 0, p, 0)) for h, p in zip(v, pad)]) for k, v in states.items()}, mask


def train_fresh_compressor(
    engine: Engine,
    x: torch.Tensor,
    mask: torch.Tensor,
    y: torch.Tensor,
    train: int,
    steps: int,
    lr: float = 1e-3,
    query_scale: float = 4.0,
    **config: Any,
) -> float:
    """Held-out accuracy of a new compressor (the model's compressor config with ``config`` fields changed,
    initialised as the recipe's step 1 starts it: the model's init, then ``moai_init: fan_in``, then the queries
    scaled by ``query_scale``) with a max-over-tokens linear head, both trained on the pair labels alone (batch
    32, Adam at ``lr``)."""
    torch.manual_seed(0)
    settings = copy.deepcopy(engine.model.config.compressor_config)
    for key, value in config.items():
        setattr(settings, key, value)
    compressor = MoAICompressor(x.shape[-1], settings)
    # the model's init: N(0, initializer_range) for the aux positions (a bare nn.Embedding draws N(0, 1), 50
    # times the word embeddings, and drowns the aux content)
    compressor.apply(engine.model._init_weights)
    fan_in_init([compressor])
    with torch.no_grad():
        for block in compressor.layers:
            block.attn.to_q.weight.mul_(query_scale)
    head = torch.nn.Linear(x.shape[-1], y.shape[1])
    opt = torch.optim.Adam([*compressor.parameters(), *head.parameters()], lr=lr)
    draw = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, train, (32,), generator=draw)
        loss = F.binary_cross_entropy_with_logits(head(compressor(x[idx], mask[idx])).amax(1), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = head(compressor(x[train:], mask[train:])).amax(1)
        return ((scores > 0).float() == y[train:]).float().mean().item()


def pair_labels(scenes: list) -> torch.Tensor:
    """[N, 12]: 1 where the scene holds a shape of that colour-kind pair (`PAIRS` order)."""
    return torch.tensor(
        [[float(any((s.colour, s.kind) == p for s in sc.shapes)) for p in PAIRS] for sc in scenes]
    )


def teach_pairs(
    engine: Engine, scenes: list, steps: int, lr: float = 1e-3, batch_size: int = 32, held_out: int = 384
) -> tuple[float, float]:
    """Train the model's own compressor (in place) with a max-over-tokens linear head on the pair labels of
    ``scenes``, on its full aux input (the model's verbalization and map tokens). Returns the held-out
    accuracy (%) of the last ``held_out`` scenes before and after."""
    model = engine.model
    batches = []
    with torch.no_grad():
        for start in range(0, len(scenes), batch_size):
            chunk = scenes[start : start + batch_size]
            batch, _, _ = engine.prepare([render(s) for s in chunk], ["?"] * len(chunk))
            embeds, mask = model.model.build_aux_embeds(
                batch["aux_input_ids"], batch["aux_attention_mask"], batch.get("aux_pixel_values")
            )
            batches.append((embeds, mask, pair_labels(chunk)))
    train = len(batches) - max(1, held_out // batch_size)
    compressor = model.model.compressor
    torch.manual_seed(0)
    head = torch.nn.Linear(model.config.text_config.hidden_size, len(PAIRS))
    params = [*compressor.parameters(), *head.parameters()]
    for param in params:
        param.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)

    def accuracy() -> float:
        with torch.no_grad():
            hits = [
                ((head(compressor(e, m)).amax(1) > 0).float() == y).float().mean().item()
                for e, m, y in batches[train:]
            ]
        return 100 * sum(hits) / len(hits)

    before = accuracy()
    draw = torch.Generator().manual_seed(0)
    for _ in range(steps):
        embeds, mask, y = batches[int(torch.randint(0, train, (1,), generator=draw))]
        loss = F.binary_cross_entropy_with_logits(head(compressor(embeds, mask)).amax(1), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return before, accuracy()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=str(ROOT / "checkpoints" / "moai-tiny-shapes"),
        help="model (default: the bundled one)",
    )
    parser.add_argument(
        "--scenes", type=int, default=2000, help="scenes of the fresh world (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=4000, help="world seed (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=64, help="scenes a forward (default: %(default)s)")
    parser.add_argument(
        "--train-steps",
        type=int,
        default=600,
        help="steps of the fresh-compressor test, 0 skips it (default: %(default)s)",
    )
    parser.add_argument(
        "--layers",
        type=lambda text: [int(k) for k in text.split(",")],
        default=None,
        help="LLM layer counts k to test, comma-separated (default: 0,1,2 and all of the LLM's)",
    )
    parser.add_argument(
        "--lr", type=float, default=1e-3, help="fresh compressor's learning rate (default: %(default)s)"
    )
    parser.add_argument(
        "--query-scale",
        type=float,
        default=4.0,
        help="fresh compressor's query scale (default: %(default)s, the recipe's)",
    )
    parser.add_argument(
        "--depth", type=int, default=None, help="fresh compressor's depth (default: the model's)"
    )
    parser.add_argument(
        "--num-latents", type=int, default=None, help="fresh compressor's latents (default: the model's)"
    )
    parser.add_argument(
        "--latent-init-std",
        type=float,
        default=None,
        help="fresh compressor's latent init std (default: the model's)",
    )
    args = parser.parse_args()
    engine = Engine.load(args.model)
    scenes = [generate_scene(args.seed, i) for i in range(args.scenes)]
    images = [render(s) for s in scenes]
    y = pair_labels(scenes)
    train = int(0.8 * len(scenes))
    majority = ((y[:train].mean(0) > 0.5).float() == y[train:]).float().mean().item()
    print(f"{args.model}: {args.scenes} scenes (world seed {args.seed}), {len(scenes) - train} held out")
    print("is there a {colour} {kind}? (12 pairs), held-out accuracy of a linear probe")
    print(f"{'majority answer per pair':<28}{100 * majority:6.1f}%")
    reps, texts = representations(engine, images, args.batch_size)
    for name, x in reps.items():
        print(f"{name:<28}{100 * probe(x, y, train):6.1f}%")
    tokens = reps["compressed (64 tokens)"].unflatten(1, (-1, engine.model.config.text_config.hidden_size))
    print(f"{'compressed (max over tokens)':<28}{100 * probe_max(tokens, y, train):6.1f}%")
    if args.train_steps:
        layers = args.layers or sorted({0, 1, 2, engine.model.config.text_config.num_hidden_layers})
        fresh = dict(lr=args.lr, query_scale=args.query_scale)
        for key in ("depth", "num_latents", "latent_init_std"):
            if getattr(args, key) is not None:
                fresh[key] = getattr(args, key)
        print(f"\nfresh compressor: {fresh} (other fields as the model's compressor)")
        states, mask = aux_text_states(engine, texts, layers)
        print(
            "\ncan a compressor learn it? the aux text (not the map) through k frozen LLM layers (k = 0: as the paper)"
        )
        print(f"{'k':>3}{'max over aux tokens':>22}{f'fresh compressor, {args.train_steps} steps':>34}")
        for k in layers:
            direct = probe_max(states[k], y, train)
            learned = train_fresh_compressor(engine, states[k], mask, y, train, args.train_steps, **fresh)
            print(f"{k:>3}{100 * direct:>21.1f}%{100 * learned:>33.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
