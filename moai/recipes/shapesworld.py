"""The bundled ShapesWorld model, end to end from nothing (docs/shapesworld.md, "The bundled model").

    world (train + check sets, sign and two-shape position questions) -> perception cache -> vision tower
    -> base (two runs) -> check
    -> MoAI step 1 -> step 2 (sign questions on blanked images -> check, then the sign word on blanked images,
    then shown, then beside the world's)
    -> base2's vision tower trained on with a position target -> the base trained on with position questions
    -> check -> step 2's last part again, the MoAI modules moved onto that base -> check
    -> model card + install

The tower stage pretrains the vision tower on the training scenes' patch labels (moai/recipes/tower.py: what a
pretrained CLIP is to MoAI-7B). The other stages are ``moai train`` runs of the shipped configs
``moai/train/configs/shapesworld/{base,base2,step1,step2_blank,step2_words,step2_shown,step2,base_pos,step2_pos}.yaml``
(the paper's recipe in miniature, arXiv 2403.07508 §3.3: a LLaVA-style base trained without aux, in two runs,
then the MoAI modules trained on the frozen base in two steps, step 2 in four parts that start the reading of the OCR aux and the
copy of the sign word on the sign questions of moai/worlds/signs.py), then ``base_pos`` and ``step2_pos``: the
base trained on with the position questions of the world's two-shape scenes, and step 2's last part again with
the MoAI modules moved onto it (`TrainConfig.base_weights`), because the reading does not start on a base
trained on position (docs/shapesworld.md, "The MoAI modules moved onto a base trained on"). The checks between
stages stop the recipe when a stage did not learn (measured on a check set of its own world seed, never trained
on, but the second):

* base (``base2``, and ``base_pos``): beats the majority-answer-per-template baseline on existence, colour and
  shape;
* the first part of step 2 (``READING_STAGE``): its training loss left its plateau (`check_reading`);
* MoAI (the last stage): answers follow the aux knowledge: with another scene's aux, at least
  ``MIN_SWAP_CHANGED`` of the answers change.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..perception.config import PerceptionConfig
from ..perception.dataset import precompute
from ..perception.verbalize import MODULES
from ..train.config import TrainConfig
from ..train.curves import PLATEAU_BELOW, find_plateau, read_losses
from ..worlds.positions import world_position_records, write_position_file
from ..worlds.score import is_correct, template_key
from ..worlds.shapes import (
    CATEGORIES,
    QUESTIONS_FILE,
    SCENES_FILE,
    TRAIN_FILE,
    write_world,
)
from ..worlds.signs import SIGN_WORDS_FILE, SIGNS_FILE, write_sign_file
from .launch import default_processes, rank_config, train_stage

CONFIGS = Path(__file__).resolve().parent.parent / "train" / "configs" / "shapesworld"
"""The shipped stage configs."""
BASE_STAGES = ("base", "base2")
"""The stages that train the base the MoAI stages train on (no aux; ``base2`` restarts ``base``'s schedule from
its model); the base check runs after the last."""
MOAI_STAGES = ("step1", "step2_blank", "step2_words", "step2_shown", "step2")
"""MoAI step 1 and step 2 on the frozen base, step 2 in four parts (the word-present questions on blanked
images, the sign-word question on blanked images, then on shown ones, then every sign question beside the
world's questions)."""
MOVE_STAGES = ("base_pos", "step2_pos")
"""The base trained on from ``base2``'s model (its tower trained on first: `TOWER_POS`) with the world's two-shape
position questions, then step 2's last part again with the MoAI modules of ``step2`` moved onto it (`STARTS`,
`MOVED_ONTO`); the base check runs after the first, the MoAI check after the second."""
STAGES = (*BASE_STAGES, *MOAI_STAGES, *MOVE_STAGES)
"""The `moai train` stages, in order, after the tower stage (`make_tower`)."""
NO_AUX_STAGES = (*BASE_STAGES, MOVE_STAGES[0])
"""The stages that train a base: no aux, no perception cache."""
TOWER_POS = "tower_pos"
"""Stage 8's first part: ``base2``'s vision tower trained on with the position target (`make_tower_pos`); ``base_pos``
starts from its model."""
TOWER_POS_SETTINGS = ("position_weight=2",)
"""`TowerConfig` settings of the ``tower_pos`` stage over its defaults: the item's centre as a third target, so that
the patch features say where they are (docs/shapesworld.md, "The position tower under the referent target")."""
STARTS = {"base_pos": TOWER_POS, "step2_pos": "step2"}
"""A stage that does not start from the model of the stage before it: the stage whose model it starts from."""
MOVED_ONTO = {"step2_pos": "base_pos"}
"""A stage whose model's MoAI modules move onto another stage's base (`TrainConfig.base_weights`)."""
POSITIONS2_FILE = "positions2.json"
"""``world/``'s training file of every position question of its two-shape scenes (moai/worlds/positions.py)."""
SIGN_QUESTIONS = {"draws": 3, "signs_only": True, "word_question": False, "negatives": "same-length"}
"""How the recipe writes ``world/signs.json`` (`moai.worlds.signs.write_sign_file`): three rounds over the
scenes with a sign, the word-present question only, absent words of the sign word's length."""
SIGN_WORDS = {**SIGN_QUESTIONS, "word_question": True, "words_only": True}
"""How the recipe writes ``world/sign-words.json``: the sign-word question alone, on the same rounds."""
TOWER = "tower"
"""Stage 0: the vision tower pretrained on patch labels (moai/recipes/tower.py)."""
RECIPE_STAGES = (TOWER, *BASE_STAGES, *MOAI_STAGES, TOWER_POS, *MOVE_STAGES)
"""Every training stage, in the order the recipe runs them (the two tower stages are not `moai train` runs)."""
TRAIN_SEED = 1000
"""World seed of the training scenes."""
CHECK_SEED = 2000
"""World seed of the check set used between stages (never trained on; not the ablation's held-out set)."""
BASE_CHECKED = ("existence", "colour", "shape")
"""Categories on which the base must beat the majority baseline before the MoAI stages start."""
COLUMNS = (*CATEGORIES, "overall")
"""Columns of the accuracy tables."""
MIN_SWAP_CHANGED = 0.2
"""Fraction of check-set answers that must change when the model is given another scene's aux."""
READING_STAGE = "step2_blank"
"""The part of step 2 whose loss must leave its plateau: the sign questions about blanked images, which only
the OCR aux answers (its check: `check_reading`)."""
READING_WINDOW = 50
"""Steps a window of that part's loss curve (moai/train/curves.py)."""


class CheckFailed(RuntimeError):
    """A stage did not learn what the next one needs; the message has the measurements."""


@dataclass
class RecipeOptions:
    """Sizes of one recipe run (the defaults make the bundled model)."""

    out: Path
    """Run directory: world/, check/, cache/, base/, base2/, step1/, step2/, recipe.json."""
    scenes: int = 6000
    """Training scenes (about 5.4 questions each)."""
    check_scenes: int = 150
    """Scenes of the check set."""
    steps: dict[str, int] = field(default_factory=dict)
    """Override the optimizer steps of a stage (``{"base": 10}``, ``tower`` too); the configs' values otherwise."""
    batch_size: int | None = None
    """Override every stage's batch size (the tower's too)."""
    checks: bool = True
    """Stop when a check fails (off: report and go on)."""
    overrides: dict[str, list[str]] = field(default_factory=dict)
    """Further ``KEY=VALUE`` config overrides of a training stage (``{"step2": ["lr=3e-3"]}``), applied after
    the run's paths and sizes: experiments on the recipe; the shipped model uses none."""
    processes: int = 1
    """Data-parallel processes of each ``moai train`` stage (moai/recipes/launch.py; the batch is split over
    them, the model the same up to float rounding); the command line's default is two on a CPU machine. The
    perception cache stays one process: onnxruntime's OCR already uses every core (two processes were no faster
    on 400 images here)."""
    phrases: bool = False
    """Make each colour-kind object name one token (``shapes_tokenizer(phrases=True)``), in the questions
    and the aux text: an experiment (docs/shapesworld.md, "One token an object"); the shipped model does not."""


def majority_answers(questions: Sequence[dict]) -> dict[str, str]:
    """The most common answer of each template in ``questions`` (the baseline a model that ignores the
    image and the aux reaches)."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for q in questions:
        counts[template_key(q["text"])][q["answer"]] += 1
    return {key: c.most_common(1)[0][0] for key, c in counts.items()}


def accuracy_by_category(questions: Sequence[dict], answers: Sequence[str]) -> dict[str, float]:
    """Percent right per category and ``overall``."""
    right: dict[str, list[bool]] = defaultdict(list)
    for q, a in zip(questions, answers):
        ok = is_correct(a, q["answer"])
        right[q["category"]].append(ok)
        right["overall"].append(ok)
    return {c: 100.0 * sum(v) / len(v) for c, v in right.items()}


def read_questions(world: Path) -> list[dict]:
    return [json.loads(line) for line in (world / QUESTIONS_FILE).read_text().splitlines() if line.strip()]


PER_QUESTION = ("perceptions",)
"""Keywords of `Engine.answer` that hold one entry per question (`answer_all` slices them with the batch)."""


def answer_all(
    engine,
    world: Path,
    questions: Sequence[dict],
    batch_size: int = 32,
    images: Sequence | None = None,
    **kwargs,
) -> list:
    """The engine's `Answer`s to ``questions`` (images under ``world``, or ``images``: what each question is
    asked about, e.g. a blank canvas), in order, ``batch_size`` at a time; the per-question keywords
    (``PER_QUESTION``: ``perceptions``) are sliced with the questions, the others (``drop``, list or tuple)
    go to every call."""
    images = [world / q["image"] for q in questions] if images is None else images
    out = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        extra = {k: v[start : start + batch_size] if k in PER_QUESTION else v for k, v in kwargs.items()}
        out += engine.answer(images[start : start + batch_size], [q["text"] for q in chunk], **extra)
    return out


def texts(answers: Sequence) -> list[str]:
    return [a.text for a in answers]


def check_base(engine, check: Path, train_questions: Sequence[dict], say: Callable[[str], None]) -> dict:
    """Accuracy of the base on the check set next to the majority baseline; `CheckFailed` when the base
    does not beat it on every category of ``BASE_CHECKED``."""
    questions = read_questions(check)
    majority = majority_answers(train_questions)
    baseline = accuracy_by_category(questions, [majority.get(template_key(q["text"]), "") for q in questions])
    model = accuracy_by_category(questions, texts(answer_all(engine, check, questions)))
    say(_table({"majority baseline": baseline, "base": model}))
    failed = [c for c in BASE_CHECKED if model.get(c, 0.0) <= baseline.get(c, 0.0)]
    result = {"baseline": baseline, "base": model, "failed": failed}
    if failed:
        result["message"] = f"the base does not beat the majority baseline on {', '.join(failed)}"
    return result


def check_moai(engine, check: Path, say: Callable[[str], None]) -> dict:
    """Accuracy of the MoAI model on the check set with its own aux, another scene's aux, and no aux;
    `CheckFailed` when fewer than ``MIN_SWAP_CHANGED`` of the answers change with another scene's aux."""
    questions = read_questions(check)
    images = sorted({q["image"] for q in questions})
    perceptions = dict(zip(images, engine.perceive([engine.perceiver.load(check / i) for i in images])))
    other = {img: perceptions[images[(i + 1) % len(images)]] for i, img in enumerate(images)}
    own = texts(answer_all(engine, check, questions))
    swapped = texts(answer_all(engine, check, questions, perceptions=[other[q["image"]] for q in questions]))
    no_aux = texts(answer_all(engine, check, questions, drop=MODULES))
    changed = sum(a != b for a, b in zip(own, swapped)) / len(own)
    rows = {
        "MoAI": accuracy_by_category(questions, own),
        "MoAI, another scene's aux": accuracy_by_category(questions, swapped),
        "MoAI, no aux": accuracy_by_category(questions, no_aux),
    }
    say(_table(rows))
    say(f"answers changed by another scene's aux: {100 * changed:.1f}%")
    result = {**rows, "changed_by_swapped_aux": changed, "failed": []}
    if changed < MIN_SWAP_CHANGED:
        result["failed"] = ["swap"]
        result["message"] = (
            f"only {100 * changed:.1f}% of the answers change with another scene's aux "
            f"(needs {100 * MIN_SWAP_CHANGED:.0f}%): the MoAI stage does not read the aux"
        )
    return result


