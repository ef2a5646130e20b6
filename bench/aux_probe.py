"""Does MoAI step 2 learn to read the aux knowledge for one ShapesWorld question category, given many steps?

    python bench/aux_probe.py --recipe runs/shapesworld [--category existence] [--steps 2000] [--every 500]

A probe that separates a capacity limit from an optimisation one (docs/shapesworld.md, "What limits the
model"). From a finished recipe run (`make shapesworld-model`: its world, perception cache, check set and
step-1 model) it writes a training file holding only the turns of ``--category`` (one question per record),
trains MoAI step 2 on it from the step-1 model with the recipe's own ``step2.yaml`` (only the data, the run
directory, the step count and the checkpoint interval changed), and scores every ``--every`` steps on the
check set's questions of that category with the aux on and with all four modules removed. A model that reads
the aux climbs above its no-aux score; one that does not stays with it. The aux text names the answer of
every existence, colour and shape question outright.

Writes RECIPE/probe-CATEGORY/ (the training file, the step-2 run) and prints a table; each evaluation is the
recipe's own check (`moai.recipes.shapesworld.answer_all`). For existence it also prints how the final model
answers the questions whose pair is absent, split by whether the scene holds the colour and the kind apart (a
model that binds neither answers by the colour, or the kind, alone).

``--compressor-on-pairs N`` first teaches the step-1 model's compressor the 12 colour-kind pairs directly
(``N`` steps on the labels of fresh scenes, `compressor_probe.teach_pairs`) and starts step 2 from that copy
(RECIPE/probe-.../step1-pairs): does step 2 read the aux when the compressed aux already holds the answer?
With ``--override trainable=mixers`` the compressor then stays as taught.

``--blank-image`` takes the pixels away: every training and check question is asked about one blank canvas,
with the aux text and panoptic map of its own scene (training: from the recipe's perception cache, as
``aux: record`` data; check set: perceived now), so the aux is the only source of the answer. How well the MoAI
modules read it is then measured alone, without a base that already answers from the pixels.

``--aux-in-prompt`` (with ``--blank-image``) takes the MoAI modules away instead: the recipe's base is trained
(base.yaml: projector and LLM) on the same blank-canvas questions with their scene's aux text written into the
prompt before the question, and scored with it there ("aux on") and without it ("no aux"). Can the LLM itself
read the aux text, in its own context, with every weight trainable?

``--bypass-compressor`` (a diagnostic, this process only) replaces the compressor's output by its input: the
experts attend to every aux token (word embedding + the compressor's position embedding, through its final
LayerNorm) instead of the 64 latents. Does the Perceiver hold the reading back?
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

from moai.cli import main as moai_main  # noqa: E402
from moai.engine import Engine  # noqa: E402
from moai.model.compressor import MoAICompressor  # noqa: E402
from moai.perception.cache import PerceptionCache  # noqa: E402
from moai.perception.config import PerceptionConfig  # noqa: E402
from moai.perception.settings import AuxSettings  # noqa: E402
from moai.perception.verbalize import MODULES, aux_inputs  # noqa: E402
from moai.recipes.shapesworld import accuracy_by_category, answer_all, read_questions, texts  # noqa: E402
from moai.train.config import TrainConfig  # noqa: E402
from moai.worlds.shapes import CATEGORIES, generate_scene  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compressor_probe import teach_pairs  # noqa: E402

STEP2 = ROOT / "moai/train/configs/shapesworld/step2.yaml"
BASE = ROOT / "moai/train/configs/shapesworld/base.yaml"
BLANK_RGB = (235, 235, 235)
"""The ``--blank-image`` canvas: one light grey, as the world's pale backgrounds."""


def single_category_data(world: Path, category: str, out: Path) -> int:
    """Every question of ``category`` in the world's question file (the questions its training conversations
    hold) as a one-turn training record, image first as `moai predict` asks; returns the number of records."""
    records = [
        {
            "id": q["question_id"],
            "image": str((world / q["image"]).resolve()),
            "conversations": [
                {"from": "human", "value": f"<image>\n{q['text']}"},
                {"from": "gpt", "value": q["answer"]},
            ],
        }
        for q in read_questions(world)
        if q.get("category") == category
    ]
    out.write_text(json.dumps(records))
    return len(records)


def blank_canvas(like: Path, out: Path) -> Path:
    """A canvas of ``like``'s size in `BLANK_RGB`, written to ``out``."""
    with Image.open(like) as image:
        size = image.size
    Image.new("RGB", size, BLANK_RGB).save(out)
    return out


