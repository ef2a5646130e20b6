"""The removed-module ablation of the paper (arXiv 2403.07508, Table 4) in miniature, on ShapesWorld.

    python -m moai.recipes.ablation --model checkpoints/moai-tiny-shapes --base runs/shapesworld/base2/final \\
        --out docs/figures/shapesworld [--variants runs/shapesworld/variants/variants.json] [--seed 7000] \\
        [--per-category 350]

A held-out world (``--seed``, never used in training) gives a question set balanced over the categories
(``--per-category`` questions each, the first ones of the world in order). Each variant answers all of them
through the engine; perception runs once per image and is shared by every variant of a model. Writes
``results.json``, ``table.md``, ``ablation.png`` (accuracy per category and variant) and ``gates.png``
(mean gate weight per expert and category of the full model).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

from ..engine import Engine
from ..model.constants import EXPERT_NAMES
from ..model.mixer import parse_gate_bias
from ..perception.verbalize import MODULES
from ..worlds.shapes import CATEGORIES, QUESTIONS_FILE, write_world
from .shapesworld import COLUMNS, accuracy_by_category, answer_all, markdown_table, read_questions, texts


def balanced_questions(world: Path, per_category: int) -> list[dict]:
    """The first ``per_category`` questions of each category of the world (its file order)."""
    picked: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    for q in read_questions(world):
        if len(picked[q["category"]]) < per_category:
            picked[q["category"]].append(q)
    short = [c for c, qs in picked.items() if len(qs) < per_category]
    if short:
        raise ValueError(f"the world has fewer than {per_category} {', '.join(short)} questions: add scenes")
    return [q for c in CATEGORIES for q in picked[c]]


def official_mode(engine: Engine) -> Engine:
    """The same weights with the official model's run-time behaviour where a trained model allows it: RoPE
    positions 0..S-1 under left padding, the compressor attending to padded aux tokens, float16 gate softmax
    (docs/official.md §4). Architecture choices the model was trained with (aux positions, the mixer scope) stay."""
    config = engine.model.config
    config.position_ids_from_mask = False
    config.compressor_config.key_padding_mask = False
    engine.model.set_mixer(gate_softmax_dtype="float16")
    return engine


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moai.recipes.ablation", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--model", default=None, help="the MoAI model (default: the bundled one)")
    parser.add_argument("--base", help="the base model trained without aux (the recipe's base2/final)")
    parser.add_argument("--dropout-model", help="the MoAI model trained with module dropout (optional)")
    parser.add_argument(
        "--variants",
        help="variants.json of `python -m moai.recipes.variants` (trained variants; default: none)",
    )
    parser.add_argument(
        "--world",
        default="runs/shapesworld-heldout",
        help="where the held-out world is written (default: %(default)s)",
    )
    parser.add_argument("--out", required=True, help="directory for results.json, table.md and the figures")
    parser.add_argument(
        "--seed", type=int, default=7000, help="world seed of the held-out set (default: %(default)s)"
    )
    parser.add_argument(
        "--scenes", type=int, default=500, help="scenes of the held-out world (default: %(default)s)"
    )
    parser.add_argument(
        "--per-category", type=int, default=350, help="questions per category (default: %(default)s)"
    )
    parser.add_argument(
        "--gate-bias", default="I_AUX=1,L_AUX=1", help="steering variant (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    out = Path(args.out)
    world = Path(args.world)
    if not (world / QUESTIONS_FILE).is_file():
        write_world(world, args.scenes, args.seed)
    questions = balanced_questions(world, args.per_category)
    print(
        f"held-out set: {len(questions)} questions ({args.per_category} per category), world seed {args.seed}"
    )

    saved = json.loads((out / "results.json").read_text()) if (out / "results.json").is_file() else {}
    if saved and (saved["seed"], saved["questions"]) != (args.seed, len(questions)):
        raise ValueError(f"{out / 'results.json'} holds another held-out set: use another --out")
    results: dict[str, dict[str, float]] = saved.get("accuracy", {})
    gates: dict[str, dict[str, float]] = saved.get("gates", {})

    def save() -> None:
        out.mkdir(parents=True, exist_ok=True)
        report = {"seed": args.seed, "questions": len(questions), "accuracy": results, "gates": gates}
        (out / "results.json").write_text(json.dumps(report, indent=2) + "\n")

    def measure(name: str, engine: Engine, **kwargs) -> list | None:
        """Answer every question with one variant; a variant already in results.json is not run again."""
        if name in results and not (kwargs.get("gates") and not gates):
            print(f"{name:<40} overall {results[name]['overall']:5.1f}  (from results.json)")
            return None
        start = time.perf_counter()
        answers = answer_all(engine, world, questions, **kwargs)
        results[name] = accuracy_by_category(questions, texts(answers))
        print(
            f"{name:<40} overall {results[name]['overall']:5.1f}  ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
        save()
        return answers

    moai = Engine.load(args.model, cache_size=len(questions))
    answers = measure("MoAI-tiny", moai, gates=True)
    for module in MODULES:
        measure(f"MoAI-tiny, {module.upper()} aux removed", moai, drop=(module,))
    measure("MoAI-tiny, all aux removed", moai, drop=MODULES)
    moai.model.set_mixer(gate_bias=parse_gate_bias(args.gate_bias, "--gate-bias"))
    measure(f"MoAI-tiny, gate bias {args.gate_bias}", moai)
    moai.model.set_mixer(gate_bias=None)
    if args.dropout_model:
        dropout = Engine.load(args.dropout_model, cache_size=len(questions))
        dropout._cache = moai._cache  # the same images: share the perception
        measure("MoAI-tiny + module dropout", dropout)
        for module in MODULES:
            measure(f"MoAI-tiny + module dropout, {module.upper()} aux removed", dropout, drop=(module,))
    if args.base:
        base = Engine.load(args.base, cache_size=len(questions))
        base._cache = moai._cache
        measure("base (no aux)", base)
    official = official_mode(Engine.load(args.model, cache_size=len(questions)))
    official._cache = moai._cache
    measure("MoAI-tiny, official run-time mode", official)
    if args.variants:
        for name, variant in json.loads(Path(args.variants).read_text()).items():
            engine = Engine.load(variant["model"], cache_size=len(questions))
            engine._cache = moai._cache  # the same images and perception preset: share the perception
            measure(variant["label"], engine)
            if name == "module-dropout":
                for module in MODULES:
                    measure(f"{variant['label']}, {module.upper()} aux removed", engine, drop=(module,))

    if answers is not None:  # mean gate weights of the full model per category, over mixer layers
        for category in CATEGORIES:
            rows = [a.gate_weights for a, q in zip(answers, questions) if q["category"] == category]
            gates[category] = {
                name: sum(sum(layer[name] for layer in w.values()) / len(w) for w in rows) / len(rows)
                for name in EXPERT_NAMES
            }
    save()
    (out / "table.md").write_text(markdown_table(results, label="variant") + "\n")
    plot(results, gates, out)
    print(markdown_table(results, label="variant"))
    return 0


def plot(results: dict[str, dict[str, float]], gates: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    x = np.arange(len(COLUMNS))
    width = 0.8 / len(names)
    fig, ax = plt.subplots(figsize=(max(13.0, 0.9 * len(names)), 5.5))  # wider as trained variants are added
    colours = plt.get_cmap("tab20").colors  # 20 distinct colours: the run-time and trained variants
    for i, name in enumerate(names):
        ax.bar(
            x + i * width,
            [results[name][c] for c in COLUMNS],
            width,
            label=name,
            color=colours[i % len(colours)],
        )
    ax.set_xticks(x + 0.4 - width / 2, COLUMNS)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title("ShapesWorld held-out set: accuracy per category")
    ax.legend(fontsize=7, ncol=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(out / "ablation.png", dpi=110, bbox_inches="tight")  # the legend stands outside the axes
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(EXPERT_NAMES))
    width = 0.8 / len(gates)
    for i, (category, weights) in enumerate(gates.items()):
        ax.bar(x + i * width, [weights[n] for n in EXPERT_NAMES], width, label=category)
    ax.set_xticks(x + 0.4 - width / 2, EXPERT_NAMES)
    ax.set_ylabel("mean gate weight")
    ax.set_ylim(0, 1)
    ax.set_title("MoAI-tiny: gate weight per expert (mean over mixer layers and prompt tokens)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "gates.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