def check_reading(run: Path, say: Callable[[str], None]) -> dict:
    """Whether the loss of ``run`` (the ``READING_STAGE`` part) left its plateau (`moai.train.curves`): the
    MoAI modules started reading the OCR aux. Whether they start depends on the frozen base they are trained on,
    not on the seed of the part (docs/shapesworld.md, "What starts the reading: the base"); failed when no
    window of ``READING_WINDOW`` steps falls below ``PLATEAU_BELOW`` times the median loss of the first."""
    plateau = find_plateau(read_losses(run), READING_WINDOW, PLATEAU_BELOW)
    means, level, left = plateau.means, plateau.level, plateau.left_at
    say(f"{run.name}: mean loss per {READING_WINDOW} steps " + " ".join(f"{mean:.3f}" for _, mean in means))
    result = {
        "window": READING_WINDOW,
        "means": [round(m, 4) for _, m in means],
        "level": None if level is None else round(level, 4),
        "left_plateau_at": left,
    }
    if left is not None:
        say(f"{run.name}: the loss left its plateau by step {left}")
        return {**result, "failed": []}
    first = f"{level:.3f}" if level is not None else "none logged"
    return {
        **result,
        "failed": ["plateau"],
        "message": f"{run.name}'s loss never fell below {PLATEAU_BELOW} times the median loss of its first "
        f"{READING_WINDOW} steps ({first}): the MoAI modules did not start reading the OCR aux on this base, "
        'whose training decides it (docs/shapesworld.md, "What starts the reading: the base"); a base trained '
        "again with another seed (--override base.seed=N) is the remedy to try (untested)",
    }