def blank_image_data(
    train: Path, cache: Path, settings: AuxSettings, blank: Path, maps: Path, in_prompt: bool = False
) -> None:
    """Rewrite the training file ``train`` (written by `single_category_data`) so that every record asks about
    ``blank``, carrying the aux text and panoptic map (a PNG under ``maps``) of its own image from the
    perception ``cache``, made as ``settings`` say (the start model's verbalizer and map style); with
    ``in_prompt`` the aux text is written into the question instead (`prompt_with_aux`) and no map is kept."""
    store = PerceptionCache(cache, config=PerceptionConfig.from_preset(settings.perception_preset))
    maps.mkdir(parents=True, exist_ok=True)
    records = json.loads(train.read_text())
    for record in records:
        perception = store.get(record["image"])
        if perception is None:
            raise SystemExit(f"{record['image']}: not in the perception cache {cache}")
        text, colour_map = aux_inputs(perception, settings.verbalizer, settings.map_style)
        if in_prompt:
            question = record["conversations"][0]["value"].removeprefix("<image>\n")
            record["conversations"][0]["value"] = f"<image>\n{prompt_with_aux(text, question)}"
            record["image"] = str(blank)
            continue
        map_path = maps / f"{record['id']}.png"
        Image.fromarray(colour_map).save(map_path)
        record.update(image=str(blank), aux_text=text, aux_map=str(map_path.resolve()))
    train.write_text(json.dumps(records))


def prompt_with_aux(aux_text: str, question: str) -> str:
    """The ``--aux-in-prompt`` question: the scene's aux text, then the question."""
    return f"{aux_text} {question}"


def evaluate(
    engine: Engine,
    check: Path,
    questions: list[dict],
    category: str,
    blank: Path | None = None,
    aux: AuxSettings | None = None,
) -> tuple[float, float, list[str]]:
    """Check-set accuracy (%) on ``questions`` with the aux on and with every module removed, and the answers
    with the aux on. With ``blank`` each question is asked about that canvas with its own scene's aux; with
    ``aux`` too, that aux is verbalized as ``aux`` says and written into the prompt (``--aux-in-prompt``)."""
    if blank is None:
        answers = texts(answer_all(engine, check, questions))
        none_answers = texts(answer_all(engine, check, questions, drop=MODULES))
    elif aux is not None:
        answers, none_answers = prompt_answers(engine, check, questions, blank, aux)
    else:
        answers, none_answers = blank_answers(engine, check, questions, blank)
    own = accuracy_by_category(questions, answers)
    none = accuracy_by_category(questions, none_answers)
    return own[category], none[category], answers


def blank_answers(
    engine: Engine, check: Path, questions: list[dict], blank: Path, batch_size: int = 32
) -> tuple[list[str], list[str]]:
    """Answers to ``questions`` asked about ``blank`` with the perception of their own image, with the aux
    on and with every module removed."""
    canvas = Image.open(blank).convert("RGB")
    own, none = [], []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        perceptions = engine.perceive([Image.open(check / q["image"]).convert("RGB") for q in chunk])
        asked = ([canvas] * len(chunk), [q["text"] for q in chunk])
        own += texts(engine.answer(*asked, perceptions=perceptions))
        none += texts(engine.answer(*asked, perceptions=perceptions, drop=MODULES))
    return own, none


def prompt_answers(
    engine: Engine, check: Path, questions: list[dict], blank: Path, aux: AuxSettings, batch_size: int = 32
) -> tuple[list[str], list[str]]:
    """Answers to ``questions`` asked about ``blank`` with their own scene's aux text in the prompt, and
    without it."""
    canvas = Image.open(blank).convert("RGB")
    own, none = [], []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        perceptions = engine.perceive([Image.open(check / q["image"]).convert("RGB") for q in chunk])
        prompts = [
            prompt_with_aux(aux_inputs(p, aux.verbalizer, aux.map_style)[0], q["text"])
            for p, q in zip(perceptions, chunk)
        ]
        own += texts(engine.answer([canvas] * len(chunk), prompts))
        none += texts(engine.answer([canvas] * len(chunk), [q["text"] for q in chunk]))
    return own, none


