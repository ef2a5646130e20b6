"""ShapesWorld: seeded scenes of coloured shapes and word signs, and questions about them (docs/shapesworld.md).

Every number here is a rule of the world (docs/shapesworld.md, Scenes and Questions): a 224 × 224 canvas
with a light uniform background, 1-6 shapes (circle / square / triangle in red / green / blue / yellow,
sides 22-48 px), 0-2 signs (a 3-6 letter uppercase word, black on white, 2 px border, 4 px padding),
placed by rejection sampling 2 px inside the canvas and 4 px apart. Questions follow nine exact templates
in six categories; a referent "the {colour} {kind}" is used only when it names exactly one shape.

Scene ``index`` of seed ``seed`` depends on ``(seed, index)`` only (``numpy.random.default_rng([seed,
index])``), so the first scenes of a large set are the scenes of a small set with the same seed. Boxes are
``(x0, y0, x1, y1)`` in pixels with exclusive ``x1`` / ``y1``: the item covers columns ``x0 .. x1 - 1``.
Nothing here reads files; ``write_world`` writes a generated set to a directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# --- the rules (docs/shapesworld.md, Scenes) ---------------------------------------------------------------------

CANVAS = 224
BACKGROUND_RANGE = (225, 255)  # each channel, inclusive
SHAPE_COUNT_RANGE = (1, 6)
KINDS: tuple[str, ...] = ("circle", "square", "triangle")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles"}
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
COLOUR_JITTER = 15  # each channel, uniform in -15 .. +15, then clipped to 0 .. 255
SIDE_RANGE = (22, 48)  # shape box side, inclusive
SIGN_COUNTS = (0, 1, 2)
SIGN_COUNT_PROBS = (0.4, 0.4, 0.2)
WORD_LENGTH_RANGE = (3, 6)
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
FONT_SIZE = 18
SIGN_BORDER = 2
SIGN_PADDING = 4
MARGIN = 2  # free pixels between an item and the canvas edge
GAP = 4  # free pixels between two items' boxes
PLACEMENT_TRIES = 200  # positions tried per item before the whole scene is drawn again
POSITION_MIN_OFFSET = 8  # centres of the two referents differ by at least this on the asked axis

#: Question categories, in report order.
CATEGORIES: tuple[str, ...] = ("existence", "count", "colour", "shape", "position", "ocr")

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    rgb: tuple[int, int, int]
    box: Box

    @property
    def centre(self) -> tuple[float, float]:
        return box_centre(self.box)


@dataclass(frozen=True)
class Sign:
    word: str
    box: Box


@dataclass(frozen=True)
class Scene:
    """The ground truth of one image: what ``render`` draws and what questions are asked about."""

    id: str
    seed: int
    index: int
    background: tuple[int, int, int]
    shapes: tuple[Shape, ...]
    signs: tuple[Sign, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scene:
        return cls(
            id=data["id"],
            seed=data["seed"],
            index=data["index"],
            background=tuple(data["background"]),
            shapes=tuple(
                Shape(s["kind"], s["colour"], tuple(s["rgb"]), tuple(s["box"])) for s in data["shapes"]
            ),
            signs=tuple(Sign(s["word"], tuple(s["box"])) for s in data["signs"]),
        )


@dataclass(frozen=True)
class Question:
    """One question in the question-file format (docs/shapesworld.md, Files)."""

    question_id: str
    image: str
    text: str
    category: str
    answer: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


# --- geometry ---------------------------------------------------------------------------------------------------


def box_centre(box: Box) -> tuple[float, float]:
    """Centre of an exclusive-end box (a 22 px box at x0 = 10 has its centre at 21.0)."""
    return (box[0] + box[2]) / 2, (box[1] + box[3]) / 2


def box_gap(a: Box, b: Box) -> int:
    """Free pixels between two boxes along the axis where they are furthest apart (negative: overlap)."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def inside_canvas(box: Box, margin: int = MARGIN, size: int = CANVAS) -> bool:
    return box[0] >= margin and box[1] >= margin and box[2] <= size - margin and box[3] <= size - margin


# --- scenes -------------------------------------------------------------------------------------------------------


@cache
def sign_font() -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's bundled default font at size 18 (the world's sign font)."""
    return ImageFont.load_default(size=FONT_SIZE)


def text_bbox(word: str) -> tuple[int, int, int, int]:
    """The bounding box of ``word`` drawn at (0, 0) in the sign font (exclusive right / bottom)."""
    left, top, right, bottom = sign_font().getbbox(word)
    return int(left), int(top), int(right), int(bottom)


def sign_size(word: str) -> tuple[int, int]:
    """Width and height of a sign: the text's bounding box plus padding and border on each side."""
    left, top, right, bottom = text_bbox(word)
    pad = 2 * (SIGN_PADDING + SIGN_BORDER)
    return right - left + pad, bottom - top + pad