def _table(rows: dict[str, dict[str, float]]) -> str:
    """Accuracy rows as aligned text (the recipe's progress output)."""
    cols = COLUMNS
    width = max(len(n) for n in rows) + 2
    lines = [" " * width + "".join(f"{c:>10}" for c in cols)]
    for name, acc in rows.items():
        lines.append(f"{name:<{width}}" + "".join(f"{acc.get(c, float('nan')):>10.1f}" for c in cols))
    return "\n".join(lines)


def stage_config(stage: str, options: RecipeOptions, model: str):
    """The shipped config of ``stage`` with this run's paths (its data files are relative to the run directory)
    and size overrides."""
    overrides = [
        f"output_dir={options.out / stage}",
        f"model={model}",
        "progress=false",
    ]
    if stage not in NO_AUX_STAGES:
        overrides.append(f"perception_cache={options.out / 'cache'}")
    if stage in MOVED_ONTO:
        overrides.append(f"base_weights={options.out / MOVED_ONTO[stage] / 'final'}")
    if stage in options.steps:
        overrides.append(f"max_steps={options.steps[stage]}")
        overrides.append(f"warmup_steps={min(options.steps[stage] // 10, 50)}")
    if options.batch_size:
        overrides.append(f"batch_size={options.batch_size}")
    overrides += options.overrides.get(stage, [])
    return TrainConfig.load(CONFIGS / f"{stage}.yaml", overrides, root=options.out)


