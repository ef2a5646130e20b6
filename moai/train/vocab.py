"""The word-level vocabulary of the bundled ShapesWorld model (docs/shapesworld.md, "The bundled model").

A closed world needs no sub-word tokenizer: every word of the question templates, the answers and the
verbalizers' sentences is one token, and box coordinates (``0.08``) are ``0 . 08``. Sign words (random
3-6 letters) are spelled letter by letter by `build_word_tokenizer`'s WordPiece fallback, so an OCR answer
is generated letter by letter and no word is ever ``<unk>``. The verbalized aux text of a scene shrinks from
~670 byte tokens to ~150-350 word tokens (tests/test_engine.py).
"""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from ..model.processing import build_word_tokenizer, word_counts
from ..perception.scene_graph import DIRECTIONAL_PREDICATES
from ..perception.verbalize_v2 import OBJECT_PREFIX
from ..verbalize.official import BOX_PREFIX, ITEM_SEPARATOR, OCR_PREFIX, RELATION_PREFIX
from ..worlds import shapes

SHAPES_VOCAB_SIZE = 320
"""Rows of the ``shapes`` preset's LM head (``MoAIConfig.from_preset("shapes").text_config.vocab_size``)."""


def _template_texts() -> list[str]:
    """Every question template of ShapesWorld filled with every colour and kind, and every answer."""
    texts: list[str] = []
    for colour in shapes.COLOURS:
        texts += [shapes.count_colour_question(colour), shapes.shape_question(colour), colour]
        for kind in shapes.KINDS:
            a = shapes.Shape(kind, colour, (0, 0, 0), (0, 0, 1, 1))
            texts += [shapes.existence_question(colour, kind), shapes.left_question(a, a)]
            texts.append(shapes.above_question(a, a))
    for kind in shapes.KINDS:
        texts += [shapes.count_kind_question(kind), shapes.colour_question(kind), kind]
    texts += [shapes.sign_word_question(), shapes.word_present_question(""), "yes", "no"]
    texts += ["system", "user", "assistant"]  # the chat template's roles
    return texts


def _verbalizer_texts() -> list[str]:
    """The sentence pieces of the official and v2 verbalizers and the ShapesWorld perception labels."""
    return [BOX_PREFIX, RELATION_PREFIX, OCR_PREFIX, OBJECT_PREFIX, ITEM_SEPARATOR, "sign", "is"] + [
        f"is {p}" for p in DIRECTIONAL_PREDICATES
    ]


def shapes_words() -> list[str]:
    """The vocabulary of the bundled model: template, answer and verbalizer words (most frequent first),
    then the two-digit numbers ``00``-``99`` of box coordinates."""
    counts = word_counts(_template_texts() + _verbalizer_texts())
    words = [w for w, _ in counts.most_common() if len(w) > 1]  # single letters and digits are built in
    return words + [f"{n:02d}" for n in range(100)]


def shapes_phrases() -> list[str]:
    """The object names of ShapesWorld, ``{colour} {kind}``: one token each (a shape's colour and kind bound
    in one token wherever the name stands, in the questions and in the aux text; docs/shapesworld.md,
    "One token an object")."""
    return [f"{colour} {kind}" for colour in shapes.COLOURS for kind in shapes.KINDS]


def shapes_tokenizer(vocab_size: int = SHAPES_VOCAB_SIZE, phrases: bool = False) -> PreTrainedTokenizerFast:
    """The word-level tokenizer of the ``shapes`` preset (``<image>`` = ``vocab_size``): the words of
    `shapes_words`; with ``phrases``, the object names of `shapes_phrases` one token each too (their ids
    after the words', which keep theirs; measured and not adopted: docs/shapesworld.md, "One token an
    object")."""
    return build_word_tokenizer(
        shapes_words(), vocab_size=vocab_size, phrases=shapes_phrases() if phrases else ()
    )


PRESET_TOKENIZERS = {"shapes": shapes_tokenizer}
"""Presets whose processor needs a tokenizer other than the byte-level one of `MoAIProcessor.from_config`."""
