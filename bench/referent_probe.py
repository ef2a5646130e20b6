"""Does a dense target for the looked-up referent teach the position question? A probe of the base.

    python bench/referent_probe.py --model runs/shapesworld/base2/final --world runs/exp-pos/posworld \
        --shapes 2:2 --steps 1500 --weight 1 --layer 2 --out runs/exp-ref/w1

The position question ("Is the red circle to the left of the blue square?") asks the LLM to find two
referents among the image tokens and compare where they are, and its only training signal is one yes/no
token: the base trained on it stays at chance, or starts only on two-shape scenes (docs/shapesworld.md,
"Position: the easiest case first"). This probe continues a base on a world's position questions (every one
the rules allow, `position_candidates`) with, beside the answer's loss, a regression of each referent's
centre from the LLM's hidden state at the referent's kind word after layer ``--layer`` (a linear head, used
in training only): a target for the lookup step itself. ``--weight 0`` is the control (the answer's loss
alone, the same data, order and schedule). The model is saved to ``--out/final``; score it with
``bench/position_questions.py score --model OUT/final --world PROBE``.

Not in the paper: MoAI-7B's LLM arrives pretrained; this asks what a base trained from nothing lacks.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moai.model.modeling import MoAIForConditionalGeneration  # noqa: E402
from moai.model.processing import MoAIProcessor  # noqa: E402
from moai.train.data import Collator, Example  # noqa: E402
from moai.train.referent import REFERENT_KEYS, ReferentHead, scene_referents  # noqa: E402
from moai.worlds.positions import position_records  # noqa: E402
from moai.worlds.shapes import read_scenes  # noqa: E402


def examples(world: Path, shapes: tuple[int, int]) -> list[Example]:
    """Each position question of the world's scenes with ``shapes`` shapes, with its scene's referents (the
    targets stand where the question names them: moai/train/referent.py, as `moai train` makes them)."""
    scenes = [s for s in read_scenes(world) if shapes[0] <= len(s.shapes) <= shapes[1]]
    by_id = {s.id: s for s in scenes}
    out = []
    for record in position_records(scenes):
        question, answer = (t["value"] for t in record["conversations"])
        out.append(
            Example(
                id=record["id"],
                image=world / record["image"],
                turns=((question, answer),),
                aux_text="",
                aux_map=None,
                source="",
                line=0,
                referents=scene_referents(by_id[record["id"].rsplit("-pos", 1)[0]]),
            )
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved base model directory")
    parser.add_argument("--world", type=Path, required=True, help="a world made by `moai worlds shapes`")
    parser.add_argument("--shapes", default="2:2", help="scenes with MIN:MAX shapes (default: 2:2)")
    parser.add_argument("--steps", type=int, default=1500, help="optimizer steps (default: 1500)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples a step (default: 32)")
    parser.add_argument(
        "--lr", type=float, default=3e-4, help="constant after 10 warmup steps (default: 3e-4)"
    )
    parser.add_argument("--weight", type=float, default=1.0, help="the referent loss's weight (default: 1)")
    parser.add_argument("--layer", type=int, default=2, help="hidden state read by the head (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="data order and head init (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="run directory (metrics.jsonl, final/)")
    args = parser.parse_args()
    low, high = (int(v) for v in args.shapes.split(":"))

    torch.manual_seed(args.seed)
    model = MoAIForConditionalGeneration.from_pretrained(args.model)
    processor = MoAIProcessor.from_pretrained(args.model)
    model.set_trainable("projector+llm")
    model.train()
    head = ReferentHead(model.config.text_config.hidden_size)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 10))
    collate = Collator(processor, max_length=512, use_aux_map=False, image_slot="as_written", referents=True)

    data = examples(args.world, (low, high))
    print(f"{len(data)} position questions from {args.world} ({args.shapes} shapes)", flush=True)
    order = random.Random(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = (args.out / "metrics.jsonl").open("w")
    queue: list[int] = []
    start = time.time()
    for step in range(1, args.steps + 1):
        if len(queue) < args.batch_size:
            more = list(range(len(data)))
            order.shuffle(more)
            queue += more
        picked = [data[i] for i in queue[: args.batch_size]]
        del queue[: args.batch_size]
        batch = collate(picked)
        rows, cols, targets = (batch.pop(k) for k in REFERENT_KEYS)
        out = model(**batch, output_hidden_states=True)
        ref_loss = head(out.hidden_states[args.layer], rows, cols, targets) / len(rows)  # mean squared error
        loss = out.loss + args.weight * ref_loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        if step % 25 == 0 or step == args.steps:
            row = {
                "step": step,
                "loss": out.loss.item(),
                "ref_loss": ref_loss.item(),
                "s": time.time() - start,
            }
            metrics.write(json.dumps(row) + "\n")
            metrics.flush()
            print(json.dumps(row), flush=True)
    model.save_pretrained(args.out / "final")
    processor.save_pretrained(args.out / "final")
    for name in ("aux_config.json",):
        source = Path(args.model) / name
        if source.is_file():
            (args.out / "final" / name).write_text(source.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