def _count_lines(path: Path) -> int:
    """Non-empty lines of a JSONL file (0 if it is missing)."""
    if not path.is_file():
        return 0
    with path.open() as f:
        return sum(1 for line in f if line.strip())


def _reused(run: Path, stage: str, report: dict, say: Callable[[str], None]) -> bool:
    """Whether ``stage`` finished in ``run`` earlier (its ``summary.json`` and ``final/config.json``); if so its
    summary goes into ``report``, marked reused."""
    if not ((run / "summary.json").is_file() and (run / "final" / "config.json").is_file()):
        return False
    say(f"[recipe] stage {stage}: already trained in {run}, reused (delete it to train again)")
    report[stage] = {"summary": json.loads((run / "summary.json").read_text()), "reused": True}
    return True


def make_tower(options: RecipeOptions, report: dict, say: Callable[[str], None]) -> Path:
    """Stage 0: the model the base stage would build from its preset, with the vision tower pretrained on the
    training world's patch labels (moai/recipes/tower.py); saved in ``out/tower/final`` (reused if there)."""
    # heavy: torch, transformers
    from ..train.build import build_model
    from ..train.vocab import shapes_tokenizer
    from .tower import TowerConfig, pretrain_tower

    run = options.out / TOWER
    final = run / "final"
    finished = (run / "summary.json").is_file() and (final / "config.json").is_file()
    if finished and _has_phrases(final) != options.phrases:  # checked before it is reused
        made, asked = ("without", "with") if options.phrases else ("with", "without")
        raise ValueError(
            f"{run}: a tower made {made} the object-name phrases, this run is {asked} them (--phrases); "
            "delete it or use another --out"
        )
    if _reused(run, TOWER, report, say):
        return final
    base = stage_config("base", options, "shapes")
    model, processor = build_model(base)
    if options.phrases:
        processor.tokenizer = shapes_tokenizer(phrases=True)
    config = TowerConfig(
        steps=options.steps.get(TOWER, TowerConfig.steps),
        batch_size=options.batch_size or TowerConfig.batch_size,
        seed=base.seed,
    ).overridden(options.overrides.get(TOWER, []))
    say(
        f"[recipe] stage {TOWER}: {config.steps} steps of batch {config.batch_size} (vision tower, patch labels)"
    )
    summary = {
        "steps": config.steps,
        **pretrain_tower(model, processor, options.out / "world", config, lambda m: say(f"  {m}")),
    }
    say(f"  tower: patch accuracy {summary['accuracy']:.1f}% (last 20 batches)")
    model.save_pretrained(final)
    processor.save_pretrained(final)
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    report[TOWER] = {"summary": summary}
    return final