def scorable_checkpoints(run: Path, final: dict) -> list[tuple[int, dict]]:
    """(step, trainable weights) of every checkpoint of ``run`` in step order that can be loaded into the final
    model whose state dict is ``final``; a checkpoint holding weights final/ lacks (LoRA adapters, merged into
    final/) is reported and left out."""
    out = []
    for ckpt in sorted((run / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(ckpt.name.split("-")[1])
        weights = load_file(str(ckpt / "trainable.safetensors"))
        if set(weights) - set(final):
            print(f"step {step}: checkpoint holds weights final/ has not (LoRA?), not scored")
            continue
        out.append((step, weights))
    return out


def existence_by_parts(check: Path, questions: list[dict], answers: list[str]) -> Counter:
    """For the existence questions whose pair is absent: (colour in the scene, kind in the scene, answer) ->
    count."""
    scenes = {}
    for line in (check / "scenes.jsonl").read_text().splitlines():
        scene = json.loads(line)
        scenes[scene["id"]] = scene
    parts: Counter = Counter()
    for q, answer in zip(questions, answers):
        match = re.match(r"Is there a (\w+) (\w+) in the image\?", q["text"])
        if q["answer"] != "no" or match is None:
            continue
        colour, kind = match.groups()
        shapes = scenes[q["question_id"].rsplit("-", 1)[0]]["shapes"]
        has_colour = any(s["colour"] == colour for s in shapes)
        has_kind = any(s["kind"] == kind for s in shapes)
        parts[(has_colour, has_kind, answer.strip().lower())] += 1
    return parts


def start_with_taught_compressor(recipe: Path, out: Path, steps: int, scenes: int, seed: int) -> Path:
    """A copy of the recipe's step-1 model whose compressor was taught the pairs (`teach_pairs`)."""
    dest = out / "step1-pairs"
    if (dest / "config.json").is_file():
        return dest
    engine = Engine.load(recipe / "step1/final")
    before, after = teach_pairs(engine, [generate_scene(seed, i) for i in range(scenes)], steps)
    print(f"compressor taught the 12 pairs for {steps} steps: held-out {before:.1f}% -> {after:.1f}%")
    shutil.copytree(recipe / "step1/final", dest, dirs_exist_ok=True)
    engine.model.save_pretrained(dest)
    return dest


def bypass_compressor() -> None:
    """Make every `MoAICompressor` of this process return its (position-embedded, normalised) input."""

    def forward(self: MoAICompressor, aux_embeds: torch.Tensor, aux_mask: torch.Tensor | None = None):
        return self.norm(
            self.add_positions(aux_embeds, aux_mask)
        )  # [B, T, D]: every aux token, not L latents

    MoAICompressor.forward = forward


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--recipe",
        type=Path,
        default=ROOT / "runs/shapesworld",
        help="a finished recipe run (default: runs/shapesworld)",
    )
    parser.add_argument(
        "--category", choices=CATEGORIES, default="existence", help="question category (default: existence)"
    )
    parser.add_argument("--steps", type=int, default=2000, help="step-2 steps (default: 2000)")
    parser.add_argument("--every", type=int, default=500, help="evaluate every N steps (default: 500)")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a further step-2 config override, as moai train takes it (repeatable; default: none)",
    )
    parser.add_argument(
        "--name", default="", help="suffix of the probe's directory, for a run with overrides (default: none)"
    )
    parser.add_argument(
        "--compressor-on-pairs",
        type=int,
        default=0,
        metavar="STEPS",
        help="teach the step-1 compressor the colour-kind pairs first, for STEPS steps (default: 0, off)",
    )
    parser.add_argument(
        "--pair-scenes", type=int, default=2000, help="fresh scenes to teach the pairs on (default: 2000)"
    )
    parser.add_argument(
        "--pair-seed", type=int, default=4000, help="world seed of those scenes (default: 4000)"
    )
    parser.add_argument(
        "--blank-image",
        action="store_true",
        help="ask every question about one blank canvas with its own scene's aux: the aux is the only source "
        "of the answer (default: off, the scene's image)",
    )
    parser.add_argument(
        "--aux-in-prompt",
        action="store_true",
        help="with --blank-image: train the base (projector and LLM) with the aux text written into the "
        "prompt, no MoAI modules (default: off)",
    )
    parser.add_argument(
        "--bypass-compressor",
        action="store_true",
        help="the experts read every aux token instead of the compressor's latents (a diagnostic; default: off)",
    )
    args = parser.parse_args()
    if args.aux_in_prompt and not args.blank_image:
        parser.error("--aux-in-prompt needs --blank-image")
    if args.bypass_compressor:
        bypass_compressor()

    recipe = args.recipe.resolve()
    suffix = ("-blank" if args.blank_image else "") + ("-prompt" if args.aux_in_prompt else "")
    suffix += f"-{args.name}" if args.name else ""
    out = recipe / f"probe-{args.category}{suffix}"
    out.mkdir(parents=True, exist_ok=True)
    n = single_category_data(recipe / "world", args.category, out / "train.json")
    print(f"{n} {args.category} questions of {recipe / 'world'} -> {out / 'train.json'}")
    run = out / "step2"
    if args.compressor_on_pairs:
        start = start_with_taught_compressor(
            recipe, out, args.compressor_on_pairs, args.pair_scenes, args.pair_seed
        )
    else:
        start = recipe / ("base2/final" if args.aux_in_prompt else "step1/final")
    stage = BASE if args.aux_in_prompt else STEP2
    overrides = {
        "output_dir": str(run),
        "model": str(start),
        "data": f"[{{path: {out / 'train.json'}}}]",
        "perception_cache": str(recipe / "cache"),
        **({"aux": "record"} if args.blank_image and not args.aux_in_prompt else {}),
        "max_steps": str(args.steps),
        # the schedule these probes were measured with (step2.yaml's before step 2 became three parts)
        "min_lr": "1.0e-4",
        "warmup_steps": "30",
        "save_every": str(args.every),
        "keep_checkpoints": str(args.steps // args.every + 1),
        "progress": "false",
    }
    blank = None
    if args.blank_image:  # the aux text as step 2 would make it (its verbalizer, overrides included)
        step2 = TrainConfig.load(STEP2, [f"{k}={v}" for k, v in overrides.items()] + args.override)
        map_style = AuxSettings.load(Path(step2.model)).map_style  # the model trained on, overrides included
        settings = AuxSettings(step2.perception_preset, step2.verbalizer, map_style)
        first = json.loads((out / "train.json").read_text())[0]["image"]
        blank = blank_canvas(Path(first), out / "blank.png")
        blank_image_data(
            out / "train.json", recipe / "cache", settings, blank, out / "maps", args.aux_in_prompt
        )
        where = "in the prompt" if args.aux_in_prompt else "as aux"
        print(
            f"every question asked about {blank}, with its own scene's aux {where} "
            f"({settings.verbalizer} verbalizer)"
        )
    if not (run / "final/config.json").is_file():
        argv = ["train", str(stage)] + [f"--override={k}={v}" for k, v in overrides.items()]
        argv += [f"--override={o}" for o in args.override]
        if moai_main(argv) != 0:
            return 1

    check = recipe / "check"
    questions = [q for q in read_questions(check) if q.get("category") == args.category]
    engine = Engine.load(run / "final")
    final = {k: v.clone() for k, v in engine.model.state_dict().items()}
    prompt_aux = settings if args.aux_in_prompt else None
    rows, answers = [], []  # answers: the last evaluation's, i.e. the final model's
    for step, weights in scorable_checkpoints(run, final):
        engine.model.load_state_dict(weights, strict=False)
        own, none, answers = evaluate(engine, check, questions, args.category, blank, prompt_aux)
        rows.append((step, own, none))
    if not rows or rows[-1][0] != args.steps:
        engine.model.load_state_dict(final)
        own, none, answers = evaluate(engine, check, questions, args.category, blank, prompt_aux)
        rows.append((args.steps, own, none))
    shown = (
        check.relative_to(ROOT) if check.is_relative_to(ROOT) else check
    )  # no machine path in a pasted table
    print(f"\n{args.category}, {len(questions)} check-set questions ({shown}), accuracy in %")
    print(f"{'step':>6} {'aux on':>8} {'no aux':>8} {'gain':>7}")
    for step, own, none in rows:
        print(f"{step:>6} {own:8.1f} {none:8.1f} {own - none:+7.1f}")
    if args.category == "existence":
        parts = existence_by_parts(check, questions, answers)
        print("\nfinal model, existence questions whose pair is absent: answered yes / asked")
        for has_colour in (False, True):
            for has_kind in (False, True):
                yes = parts[(has_colour, has_kind, "yes")]
                asked = sum(n for (c, k, _), n in parts.items() if (c, k) == (has_colour, has_kind))
                print(
                    f"  colour {'in' if has_colour else 'not in':>6} scene, kind {'in' if has_kind else 'not in':>6}"
                    f" scene: {yes:>3} / {asked}"
                )
    (out / "probe.json").write_text(json.dumps({"category": args.category, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