def random_word(rng: np.random.Generator, length: int | None = None) -> str:
    """3-6 uppercase letters: the length uniform (or ``length``), then each letter uniform."""
    if length is None:
        length = int(rng.integers(WORD_LENGTH_RANGE[0], WORD_LENGTH_RANGE[1] + 1))
    return "".join(LETTERS[int(i)] for i in rng.integers(0, len(LETTERS), size=length))


def _place(rng: np.random.Generator, width: int, height: int, placed: list[Box]) -> Box | None:
    """A box of the given size inside the canvas margin and ``GAP`` px from every placed box, or None."""
    for _ in range(PLACEMENT_TRIES):
        x0 = int(rng.integers(MARGIN, CANVAS - MARGIN - width + 1))
        y0 = int(rng.integers(MARGIN, CANVAS - MARGIN - height + 1))
        box = (x0, y0, x0 + width, y0 + height)
        if all(box_gap(box, other) >= GAP for other in placed):
            return box
    return None


def _draw_items(rng: np.random.Generator) -> tuple[list[Shape], list[Sign]] | None:
    """Draw kinds, colours, sizes, words, then positions (shapes first); None if an item found no room."""
    n_shapes = int(rng.integers(SHAPE_COUNT_RANGE[0], SHAPE_COUNT_RANGE[1] + 1))
    placed: list[Box] = []
    shapes = []
    for _ in range(n_shapes):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        colour = tuple(COLOURS)[int(rng.integers(len(COLOURS)))]
        jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
        rgb = tuple(int(c) for c in np.clip(np.array(COLOURS[colour]) + jitter, 0, 255))
        side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
        box = _place(rng, side, side, placed)
        if box is None:
            return None
        placed.append(box)
        shapes.append(Shape(kind, colour, rgb, box))
    n_signs = int(rng.choice(SIGN_COUNTS, p=SIGN_COUNT_PROBS))
    signs = []
    for _ in range(n_signs):
        word = random_word(rng)
        box = _place(rng, *sign_size(word), placed)
        if box is None:
            return None
        placed.append(box)
        signs.append(Sign(word, box))
    return shapes, signs


def scene_id(seed: int, index: int) -> str:
    return f"{seed}-{index:06d}"


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``seed``: scenes do not depend on how many are made."""
    return np.random.default_rng([seed, index])


def generate_scene(seed: int, index: int, rng: np.random.Generator | None = None) -> Scene:
    """Scene ``index`` of ``seed``; a scene whose items did not all fit is drawn again from the same stream."""
    rng = scene_rng(seed, index) if rng is None else rng
    background = tuple(int(c) for c in rng.integers(BACKGROUND_RANGE[0], BACKGROUND_RANGE[1] + 1, size=3))
    while (items := _draw_items(rng)) is None:
        pass
    shapes, signs = items
    return Scene(scene_id(seed, index), seed, index, background, tuple(shapes), tuple(signs))


def render(scene: Scene) -> Image.Image:
    """The scene's 224 × 224 RGB image."""
    image = Image.new("RGB", (CANVAS, CANVAS), scene.background)
    draw = ImageDraw.Draw(image)
    for shape in scene.shapes:
        x0, y0, x1, y1 = shape.box
        last = (x0, y0, x1 - 1, y1 - 1)  # Pillow's boxes include their last pixel
        if shape.kind == "circle":
            draw.ellipse(last, fill=shape.rgb)
        elif shape.kind == "square":
            draw.rectangle(last, fill=shape.rgb)
        else:
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=shape.rgb)
    for sign in scene.signs:
        x0, y0, x1, y1 = sign.box
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill="white", outline="black", width=SIGN_BORDER)
        left, top, _, _ = text_bbox(sign.word)
        inset = SIGN_BORDER + SIGN_PADDING
        draw.text((x0 + inset - left, y0 + inset - top), sign.word, fill="black", font=sign_font())
    return image


# --- questions (docs/shapesworld.md, Questions) -----------------------------------------------------------------


def existence_question(colour: str, kind: str) -> str:
    return f"Is there a {colour} {kind} in the image?"


def count_kind_question(kind: str) -> str:
    return f"How many {PLURALS[kind]} are there?"


def count_colour_question(colour: str) -> str:
    return f"How many {colour} objects are there?"