def make_tower_pos(options: RecipeOptions, start: Path, report: dict, say: Callable[[str], None]) -> Path:
    """Stage 8's first part: the model ``start`` (``base2/final``) with its vision tower trained on the training
    world's patch labels once more, now with the item's centre as a third target (`TOWER_POS_SETTINGS`; the
    projector and the LLM untouched); saved in ``out/tower_pos/final`` (reused if there). A tower trained on
    changes its features less than one made anew, so step 2's modules still read the aux once moved onto the base
    trained on it (docs/shapesworld.md, "The position tower under the referent target")."""
    # heavy: torch, transformers
    from ..model.modeling import MoAIForConditionalGeneration
    from ..model.processing import MoAIProcessor
    from .tower import TowerConfig, pretrain_tower

    run = options.out / TOWER_POS
    final = run / "final"
    if _reused(run, TOWER_POS, report, say):
        return final
    model, processor = (
        MoAIForConditionalGeneration.from_pretrained(start),
        MoAIProcessor.from_pretrained(start),
    )
    config = TowerConfig(
        steps=options.steps.get(TOWER_POS, TowerConfig.steps),
        batch_size=options.batch_size or TowerConfig.batch_size,
    ).overridden([*TOWER_POS_SETTINGS, *options.overrides.get(TOWER_POS, [])])
    say(
        f"[recipe] stage {TOWER_POS}: {config.steps} steps of batch {config.batch_size} (the vision tower of {start}, "
        "patch labels and centres)"
    )
    summary = {
        "steps": config.steps,
        **pretrain_tower(model, processor, options.out / "world", config, lambda m: say(f"  {m}")),
    }
    say(
        f"  tower: patch accuracy {summary['accuracy']:.1f}%, centre error {summary['position_error_px']:.1f} px "
        "(last 20 batches)"
    )
    model.save_pretrained(final)
    processor.save_pretrained(final)
    (run / "summary.json").write_text(json.dumps(summary, indent=1))
    report[TOWER_POS] = {"summary": summary}
    return final


def _has_phrases(model_dir: Path) -> bool:
    """Whether the tokenizer saved in ``model_dir`` makes a colour-kind name one token (`RecipeOptions.phrases`)."""
    # heavy: transformers
    from transformers import AutoTokenizer

    from ..train.vocab import shapes_phrases

    name = shapes_phrases()[0]
    return len(AutoTokenizer.from_pretrained(model_dir).tokenize(name)) == 1


def run_recipe(options: RecipeOptions, say: Callable[[str], None] = print) -> dict:
    """Make the ShapesWorld model in ``options.out``; returns (and writes to recipe.json) the measurements."""
    # heavy: torch, transformers
    from ..engine import Engine
    from ..train.plot import plot_run

    out = options.out
    for stage in STAGES:  # a batch that does not split over the processes fails now, not hours in
        rank_config(stage_config(stage, options, "shapes"), options.processes)
    out.mkdir(parents=True, exist_ok=True)
    earlier = json.loads((out / "recipe.json").read_text()) if (out / "recipe.json").is_file() else {}
    report: dict = {"options": {**asdict(options), "out": str(out)}, "seconds": {}}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        report["seconds"][name] = round(now - clock, 1)
        say(f"[recipe] {name} done in {now - clock:.0f} s")
        clock = now

    for name, seed, n in (("world", TRAIN_SEED, options.scenes), ("check", CHECK_SEED, options.check_scenes)):
        scenes = out / name / SCENES_FILE
        have = _count_lines(scenes)
        if not (out / name / QUESTIONS_FILE).is_file() or have != n:
            if scenes.is_file():  # an earlier run's world of another size: made again, never reused silently
                say(f"[recipe] {name}: {have} scenes in {out / name}, {n} asked: made again")
            shutil.rmtree(out / name, ignore_errors=True)
            write_world(out / name, n, seed)
    if not (out / "world" / SIGNS_FILE).is_file():
        counts = write_sign_file(out / "world", out / "world" / SIGNS_FILE, **SIGN_QUESTIONS)
        say(
            f"[recipe] sign questions: {counts['yes']} yes, {counts['no']} no in {out / 'world' / SIGNS_FILE}"
        )
    if not (out / "world" / SIGN_WORDS_FILE).is_file():
        counts = write_sign_file(out / "world", out / "world" / SIGN_WORDS_FILE, **SIGN_WORDS)
        say(f"[recipe] sign-word questions: {counts['sign word']} in {out / 'world' / SIGN_WORDS_FILE}")
    if not (out / "world" / POSITIONS2_FILE).is_file():
        counts = write_position_file(world_position_records(out / "world"), out / "world" / POSITIONS2_FILE)
        say(
            f"[recipe] two-shape position questions: {counts['yes']} yes, {counts['no']} no in "
            f"{out / 'world' / POSITIONS2_FILE}"
        )
    lap("worlds")
    say(f"[recipe] perception of {options.scenes} training scenes (preset shapesworld)")
    summary = precompute(
        out / "world" / TRAIN_FILE, out / "cache", PerceptionConfig.from_preset("shapesworld"), progress=False
    )
    say(f"[recipe] {summary.line()}")
    lap("perception")

    model = str(make_tower(options, report, say))
    lap("tower")
    for stage in STAGES:
        if STARTS.get(stage) == TOWER_POS:
            make_tower_pos(options, out / BASE_STAGES[-1] / "final", report, say)
            lap(TOWER_POS)
        if stage in STARTS:
            model = str(out / STARTS[stage] / "final")
        config = stage_config(stage, options, model)
        run = Path(config.output_dir)
        if not _reused(run, stage, report, say):
            say(
                f"[recipe] stage {stage}: {config.max_steps} steps of batch {config.batch_size} ({config.trainable})"
            )
            report[stage] = {"summary": train_stage(config, options.processes, lambda m: say(f"  {m}"))}
            plot_run(run)
        model = str(run / "final")
        lap(stage)
        if stage in (BASE_STAGES[-1], MOVE_STAGES[0]):
            result = check_base(Engine.load(model), out / "check", read_questions(out / "world"), say)
        elif (
            stage == READING_STAGE
            and not (run / "metrics.jsonl").is_file()
            and "check" in earlier.get(stage, {})
        ):
            # a stage kept without its loss curve (only its model and summary): the check made when it trained
            result = earlier[stage]["check"]
            say(f"[recipe] {stage}: no loss curve in {run}; its check as recorded in {out / 'recipe.json'}")
        elif stage == READING_STAGE:
            result = check_reading(run, say)
        elif stage == STAGES[-1]:
            result = check_moai(Engine.load(model), out / "check", say)
        else:
            continue
        report[stage]["check"] = result
        lap(f"{stage} check")
        _write(out, report)
        if result["failed"]:
            say(f"[recipe] check failed: {result['message']}")
            if options.checks:
                raise CheckFailed(result["message"])
    report["model"] = model
    _write(out, report)
    return report


