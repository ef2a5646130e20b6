"""How much of each answer a ShapesWorld model takes from the aux knowledge, per question category.

    python bench/aux_information.py [--model checkpoints/moai-tiny-shapes] [--scenes 100] [--seed 3000]

On a fresh world (``--seed``, not a training seed) every question is scored teacher-forced: the negative
log-likelihood of the true answer (its tokens and end token, nats per answer) given the image and

* its own aux knowledge (the model's perception preset and verbalizer, as at inference),
* another scene's aux (the next image's perception),
* no aux (all four modules removed).

``no aux - own`` is what the model gains from reading the right aux; ``another - own`` how much it relies on
the aux being about this image. An answer the aux names outright (a sign word, the colour of the only square)
could cost ~0 nats with its own aux; what stays between that and the printed numbers is what the model does
not read. The MoAI paper's claim (arXiv 2403.07508 §1, Table 4) is that the verbalized knowledge helps the
questions its module covers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moai.engine import Engine  # noqa: E402
from moai.model.constants import IGNORE_INDEX  # noqa: E402
from moai.perception.verbalize import MODULES  # noqa: E402
from moai.worlds.shapes import CATEGORIES, QUESTIONS_FILE, write_world  # noqa: E402

CONDITIONS = ("own aux", "another scene's aux", "no aux")


@torch.no_grad()
def answer_nll(
    engine: Engine, images: list, questions: list[dict], perceptions: list, drop=()
) -> list[float]:
    """Teacher-forced NLL (nats) of each question's true answer, one batch."""
    answers = [q["answer"] for q in questions]
    texts = [q["text"] for q in questions]
    batch, _, _ = engine.prepare(images, texts, drop, perceptions, answers=answers)
    labels = batch.pop("labels")
    logits = engine.model(**batch).logits.float()  # [B, S, V]
    logp = logits[:, :-1].log_softmax(-1)  # [B, S-1, V]
    target = labels[:, 1:]  # [B, S-1]
    mask = target != IGNORE_INDEX
    picked = logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1)  # [B, S-1]
    return (-(picked * mask).sum(-1)).tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=str(ROOT / "checkpoints" / "moai-tiny-shapes"),
        help="model (default: the bundled one)",
    )
    parser.add_argument(
        "--scenes", type=int, default=100, help="scenes of the fresh world (default: %(default)s)"
    )
    parser.add_argument("--seed", type=int, default=3000, help="world seed (default: %(default)s)")
    parser.add_argument(
        "--batch-size", type=int, default=16, help="questions a forward (default: %(default)s)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    engine = Engine.load(args.model)
    with tempfile.TemporaryDirectory() as tmp:
        world = Path(tmp)
        write_world(world, args.scenes, args.seed)
        questions = [json.loads(line) for line in (world / QUESTIONS_FILE).read_text().splitlines()]
        names = sorted({q["image"] for q in questions})
        images = {n: engine.perceiver.load(world / n) for n in names}
        perceived = dict(zip(names, engine.perceive([images[n] for n in names])))
    other = {n: perceived[names[(i + 1) % len(names)]] for i, n in enumerate(names)}

    nll: dict[str, dict[str, list[float]]] = {c: defaultdict(list) for c in CONDITIONS}
    for start in range(0, len(questions), args.batch_size):
        chunk = questions[start : start + args.batch_size]
        imgs = [images[q["image"]] for q in chunk]
        for condition, percs, drop in (
            ("own aux", [perceived[q["image"]] for q in chunk], ()),
            ("another scene's aux", [other[q["image"]] for q in chunk], ()),
            ("no aux", [perceived[q["image"]] for q in chunk], MODULES),
        ):
            for q, value in zip(chunk, answer_nll(engine, imgs, chunk, percs, drop)):
                nll[condition][q["category"]].append(value)

    print(f"{args.model}: {len(questions)} questions of {args.scenes} scenes (world seed {args.seed})")
    print("mean NLL of the true answer, nats per answer (teacher-forced)")
    print(f"{'category':<10}" + "".join(f"{c:>22}" for c in CONDITIONS) + f"{'no aux - own':>15}{'n':>6}")
    for category in (*CATEGORIES, "all"):
        cats = CATEGORIES if category == "all" else (category,)
        means = []
        for condition in CONDITIONS:
            values = [v for c in cats for v in nll[condition][c]]
            means.append(sum(values) / len(values))
        count = sum(len(nll["own aux"][c]) for c in cats)
        print(
            f"{category:<10}"
            + "".join(f"{m:>22.3f}" for m in means)
            + f"{means[2] - means[0]:>15.3f}{count:>6}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
