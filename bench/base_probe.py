"""How far does the ShapesWorld base get with more steps, or with more scenes? Check-set accuracy per checkpoint.

    python bench/base_probe.py --recipe runs/shapesworld --name more --steps 2000 \
        [--start runs/shapesworld/base/final] [--world runs/shapesworld/world] \
        [--pretrain-tower 1200 [--colour-weight 1.0]] [--trainable all] [--llm-weights FILE]

Trains a base stage with the recipe's own ``base.yaml`` (no aux; only the data, the run directory, the starting
model, the step count and the checkpoint interval changed) from
``--start`` (a saved base to continue, or the preset ``shapes`` to start from nothing) on ``--world``'s
training conversations (a world made by `moai worlds shapes`; more scenes than the recipe's 6,000 with
``--scenes`` there), and scores every ``--every`` steps on the recipe's check set (150 scenes of another
seed), per category, as the recipe's base check does (`moai.recipes.shapesworld.answer_all`). A base that is
short of steps keeps climbing; one short of data stops while its training loss still falls.

``--pretrain-tower STEPS`` first pretrains the vision tower of the preset ``--start`` on ``--world``'s patch
labels (moai/recipes/tower.py, the recipe's stage 0; ``--colour-weight`` as `TowerConfig.colour_weight`), saved
in the run directory as ``start/``; ``--trainable`` replaces ``base.yaml``'s policy (``all`` trains the tower too).
``--llm-weights`` replaces the starting model's LLM by one trained elsewhere (saved as ``start-llm/``), e.g. on
associative recall (`bench/recall_probe.py`): does a base whose LLM can look things up learn more?

Writes RECIPE/base-probe-NAME/ (the run, probe.json) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moai.cli import main as moai_main  # noqa: E402
from moai.engine import Engine  # noqa: E402
from moai.recipes.shapesworld import accuracy_by_category, answer_all, read_questions, texts  # noqa: E402
from moai.recipes.tower import TowerConfig, pretrain_tower  # noqa: E402
from moai.train.build import build_model  # noqa: E402
from moai.train.config import TrainConfig  # noqa: E402
from moai.train.curves import read_metrics  # noqa: E402
from moai.worlds.shapes import CATEGORIES  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aux_probe import scorable_checkpoints  # noqa: E402

BASE = ROOT / "moai/train/configs/shapesworld/base.yaml"


def with_llm(start: str, weights: Path, out: Path) -> int:
    """Save to ``out`` the model the base stage builds from ``start`` with its LLM (decoder and LM head, not
    its MoAI modules) taken from the state dict ``weights``; returns how many tensors were taken. ValueError
    when ``weights`` holds no LLM of that shape."""
    model, processor = build_model(TrainConfig.load(BASE, [f"model={start}"]))
    own = model.state_dict()
    llm = {
        k: v
        for k, v in torch.load(weights, weights_only=True).items()
        if (k.startswith("model.language_model.") or k.startswith("lm_head.")) and "moai" not in k
    }
    if not llm or any(k not in own or own[k].shape != v.shape for k, v in llm.items()):
        raise ValueError(f"--llm-weights {weights}: not an LLM of the starting model's shape")
    model.load_state_dict(llm, strict=False)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return len(llm)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe",
        type=Path,
        default=ROOT / "runs/shapesworld",
        help="a recipe run with a check set (default: runs/shapesworld)",
    )
    parser.add_argument("--name", required=True, help="suffix of the run directory (required, no default)")
    parser.add_argument(
        "--start",
        default="shapes",
        help="a saved base model to continue, or a preset (default: shapes, from nothing)",
    )
    parser.add_argument(
        "--world", type=Path, default=None, help="training world (default: the recipe's world)"
    )
    parser.add_argument("--steps", type=int, default=2000, help="base steps (default: 2000)")
    parser.add_argument("--every", type=int, default=500, help="score every N steps (default: 500)")
    parser.add_argument(
        "--pretrain-tower",
        type=int,
        default=0,
        metavar="STEPS",
        help="pretrain the preset's vision tower on the world's patch labels first (default: 0, no)",
    )
    parser.add_argument(
        "--colour-weight",
        type=float,
        default=TowerConfig.colour_weight,
        help="weight of the colour target in --pretrain-tower (default: %(default)s)",
    )
    parser.add_argument("--trainable", default=None, help="trainable policy (default: base.yaml's)")
    parser.add_argument(
        "--llm-weights",
        type=Path,
        help="the starting model's LLM (decoder and LM head, not its MoAI modules) from this state dict of a "
        "model of the same LLM, e.g. one trained on associative recall by `bench/recall_probe.py --save` "
        "(default: the starting model's own)",
    )
    args = parser.parse_args()
    if args.llm_weights and not args.llm_weights.is_file():
        parser.error(f"--llm-weights {args.llm_weights}: no such file")

    recipe = args.recipe.resolve()
    world = (args.world or recipe / "world").resolve()
    out = recipe / f"base-probe-{args.name}"
    start = str(Path(args.start).resolve()) if Path(args.start).is_dir() else args.start
    if args.pretrain_tower and not (out / "start/config.json").is_file():
        if Path(args.start).is_dir():
            parser.error("--pretrain-tower starts from a preset (--start shapes), not a saved model")
        base = TrainConfig.load(BASE, [f"model={start}"])
        model, processor = build_model(base)  # the model the base stage builds from the preset
        config = TowerConfig(steps=args.pretrain_tower, colour_weight=args.colour_weight, seed=base.seed)
        print(pretrain_tower(model, processor, world, config))
        model.save_pretrained(out / "start")
        processor.save_pretrained(out / "start")
    if args.pretrain_tower:
        start = str(out / "start")
    if args.llm_weights:
        if not (out / "start-llm/config.json").is_file():
            try:
                count = with_llm(start, args.llm_weights, out / "start-llm")
            except ValueError as error:
                parser.error(str(error))
            print(f"{count} LLM tensors from {args.llm_weights}")
        start = str(out / "start-llm")
    overrides = {
        "output_dir": str(out),
        "model": start,
        "data": f"[{{path: {world / 'train.json'}}}]",
        "max_steps": str(args.steps),
        "save_every": str(args.every),
        "keep_checkpoints": str(args.steps // args.every + 1),
        "progress": "false",
    }
    if args.trainable:
        overrides["trainable"] = args.trainable
    if not (out / "final/config.json").is_file():
        argv = ["train", str(BASE)] + [f"--override={k}={v}" for k, v in overrides.items()]
        if moai_main(argv) != 0:
            return 1

    check = recipe / "check"
    questions = read_questions(check)
    engine = Engine.load(out / "final")
    losses = {m["step"]: m["loss"] for m in read_metrics(out) if "loss" in m}
    rows = []
    for step, weights in scorable_checkpoints(out, engine.model.state_dict()):
        engine.model.load_state_dict(weights, strict=False)
        rows.append((step, accuracy_by_category(questions, texts(answer_all(engine, check, questions)))))
    print(
        f"\nbase from {args.start} on {world} ({len(questions)} check-set questions, {check}), accuracy in %"
    )
    print(f"{'step':>6} {'loss':>6}" + "".join(f"{c:>10}" for c in (*CATEGORIES, "overall")))
    for step, acc in rows:
        recent = [v for s, v in losses.items() if step - 50 < s <= step]  # training loss, last 50 steps
        loss = sum(recent) / max(1, len(recent))
        print(
            f"{step:>6} {loss:6.3f}" + "".join(f"{acc.get(c, 0.0):10.1f}" for c in (*CATEGORIES, "overall"))
        )
    (out / "probe.json").write_text(
        json.dumps({"start": args.start, "world": str(world), "rows": rows}, indent=1)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