def _write(out: Path, report: dict) -> None:
    (out / "recipe.json").write_text(json.dumps(report, indent=2, default=str) + "\n")


MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "processor_config.json",
    "aux_config.json",
)
"""What a trained model directory holds (the files that exist are copied)."""


def install(report: dict, dest: Path) -> Path:
    """Copy the recipe's final model to ``dest`` with a model card (README.md) made from ``report``."""
    source = Path(report["model"])
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (source / name).is_file():
            shutil.copy2(source / name, dest / name)
    (dest / "README.md").write_text(model_card(report))
    (dest / "recipe.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    return dest


def model_card(report: dict) -> str:
    """The bundled model's card: how it was made, its check-set scores, its limits."""
    opts = report["options"]
    steps = {s: report[s]["summary"]["steps"] for s in RECIPE_STAGES if s in report}
    train_minutes = sum(report[s]["summary"]["seconds"] for s in RECIPE_STAGES if s in report) / 60
    checks = [
        f"- {stage}: {report[stage]['check']['message']}"
        if report[stage]["check"]["failed"]
        else f"- {stage}: passed"
        for stage in (BASE_STAGES[-1], READING_STAGE, *MOVE_STAGES)
        if "check" in report.get(stage, {})
    ]

    reused = [s for s in RECIPE_STAGES if report.get(s, {}).get("reused")]

    moai = TrainConfig.load(CONFIGS / "step1.yaml")  # the MoAI modules' settings (step 2 keeps them)
    base_slot = TrainConfig.load(CONFIGS / f"{BASE_STAGES[-1]}.yaml").image_slot
    layers = ", ".join(str(i) for i in moai.mixer_layers or [])
    lines = [
        "# moai-tiny-shapes",
        "",
        "A small MoAI (arXiv 2403.07508) trained on ShapesWorld (docs/shapesworld.md) on a 2-core CPU: the default",
        "model of `moai demo`, `moai predict` and every inference command of this repository.",
        "",
        "## How it was made",
        "",
        f"`make shapesworld-model` (moai/recipes/shapesworld.py); the training stages took {train_minutes:.0f} minutes",
        "on the 2-core machine that made it:",
        f"{opts['scenes']} training scenes (world seed {TRAIN_SEED}), perception preset `shapesworld`, {moai.verbalizer} verbalizer,",
        "a vision tower pretrained on them, then `moai train` stages with the configs in",
        "moai/train/configs/shapesworld/ (the image of every training prompt placed as `image_slot:"
        f" {base_slot}` in the base, `{moai.image_slot}` in the MoAI stages; inference puts it in the chat"
        " template's slot):",
        "",
        f"0. vision tower ({steps.get(TOWER)} steps, moai/recipes/tower.py): the kind (circle / square / triangle /",
        "   sign) and colour of the item under each patch centre, from the ground truth the world writes for training; what a",
        "   pretrained CLIP is to MoAI-7B;",
        f"1. base ({' + '.join(str(steps.get(s)) for s in BASE_STAGES)} steps): projector and LLM trained on the"
        " frozen tower, no aux, in two runs (base.yaml, then base2.yaml restarting its schedule from the first run's"
        " model);",
        f"2. MoAI step 1 ({steps.get('step1')} steps): mixers added in layers {layers} of the frozen base, one random",
        f"   expert per stream, compressor and experts trained (init `{moai.moai_init}`, compressor query scale",
        f"   {moai.compressor_query_scale:g}, compressor passthrough {moai.compressor_passthrough}, expert query/key",
        f"   init `{moai.expert_qk_init}`);",
        f"3. MoAI step 2 ({' + '.join(str(steps.get(s)) for s in MOAI_STAGES[1:])} steps): gated mixing, compressor,",
        "   experts and gates trained, in four parts: the word-present questions of world/signs.json",
        "   (moai/worlds/signs.py: is the word WORD written in the image?, absent words of the sign word's length)",
        "   with the images blanked and the OCR text alone (step2_blank.yaml); the sign-word question of",
        "   world/sign-words.json (what word is written on the sign?) the same way, its letters through the mixer",
        "   (`causal` scope from here on; step2_words.yaml); both with the images shown, half with the OCR text alone",
        "   and half with the whole aux (step2_shown.yaml); the world's questions, one question a sample, with both",
        "   sign files beside them (step2.yaml);",
        f"4. base2's vision tower trained on ({steps.get(TOWER_POS)} steps) with the item's centre as a third target;",
        f"   then the base trained on ({steps.get('base_pos')} steps, base_pos.yaml) from that model, with every position",
        "   question of the world's two-shape scenes beside the world's conversations and the referent target (the",
        "   LLM says where the shape it names is; the MoAI stages do not start",
        f"   reading on such a base, so they train on base2); then step 2's last part again ({steps.get('step2_pos')} steps,",
        "   step2_pos.yaml) with step 2's MoAI modules moved onto that base, frozen (`base_weights`).",
        "",
    ]
    if reused:
        lines += [
            f"This run reused the stages {', '.join(reused)} of an earlier run of the same configs (a rerun keeps a",
            "finished stage); the minutes above include their training time in that run.",
            "",
        ]
    lines += [
        "## Scores",
        "",
        f"Check set ({opts['check_scenes']} scenes, world seed {CHECK_SEED}, never trained on), accuracy in %:",
        "",
    ]
    rows = {}
    labels = {BASE_STAGES[-1]: "base (no aux)", MOVE_STAGES[0]: "base trained on (no aux; the model's base)"}
    for stage, label in labels.items():
        check = report.get(stage, {}).get("check")
        if check is not None:
            rows.setdefault("majority baseline", check["baseline"])
            rows[label] = check["base"]
    if "check" in report.get(STAGES[-1], {}):
        check = report[STAGES[-1]]["check"]
        for name in ("MoAI", "MoAI, another scene's aux", "MoAI, no aux"):
            rows[name] = check[name]
    lines += markdown_table(rows).splitlines()
    lines += [
        "",
        "The held-out ablation (2,000+ questions, another seed) is in docs/shapesworld.md.",
        "",
        "Checks between the stages (the recipe's gates; this model was made with `--no-checks`, so it is shipped",
        "with the failures below, measured and stated, not hidden):",
        "",
        *checks,
        "",
        "## Limits",
        "",
        "- It knows ShapesWorld only: circles, squares, triangles in four colours, and signs, on a 224 x 224 canvas.",
        "  A photo or a question outside the templates gets an answer, but a guess.",
        "- Its perception preset `shapesworld` is classic image processing tuned to the world's flat colours and",
        "  the real PP-OCRv4 models for the signs; on resized or photographed scenes it is not measured.",
        "- The vocabulary is word-level (moai/train/vocab.py): words outside it are spelled letter by letter.",
        "",
    ]
    return "\n".join(lines)


def markdown_table(rows: dict[str, dict[str, float]], label: str = "model") -> str:
    """Accuracy rows (percent per category and overall) as a Markdown table whose first column is ``label``."""
    lines = [f"| {label} | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for name, acc in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{acc.get(c, float('nan')):.1f}" for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    import argparse
    import sys

    parser = argparse.ArgumentParser(
        prog="python -m moai.recipes.shapesworld", description="make the bundled ShapesWorld model"
    )
    parser.add_argument("--out", default="runs/shapesworld", help="run directory (default: %(default)s)")
    parser.add_argument("--scenes", type=int, default=6000, help="training scenes (default: %(default)s)")
    parser.add_argument(
        "--no-checks", dest="checks", action="store_false", help="report failed checks, go on"
    )
    parser.add_argument("--install", metavar="DIR", help="copy the model and its card to DIR (default: none)")
    parser.add_argument(
        "--install-only",
        action="store_true",
        help="install the model of an earlier run of --out, train nothing",
    )
    parser.add_argument(
        "--check-model",
        metavar="MODEL",
        help="train nothing: score a saved MoAI model on the check set of --out with its own, another scene's "
        "and no aux, as step 2's check does (default: none)",
    )
    parser.add_argument(
        "--check-base",
        metavar="MODEL",
        help="train nothing: score a saved base on the check set of --out next to the majority baseline of its "
        "world's questions, as the base's check does (default: none)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="data-parallel processes of each moai train stage, the machine's cores shared among them "
        "(default: 2 on a CPU machine with two or more cores, else 1)",
    )
    parser.add_argument(
        "--phrases",
        action="store_true",
        help="an experiment: each colour-kind object name one token (default: off, as the shipped model)",
    )
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="STAGE.KEY=VALUE",
        help=f"a config override of one training stage ({', '.join(RECIPE_STAGES)}), as moai train takes "
        "KEY=VALUE (tower, tower_pos: a field of moai.recipes.tower.TowerConfig; relative data paths: under --out); repeatable, recorded in recipe.json (default: none, the shipped recipe)",
    )
    args = parser.parse_args(argv)
    overrides: dict[str, list[str]] = {}
    for item in args.override:
        stage, dot, setting = item.partition(".")
        if not dot or stage not in RECIPE_STAGES or "=" not in setting:
            parser.error(
                f"--override {item!r}: expected STAGE.KEY=VALUE with STAGE one of {', '.join(RECIPE_STAGES)}"
            )
        overrides.setdefault(stage, []).append(setting)
    for stage, settings in overrides.items():  # a bad key or value fails now, not after the stages before it
        try:
            if stage in (TOWER, TOWER_POS):
                from .tower import TowerConfig  # heavy: torch

                TowerConfig().overridden(settings)
                continue
            TrainConfig.load(CONFIGS / f"{stage}.yaml", settings, root=Path(args.out))
        except ValueError as err:
            parser.error(f"--override {stage}: {err}")
    if args.processes is not None and args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    if args.check_model and args.check_base:
        parser.error("--check-model and --check-base: give one")
    if args.check_model or args.check_base:
        out = Path(args.out)
        for need in (
            out / "check" / QUESTIONS_FILE,
            *([out / "world" / QUESTIONS_FILE] if args.check_base else []),
        ):
            if not need.is_file():
                print(
                    f"shapesworld recipe: {args.out}: no {need.parent.name} set ({need.parent.name}/{need.name})",
                    file=sys.stderr,
                )
                return 2
        from ..engine import Engine  # heavy: torch, transformers

        try:
            engine = Engine.load(args.check_model or args.check_base)
        except (FileNotFoundError, ValueError) as err:
            print(f"shapesworld recipe: {err}", file=sys.stderr)
            return 2
        say = lambda m: print(m, flush=True)  # noqa: E731
        if args.check_model:
            check_moai(engine, out / "check", say=say)
        else:
            check_base(engine, out / "check", read_questions(out / "world"), say=say)
        return 0
    if args.install_only:
        if not args.install:
            parser.error("--install-only needs --install DIR")
        report = json.loads((Path(args.out) / "recipe.json").read_text())
        print(f"[recipe] installed {install(report, Path(args.install))}")
        return 0
    options = RecipeOptions(
        out=Path(args.out).resolve(),
        scenes=args.scenes,
        checks=args.checks,
        overrides=overrides,
        phrases=args.phrases,
        processes=args.processes or default_processes(),
    )
    try:
        report = run_recipe(options, say=lambda m: print(m, flush=True))
    except CheckFailed as err:
        print(f"shapesworld recipe: check failed: {err}", file=sys.stderr)
        return 1
    except ValueError as err:  # a run directory that does not fit the options: one line, no traceback
        print(f"shapesworld recipe: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a stage on several processes failed; its own output said why
        print(f"shapesworld recipe: {err}", file=sys.stderr)
        return 1
    print(f"[recipe] model in {report['model']}")
    if args.install:
        print(f"[recipe] installed {install(report, Path(args.install))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
