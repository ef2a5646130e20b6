"""Sign questions for training: the OCR questions of a ShapesWorld world's images, one question a record.

The recipe's step 2 starts the reading of the OCR aux on these (docs/shapesworld.md, "The bundled model"):
``draws`` rounds over the scenes, each round with absent words of its own; per round the sign-word question
("What word is written on the sign?") where the scene has exactly one sign, the word-present question for
every sign's word ("yes") and as many absent words ("no"; one where the scene has no sign). ``signs_only``
keeps the scenes with a sign (every aux then holds a text, so "is there a text" answers nothing),
``word_question=False`` leaves the sign-word question out, ``words_only=True`` keeps it alone. ``negatives`` chooses the absent words:

* ``any``: SHAPESWORLD.md's, a random 3-6 letter word, most of them of another length than the sign's, which a
  model can tell without reading a letter;
* ``same-length``: random letters as many as one of the scene's sign words (only the letters tell it);
* ``near``: a sign word with one letter changed.

A scene without a sign gets an ``any`` word. The images are the world's, so the perception cache of its
training images serves the file as it is (`moai train` data source ``{path: FILE, image_root: WORLD}``).
Not in the paper: a task that makes the OCR aux the only source of the answer (docs/shapesworld.md, "The
sign word: step 2's gating, and absent words of the sign's length").
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .shapes import (
    LETTERS,
    Scene,
    absent_word,
    image_path,
    random_word,
    read_scenes,
    sign_word_question,
    word_present_question,
)

NEGATIVES = ("any", "same-length", "near")
"""How a training file's absent words are drawn (module docstring)."""
SIGN_STREAM = 7
"""The third entry of each round's random stream ``[seed, index, SIGN_STREAM, draw]``: apart from the world's
own streams (1: conversation order, 2: `more_questions`)."""
SIGNS_FILE = "signs.json"
"""The recipe's sign-question file, beside the world's ``train.json``."""
SIGN_WORDS_FILE = "sign-words.json"
"""The recipe's file of the sign-word question alone, beside ``signs.json``."""


def negative_word(scene: Scene, rng: np.random.Generator, negatives: str = "any") -> str:
    """A word on no sign of the scene, drawn as ``negatives`` says (`NEGATIVES`, module docstring)."""
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives {negatives!r}: must be one of {', '.join(NEGATIVES)}")
    if negatives == "any" or not scene.signs:
        return absent_word(scene, rng)
    words = sorted({s.word for s in scene.signs})
    while True:
        sign = words[int(rng.integers(len(words)))]
        if negatives == "same-length":
            word = random_word(rng, len(sign))
        else:  # near: one letter changed
            at = int(rng.integers(len(sign)))
            others = [c for c in LETTERS if c != sign[at]]
            word = sign[:at] + others[int(rng.integers(len(others)))] + sign[at + 1 :]
        if word not in words:
            return word


def sign_questions(
    scene: Scene, draw: int, word_question: bool = True, negatives: str = "any", words_only: bool = False
) -> list[tuple[str, str]]:
    """Round ``draw`` of the scene's (question, answer) pairs about its signs (module docstring)."""
    rng = np.random.default_rng([scene.seed, scene.index, SIGN_STREAM, draw])
    pairs = []
    if word_question and len(scene.signs) == 1:
        pairs.append((sign_word_question(), scene.signs[0].word))
    if words_only:
        return pairs
    pairs += [(word_present_question(sign.word), "yes") for sign in scene.signs]
    pairs += [
        (word_present_question(negative_word(scene, rng, negatives)), "no")
        for _ in range(max(1, len(scene.signs)))
    ]
    return pairs


def training_records(
    scenes: Sequence[Scene],
    draws: int,
    signs_only: bool = False,
    word_question: bool = True,
    negatives: str = "any",
    words_only: bool = False,
) -> list[dict]:
    """One LLaVA record a question (module docstring), ids ``{scene}-sign{draw}-{k}``."""
    if draws < 1:
        raise ValueError(f"draws {draws}: must be >= 1")
    if words_only and not word_question:
        raise ValueError("words_only keeps the sign-word question alone: it needs word_question")
    if negatives not in NEGATIVES:
        raise ValueError(f"negatives {negatives!r}: must be one of {', '.join(NEGATIVES)}")
    records = []
    for scene in scenes:
        if signs_only and not scene.signs:
            continue
        for draw in range(draws):
            pairs = sign_questions(scene, draw, word_question, negatives, words_only)
            for k, (question, answer) in enumerate(pairs):
                turns = [{"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]
                records.append(
                    {"id": f"{scene.id}-sign{draw}-{k}", "image": image_path(scene), "conversations": turns}
                )
    return records


def write_sign_file(
    world: Path,
    out: Path,
    draws: int = 3,
    signs_only: bool = False,
    word_question: bool = True,
    negatives: str = "any",
    words_only: bool = False,
) -> dict[str, int]:
    """Write the training records of ``world``'s scenes to ``out`` (LLaVA JSON); returns the count of each
    answer kind (``yes``, ``no``, ``sign word``). A world that gives no question (``signs_only`` and no
    scene with a sign) is refused: a training stage cannot start on an empty file."""
    records = training_records(read_scenes(world), draws, signs_only, word_question, negatives, words_only)
    if not records:
        what = (
            "with exactly one sign, so no sign-word question"
            if words_only
            else "with a sign, so no sign question"
        )
        raise ValueError(f"{world}: no scene {what} to write (make more scenes)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(records))
    counts = {a: sum(r["conversations"][1]["value"] == a for r in records) for a in ("yes", "no")}
    return {**counts, "sign word": len(records) - counts["yes"] - counts["no"]}
