"""Can new MoAI modules on a frozen base learn to read one thing from the aux text? A controlled probe.

    python bench/aux_match_probe.py --task existence [--steps 300] [--override KEY=VALUE ...]

No perception and no pixels: every question is asked about one blank canvas, and the aux text is written here
in the `compact` verbalizer's layout from a random list of 2-5 objects and a random sign word
(``objects: red circle, blue square. text: QXZ.``), so that the aux is the only source of the answer and the
answer is always in it. MoAI modules are created on the base as ShapesWorld's step 1 creates them
(`moai/train/configs/shapesworld/step1.yaml`, ``--override`` changes its keys: `compressor_passthrough`,
`expert_qk_init`, `mixer_residual`, ...), trained in gated mode (step 2) with AdamW at a constant learning rate
after a short warm-up, on fresh samples every step, and scored every ``--every`` steps on 200 held-out samples
of each task (teacher-forced: the first answer token's argmax; ``word``, ``wordtext``: every answer token's).

Tasks (``--task``, comma-separated for a mixture):

* ``copy``: one object, "What color is the circle?" (the answer is the aux's only colour: no matching);
* ``list``: "What objects are there?", answered by the aux's object list (no matching, many tokens);
* ``cexist``: "Is there a {colour} object in the image?" (is this word among the aux words?);
* ``existence``: "Is there a {colour} {kind} in the image?" (is this pair among the aux objects?);
* ``colour``: "What color is the {kind}?" (the kind is unique: which colour goes with it?);
* ``count``: "How many {colour} objects are there?";
* ``ocr``: "Is the word {WORD} written in the image?" (the aux's word or another of its length);
* ``ocrrel``: the same with every relation between the objects (random centres) before the word, as long as
  the recipe's aux, whose relations come before its text;
* ``word``: "What word is written on the sign?", answered by the aux's sign word, letter by letter (a copy of
  several tokens: scored on every answer token, not the first alone);
* ``wordtext``: the same with the OCR text alone in the aux (``text: QXZ.``), as the recipe's `step2_blank` gives it;
* ``position``: "Is the {colour} {kind} to the left of / above the {colour} {kind}?" about 2-5 objects of
  distinct colour-kind pairs at random centres, the aux holding every relation as the `compact-all`
  verbalizer writes them (both directions of every pair on each axis whose centres are at least 8 px apart:
  ``relations: red circle is left of blue square, blue square is right of red circle, ...``), so the answer
  is always there to be found;
* ``relword``: the same question with only the asked relation in the aux, its subject first (``relations:
  red circle is right of blue square.``): the answer is the relation's predicate word, nothing to search;
* ``xy``: the same question with no relation in the aux but every object's centre in percent of the canvas
  (``objects: red circle 34 12, blue square 70 45.``): find two numbers and compare them.

``--word-pool N`` draws the training samples' sign words from a fixed pool of N words, as a training file
repeats its scenes' words (the recipe's sign file: 2,411); the held-out words stay fresh.

``--canvas mean`` asks about a canvas of the image normaliser's mean colour (pixel values zero, as
`moai train`'s ``blank_images`` blanks a training image) instead of the light grey one.

``--in-prompt`` takes the MoAI modules away: the base's own projector and LLM are trained (every weight, as
`bench/aux_probe.py --aux-in-prompt`), the aux text written into the prompt before the question. Can the LLM
read it from its own context, given unlimited fresh samples?

Prints the running training loss and the held-out accuracy per task (docs/shapesworld.md, "Matching a word in
the aux").
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import PretrainedConfig  # noqa: E402

from moai.model.modeling import MoAIForConditionalGeneration  # noqa: E402
from moai.train.build import build_model  # noqa: E402
from moai.train.config import TrainConfig  # noqa: E402
from moai.worlds.shapes import CANVAS, COLOURS, KINDS, POSITION_MIN_OFFSET  # noqa: E402

STEP1 = ROOT / "moai/train/configs/shapesworld/step1.yaml"
BASE = ROOT / "moai/train/configs/shapesworld/base.yaml"
TASKS = (
    "copy",
    "list",
    "cexist",
    "existence",
    "colour",
    "count",
    "ocr",
    "ocrrel",
    "word",
    "wordtext",
    "position",
    "relword",
    "xy",
)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
WORD_TASKS = ("word", "wordtext")
"""The tasks whose answer is the sign word: scored on every answer token, not the first alone."""
HELD_OUT = 200
OBJECTS = (2, 5)
"""Objects a sample describes, the fewest and the most (the held-out samples always; training unless
``--objects``)."""


def aux_text(objects: list[tuple[str, str]], word: str) -> str:
    return "objects: " + ", ".join(f"{c} {k}" for c, k in objects) + f". text: {word}."


def relation_text(objects: list[tuple[str, str]], centres: list[tuple[int, int]]) -> str:
    """Every relation between the objects, both directions, on each axis where the centres are at least
    `POSITION_MIN_OFFSET` apart (the `compact-all` layout)."""
    out = []
    for i, (a, (ax, ay)) in enumerate(zip(objects, centres)):
        for j, (b, (bx, by)) in enumerate(zip(objects, centres)):
            if i == j:
                continue
            if abs(ax - bx) >= POSITION_MIN_OFFSET:
                out.append(f"{a[0]} {a[1]} is {'left' if ax < bx else 'right'} of {b[0]} {b[1]}")
            if abs(ay - by) >= POSITION_MIN_OFFSET:
                out.append(f"{a[0]} {a[1]} is {'above' if ay < by else 'below'} {b[0]} {b[1]}")
    return ", ".join(out)


def centre_text(objects: list[tuple[str, str]], centres: list[tuple[int, int]]) -> str:
    """The objects with their centres in percent of the canvas (``red circle 34 12``: x, then y; the
    vocabulary's two-digit tokens)."""
    return ", ".join(
        f"{c} {k} {100 * x // CANVAS:02d} {100 * y // CANVAS:02d}" for (c, k), (x, y) in zip(objects, centres)
    )


def position_sample(
    rng: random.Random,
    word: str,
    asked_only: bool = False,
    centres_only: bool = False,
    objects_range: tuple[int, int] = OBJECTS,
) -> tuple[str, str, str]:
    """A position question about 2-5 objects (``objects_range``) of distinct colour-kind pairs, every
    relation in the aux (or, ``asked_only``, the asked pair's relation alone, its subject first: the answer is
    its predicate word; or, ``centres_only``, no relation but every object's centre, `centre_text`)."""
    pairs = [(c, k) for c in COLOURS for k in KINDS]
    while True:
        objects = rng.sample(pairs, rng.randint(*objects_range))
        centres = [(rng.randrange(CANVAS), rng.randrange(CANVAS)) for _ in objects]
        asked = [
            (i, j, axis)
            for i in range(len(objects))
            for j in range(len(objects))
            for axis in (0, 1)
            if i != j and abs(centres[i][axis] - centres[j][axis]) >= POSITION_MIN_OFFSET
        ]
        if asked:
            break
    i, j, axis = rng.choice(asked)
    (ca, ka), (cb, kb) = objects[i], objects[j]
    where = "to the left of" if axis == 0 else "above"
    before = centres[i][axis] < centres[j][axis]
    if centres_only:
        aux = f"objects: {centre_text(objects, centres)}. text: {word}"
    else:
        predicate = ("left of" if before else "right of") if axis == 0 else ("above" if before else "below")
        relations = f"{ca} {ka} is {predicate} {cb} {kb}" if asked_only else relation_text(objects, centres)
        aux = aux_text(objects, word).removesuffix(".").replace(". text:", f". relations: {relations}. text:")
    return aux + ".", f"Is the {ca} {ka} {where} the {cb} {kb}?", "yes" if before else "no"


def sample(
    rng: random.Random,
    task: str,
    objects_range: tuple[int, int] = OBJECTS,
    words: Sequence[str] | None = None,
) -> tuple[str, str, str]:
    """(aux text, question, answer) of one random scene description of 2-5 objects (``objects_range``); its
    sign word from ``words`` when given (``--word-pool``), else a fresh random one."""
    colours, kinds = list(COLOURS), list(KINDS)
    objects = [(rng.choice(colours), rng.choice(kinds)) for _ in range(rng.randint(*objects_range))]
    word = "".join(rng.choice(LETTERS) for _ in range(rng.randint(3, 6)))
    if words:  # drawn after the fresh one, as the measured --word-pool runs drew it (docs/shapesworld.md)
        word = rng.choice(words)
    if task == "copy":
        colour = rng.choice(colours)
        return aux_text([(colour, "circle")], word), "What color is the circle?", colour
    if task == "list":
        return aux_text(objects, word), "What objects are there?", ", ".join(f"{c} {k}" for c, k in objects)
    if task == "cexist":
        present = sorted({c for c, _ in objects})
        absent = [c for c in colours if c not in present]
        colour = rng.choice(present) if rng.random() < 0.5 or not absent else rng.choice(absent)
        answer = "yes" if colour in present else "no"
        return aux_text(objects, word), f"Is there a {colour} object in the image?", answer
    if task == "existence":
        if rng.random() < 0.5:
            colour, kind = rng.choice(objects)
        else:
            colour, kind = rng.choice([(c, k) for c in colours for k in kinds if (c, k) not in objects])
        answer = "yes" if (colour, kind) in objects else "no"
        return aux_text(objects, word), f"Is there a {colour} {kind} in the image?", answer
    if task == "colour":
        colour, kind = rng.choice(objects)
        objects = [(colour, kind)] + [o for o in objects if o[1] != kind]  # the kind is unique
        rng.shuffle(objects)
        return aux_text(objects, word), f"What color is the {kind}?", colour
    if task == "count":
        colour = rng.choice(colours)
        answer = str(sum(c == colour for c, _ in objects))
        return aux_text(objects, word), f"How many {colour} objects are there?", answer
    if task in ("ocr", "ocrrel"):
        asked = word
        if rng.random() >= 0.5:  # another word of the same length
            while asked == word:
                asked = "".join(rng.choice(LETTERS) for _ in range(len(word)))
        answer = "yes" if asked == word else "no"
        aux = aux_text(objects, word)
        if task == "ocrrel":  # every relation between the objects before the word, as the recipe's aux has
            centres = [(rng.randrange(CANVAS), rng.randrange(CANVAS)) for _ in objects]
            if relations := relation_text(objects, centres):
                aux = aux.replace(". text:", f". relations: {relations}. text:")
        return aux, f"Is the word {asked} written in the image?", answer
    if task in WORD_TASKS:
        aux = aux_text(objects, word) if task == "word" else f"text: {word}."
        return aux, "What word is written on the sign?", word
    if task in ("position", "relword", "xy"):
        return position_sample(
            rng, word, asked_only=task == "relword", centres_only=task == "xy", objects_range=objects_range
        )
    raise ValueError(f"task {task!r}: must be one of {', '.join(TASKS)}")


def int_pair(text: str) -> tuple[int, int]:
    """``A:B`` as two integers (``--fresh-llm``, ``--objects``; `bench/recall_probe.py --pairs`); ValueError
    unless it is exactly two."""
    a, b = (int(v) for v in text.split(":"))
    return a, b


def resize_llm(text: PretrainedConfig, width: int, layers: int) -> None:
    """Make the LLM config ``text`` ``width`` wide (heads of 32, MLP three times the width) and ``layers``
    deep, in place."""
    text.hidden_size, text.intermediate_size, text.num_hidden_layers = width, 3 * width, layers
    text.num_attention_heads = text.num_key_value_heads = width // 32
    text.head_dim = 32


def save_fresh_model(width: int, layers: int, seed: int, out: Path, weights: Path | None = None) -> Path:
    """The ``shapes`` preset with its LLM ``width`` wide (heads of 32, MLP three times the width) and ``layers``
    deep, every weight random (seeded) or loaded from ``weights`` (a state dict of the same model, as
    `bench/recall_probe.py --model moai --save` writes), saved with its processor to ``out``."""
    base, processor = build_model(TrainConfig.load(BASE, overrides=["model=shapes", f"seed={seed}"]))
    config = base.config
    resize_llm(config.text_config, width, layers)
    torch.manual_seed(seed)
    model = MoAIForConditionalGeneration(config)
    if weights is not None:  # every weight of this model from the file; its MoAI modules, if any, left out
        loaded = torch.load(weights, weights_only=True)
        model.load_state_dict({k: v for k, v in loaded.items() if k in model.state_dict()})
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--task", default="existence", help="task or comma-separated tasks (default existence)"
    )
    parser.add_argument("--steps", type=int, default=300, help="training steps (default 300)")
    parser.add_argument("--every", type=int, default=100, help="score every N steps (default 100)")
    parser.add_argument("--batch-size", type=int, default=32, help="samples a step (default 32)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate after warm-up (default 1e-3)")
    parser.add_argument(
        "--model", default="runs/shapesworld/base2/final", help="the frozen base (default: the recipe's)"
    )
    parser.add_argument(
        "--override", action="append", default=[], help="KEY=VALUE on step1.yaml (repeatable; default none)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling and init seed (default 0)")
    parser.add_argument(
        "--in-prompt",
        action="store_true",
        help="no MoAI modules: train the base's projector and LLM with the aux text in the prompt (default: off)",
    )
    parser.add_argument(
        "--fresh-llm",
        metavar="WIDTH:LAYERS",
        help="with --in-prompt: start from a random model whose LLM is WIDTH wide and LAYERS deep instead of "
        "--model (default: off)",
    )
    parser.add_argument(
        "--objects",
        default="2:5",
        help="objects a training sample describes, MIN:MAX, e.g. 2:2 for the first stage of a curriculum; "
        "held-out samples keep 2-5 (default 2:5)",
    )
    parser.add_argument(
        "--canvas",
        choices=("grey", "mean"),
        default="grey",
        help="the blank image every question is about: light grey, or the normaliser's mean colour (pixel "
        "values zero, as blank_images trains) (default grey)",
    )
    parser.add_argument(
        "--word-pool",
        type=int,
        default=0,
        help="training sign words drawn from a fixed pool of N random words, as a training file repeats its "
        "scenes' words; the held-out words stay fresh (default 0: a fresh word every sample)",
    )
    parser.add_argument(
        "--held-out-objects",
        default="2:5",
        help="objects a held-out sample describes, MIN:MAX, e.g. 2:2 to score the first stage of a curriculum "
        "on its own kind of sample (default 2:5)",
    )
    parser.add_argument(
        "--save",
        type=Path,
        help="with --in-prompt: write the trained model here, a --model for the next stage (default: nothing)",
    )
    parser.add_argument(
        "--llm-weights",
        type=Path,
        help="with --fresh-llm: its weights from this file instead of random, e.g. an LLM trained on "
        "associative recall by `bench/recall_probe.py --save` (default: random)",
    )
    args = parser.parse_args(argv)
    ranges = {}
    for flag, text in (("--objects", args.objects), ("--held-out-objects", args.held_out_objects)):
        try:
            ranges[flag] = int_pair(text)
        except ValueError:
            ranges[flag] = (0, 0)  # refused just below
        if not 1 <= ranges[flag][0] <= ranges[flag][1] <= 6:
            parser.error(f"{flag} {text!r}: expected MIN:MAX with 1 <= MIN <= MAX <= 6, e.g. 2:2")
        if ranges[flag][0] < 2 and {"position", "relword", "xy"} & set(args.task.split(",")):
            parser.error(f"{flag} {text}: a position question needs two objects at least")
    objects_range, held_out_range = ranges["--objects"], ranges["--held-out-objects"]
    if args.save and not args.in_prompt:
        parser.error("--save needs --in-prompt (new MoAI modules are not continued from a saved model)")
    if args.llm_weights and not args.fresh_llm:
        parser.error("--llm-weights needs --fresh-llm WIDTH:LAYERS (the model the weights belong to)")
    if args.fresh_llm:
        if not args.in_prompt:
            parser.error("--fresh-llm needs --in-prompt (new MoAI modules need a trained base)")
        try:
            width, layers = int_pair(args.fresh_llm)
        except ValueError:
            parser.error(f"--fresh-llm {args.fresh_llm!r}: expected WIDTH:LAYERS, e.g. 256:6")
        if width < 32 or width % 32 or layers < 1:
            parser.error(f"--fresh-llm {args.fresh_llm!r}: WIDTH a multiple of 32, LAYERS >= 1")
        scratch = tempfile.TemporaryDirectory()  # removed when the process ends
        if args.llm_weights and not args.llm_weights.is_file():
            parser.error(
                f"--llm-weights {args.llm_weights}: no such file (write one with bench/recall_probe.py --save)"
            )
        try:
            args.model = str(save_fresh_model(width, layers, args.seed, Path(scratch.name), args.llm_weights))
        except RuntimeError as error:
            parser.error(
                f"--llm-weights {args.llm_weights}: not a {args.fresh_llm} model ({str(error).splitlines()[0]})"
            )
    tasks = args.task.split(",")
    if args.word_pool < 0:
        parser.error(f"--word-pool {args.word_pool}: must be >= 0")
    pool_rng = random.Random(f"pool-{args.seed}")  # apart from the training and held-out streams
    pool = [
        "".join(pool_rng.choice(LETTERS) for _ in range(pool_rng.randint(3, 6)))
        for _ in range(args.word_pool)
    ]
    for task in tasks:
        if task not in TASKS:
            parser.error(f"--task {task!r}: must be one of {', '.join(TASKS)}")
    if not (Path(args.model) / "config.json").is_file():
        parser.error(f"--model {args.model}: not a saved model (run `make shapesworld-model` first)")

    torch.manual_seed(args.seed)
    stage = BASE if args.in_prompt else STEP1  # the base's own weights, or new MoAI modules on them
    # new modules as this probe measured them (step1.yaml's before it took passthrough and tied experts)
    pinned = [] if args.in_prompt else ["compressor_passthrough=null", "expert_qk_init=independent"]
    config = TrainConfig.load(
        stage, overrides=[f"model={args.model}", f"seed={args.seed}", *pinned, *args.override]
    )
    model, processor = build_model(config)
    if not args.in_prompt:
        model.set_mixer(mode="gated")
    trainable = model.set_trainable("projector+llm" if args.in_prompt else "moai")
    what = ", aux in the prompt" if args.in_prompt else " + new MoAI modules"
    print(f"{args.model}{what} ({trainable:,} trainable), overrides: {args.override or 'none'}")

    size = processor.image_size
    colour = (235, 235, 235) if args.canvas == "grey" else tuple(round(255 * m) for m in processor.image_mean)
    canvas, black = Image.new("RGB", (size, size), colour), Image.new("RGB", (size, size))

    def batch(items: list[tuple[str, str, str]]) -> dict[str, torch.Tensor]:
        if args.in_prompt:
            rows = [processor.encode_turns(((f"<image>\n{x} {q}", a),)) for x, q, a in items]
            return dict(processor.build_batch(rows, [canvas] * len(items)))
        rows = [processor.encode_turns(((f"<image>\n{q}", a),)) for _, q, a in items]
        aux = [a for a, _, _ in items]
        maps = [black] * len(items) if model.config.use_aux_map else None
        return dict(processor.build_batch(rows, [canvas] * len(items), aux_text=aux, aux_images=maps))

    held_out = {
        t: [sample(random.Random(10_000 + i), t, held_out_range) for i in range(HELD_OUT)] for t in tasks
    }

    @torch.no_grad()
    def accuracy(task: str) -> str:
        """Held-out accuracy in %; for a word task also the share of its answer tokens right (``98.0/99.5``)."""
        model.eval()
        correct, tokens, right = 0, 0, 0
        for start in range(0, HELD_OUT, 50):
            inputs = batch(held_out[task][start : start + 50])
            labels = inputs.pop("labels")
            logits = model(**inputs).logits
            for row in range(labels.shape[0]):
                answer = (labels[row] != -100).nonzero()[:, 0]  # the answer's token positions
                if task not in WORD_TASKS:
                    answer = answer[:1]  # the first token decides a one-word answer
                hits = logits[row, answer - 1].argmax(-1) == labels[row, answer]
                correct += int(hits.all())
                tokens, right = tokens + len(answer), right + int(hits.sum())
        model.train()
        if task in WORD_TASKS:
            return f"{100 * correct / HELD_OUT:.1f}/{100 * right / tokens:.1f}"
        return f"{100 * correct / HELD_OUT:.1f}"

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    rng = random.Random(args.seed)
    print("  step   loss  " + "  ".join(f"{t:>9}" for t in tasks))
    print(f"{0:6d}      -  " + "  ".join(f"{accuracy(t):>9}" for t in tasks), flush=True)
    start, running = time.time(), None
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / 30)
        items = [sample(rng, rng.choice(tasks), objects_range, pool) for _ in range(args.batch_size)]
        loss = model(**batch(items)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % args.every == 0 or step == args.steps:
            scores = "  ".join(f"{accuracy(t):>9}" for t in tasks)
            print(f"{step:6d}  {running:.3f}  {scores}   ({time.time() - start:.0f} s)", flush=True)
    if args.save:
        model.save_pretrained(args.save)
        processor.save_pretrained(args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