def colour_question(kind: str) -> str:
    return f"What color is the {kind}?"


def shape_question(colour: str) -> str:
    return f"What shape is the {colour} object?"


def left_question(a: Shape, b: Shape) -> str:
    return f"Is the {a.colour} {a.kind} to the left of the {b.colour} {b.kind}?"


def above_question(a: Shape, b: Shape) -> str:
    return f"Is the {a.colour} {a.kind} above the {b.colour} {b.kind}?"


def sign_word_question() -> str:
    return "What word is written on the sign?"


def word_present_question(word: str) -> str:
    return f"Is the word {word} written in the image?"


def yes_no(value: bool) -> str:
    return "yes" if value else "no"


def unique_referents(scene: Scene) -> list[Shape]:
    """Shapes that "the {colour} {kind}" names unambiguously (no other shape of that colour and kind)."""
    pairs = [(s.colour, s.kind) for s in scene.shapes]
    return [s for s in scene.shapes if pairs.count((s.colour, s.kind)) == 1]


def _pick(rng: np.random.Generator, options: Sequence[Any]) -> Any:
    return options[int(rng.integers(len(options)))]


def _existence(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """Yes or no with equal chance: a present colour-kind pair, or one of the absent ones."""
    present = sorted({(s.colour, s.kind) for s in scene.shapes})
    absent = [(c, k) for c in COLOURS for k in KINDS if (c, k) not in present]
    want_yes = bool(rng.integers(2)) if absent else True
    colour, kind = _pick(rng, present if want_yes else absent)
    return existence_question(colour, kind), yes_no(want_yes)


def _count(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """One of the two count templates with equal chance, any kind / colour (0 included); signs not counted."""
    if rng.integers(2):
        kind = _pick(rng, KINDS)
        return count_kind_question(kind), str(sum(s.kind == kind for s in scene.shapes))
    colour = _pick(rng, tuple(COLOURS))
    return count_colour_question(colour), str(sum(s.colour == colour for s in scene.shapes))


def _colour(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    kinds = [k for k in KINDS if sum(s.kind == k for s in scene.shapes) == 1]
    if not kinds:
        return None
    kind = _pick(rng, kinds)
    return colour_question(kind), next(s.colour for s in scene.shapes if s.kind == kind)


def _shape(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    colours = [c for c in COLOURS if sum(s.colour == c for s in scene.shapes) == 1]
    if not colours:
        return None
    colour = _pick(rng, colours)
    return shape_question(colour), next(s.kind for s in scene.shapes if s.colour == colour)


def position_candidates(scene: Scene) -> list[tuple[str, str]]:
    """Every (question, answer) allowed by the position rules: two different unique referents whose
    centres differ by at least ``POSITION_MIN_OFFSET`` px on the asked axis."""
    out = []
    referents = unique_referents(scene)
    for a in referents:
        for b in referents:
            if a is b:
                continue
            (ax, ay), (bx, by) = a.centre, b.centre
            if abs(ax - bx) >= POSITION_MIN_OFFSET:
                out.append((left_question(a, b), yes_no(ax < bx)))
            if abs(ay - by) >= POSITION_MIN_OFFSET:
                out.append((above_question(a, b), yes_no(ay < by)))
    return out


def _position(scene: Scene, rng: np.random.Generator) -> tuple[str, str] | None:
    candidates = position_candidates(scene)
    return _pick(rng, candidates) if candidates else None


def absent_word(scene: Scene, rng: np.random.Generator) -> str:
    """A random 3-6 letter word written on no sign of the scene."""
    words = {s.word for s in scene.signs}
    while (word := random_word(rng)) in words:
        pass
    return word


def _ocr(scene: Scene, rng: np.random.Generator) -> tuple[str, str]:
    """The sign-word template (only with exactly one sign) or the word-present template, each with equal
    chance where both apply; the latter is yes or no with equal chance when the scene has a sign."""
    if len(scene.signs) == 1 and rng.integers(2):
        return sign_word_question(), scene.signs[0].word
    if scene.signs and rng.integers(2):
        return word_present_question(_pick(rng, [s.word for s in scene.signs])), "yes"
    return word_present_question(absent_word(scene, rng)), "no"


_MAKERS = {
    "existence": _existence,
    "count": _count,
    "colour": _colour,
    "shape": _shape,
    "position": _position,
    "ocr": _ocr,
}


def image_path(scene: Scene) -> str:
    """Where the scene's image lies, relative to the world directory."""
    return f"images/{scene.id}.png"


def make_questions(scene: Scene, rng: np.random.Generator) -> list[Question]:
    """One question per category where the rules allow one (existence, count and ocr always do)."""
    out = []
    for category in CATEGORIES:
        made = _MAKERS[category](scene, rng)
        if made is not None:
            text, answer = made
            qid = f"{scene.id}-{len(out)}"
            out.append(Question(qid, image_path(scene), text, category, answer))
    return out


def generate(seed: int, index: int) -> tuple[Scene, list[Question]]:
    """Scene ``index`` of ``seed`` and its questions (one random stream per scene)."""
    rng = scene_rng(seed, index)
    scene = generate_scene(seed, index, rng)
    return scene, make_questions(scene, rng)


def conversation(scene: Scene, questions: Sequence[Question], draw: int = 0) -> dict[str, Any]:
    """A LLaVA training record: every question of the scene as one multi-turn conversation, in an order
    shuffled per scene (seeded by the scene), so every category is also asked first, as at inference where a
    question comes alone. ``draw`` > 0 names a further conversation about the same scene (`more_questions`)."""
    order = np.random.default_rng([scene.seed, scene.index, 1, *([draw] if draw else [])]).permutation(
        len(questions)
    )
    turns = []
    for i, q in enumerate(questions[j] for j in order):
        turns.append({"from": "human", "value": f"<image>\n{q.text}" if i == 0 else q.text})
        turns.append({"from": "gpt", "value": q.answer})
    record_id = f"{scene.id}-{draw}" if draw else scene.id
    return {"id": record_id, "image": image_path(scene), "conversations": turns}


def more_questions(scene: Scene, draw: int) -> list[Question]:
    """Draw ``draw`` (>= 1) of the scene's questions for training: the generator's rules and choices again
    (`make_questions`), from a stream of its own, so the scene's question file is unchanged and a training
    file can hold several conversations about one image (more questions for the same perception)."""
    return make_questions(scene, np.random.default_rng([scene.seed, scene.index, 2, draw]))


# --- writing a world --------------------------------------------------------------------------------------------

SCENES_FILE = "scenes.jsonl"
TRAIN_FILE = "train.json"
QUESTIONS_FILE = "questions.jsonl"


@dataclass(frozen=True)
class WorldSummary:
    scenes: int
    questions: int
    per_category: dict[str, int]
    conversations: int = 0
    """Training conversations written to ``train.json``."""
    training_questions: int = 0
    """Distinct (image, question) pairs those conversations ask."""


def read_scenes(world: Path) -> list[Scene]:
    """The ground truth of a world made by `moai worlds shapes` (``scenes.jsonl``)."""
    path = world / SCENES_FILE
    if not path.is_file():
        raise ValueError(f"world {world}: no {SCENES_FILE} (make it with `moai worlds shapes --out {world}`)")
    with path.open() as f:
        return [Scene.from_dict(json.loads(line)) for line in f if line.strip()]


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def write_world(out: Path, scenes: int, seed: int, conversations: int = 1) -> WorldSummary:
    """Render ``scenes`` scenes of ``seed`` into ``out``: ``images/*.png``, ``scenes.jsonl`` (ground
    truth), ``train.json`` (LLaVA conversations) and ``questions.jsonl`` (question file).

    ``conversations`` > 1 writes that many training conversations per scene: the first holds the questions
    of the question file, each further one a fresh draw (`more_questions`). Images, ground truth and the
    question file do not depend on it."""
    if conversations < 1:
        raise ValueError(f"conversations: {conversations} is not >= 1")
    (out / "images").mkdir(parents=True, exist_ok=True)
    truths, records, questions = [], [], []
    for index in range(scenes):
        scene, qs = generate(seed, index)
        render(scene).save(out / image_path(scene))
        truths.append(scene.to_dict())
        records.append(conversation(scene, qs))
        records += [conversation(scene, more_questions(scene, d), d) for d in range(1, conversations)]
        questions.extend(qs)
    write_jsonl(out / SCENES_FILE, truths)
    rows = ",\n".join(json.dumps(r) for r in records)  # a JSON list, one record a line
    (out / TRAIN_FILE).write_text(f"[\n{rows}\n]\n", encoding="utf-8")
    write_jsonl(out / QUESTIONS_FILE, (q.to_dict() for q in questions))
    per_category = {c: sum(q.category == c for q in questions) for c in CATEGORIES}
    asked = {
        (r["image"], turn["value"].removeprefix("<image>\n"))
        for r in records
        for turn in r["conversations"][::2]
    }
    return WorldSummary(scenes, len(questions), per_category, len(records), len(asked))
