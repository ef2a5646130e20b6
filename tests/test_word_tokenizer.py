"""The word-level tokenizer for closed worlds (moai.model.processing.build_word_tokenizer)."""

import pytest
import torch
from conftest import random_images
from transformers import AutoTokenizer

from moai import MoAIConfig, MoAIForConditionalGeneration, MoAIProcessor
from moai.model.constants import IMAGE_TOKEN
from moai.model.processing import WORD_SPECIALS, build_byte_tokenizer, build_word_tokenizer, word_counts

CORPUS = [
    "Is there a red circle?",
    "What color is the square?",
    "Is the circle left of the triangle?",
    "yes",
    "no",
    "The image includes bounding box coordinates and their objects: [0.10, 0.20, 0.30, 0.40] red circle, "
    "[0.55, 0.60, 0.70, 0.90] blue square.",
    "The image includes text descriptions: STOP.",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_word_tokenizer([w for w, _ in word_counts(CORPUS).most_common()])


def test_known_words_are_one_token_and_others_are_spelled(tokenizer):
    ids = tokenizer("Is the circle left of the triangle?").input_ids
    assert tokenizer.convert_ids_to_tokens(ids) == [
        "<s>",
        "is",
        "the",
        "circle",
        "left",
        "of",
        "the",
        "triangle",
        "?",
    ]
    spelled = tokenizer.convert_ids_to_tokens(tokenizer("QWERT").input_ids)
    assert spelled == ["<s>", "q", "##w", "##e", "##r", "##t"]
    for text in ["What word is on the sign? QWERT", "green hexagon 42"]:
        ids = tokenizer(text).input_ids
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text.lower()


def test_ids_layout(tokenizer):
    assert tokenizer.convert_ids_to_tokens(list(range(len(WORD_SPECIALS)))) == list(WORD_SPECIALS)
    size = len(tokenizer) - 1  # every token but <image>
    assert tokenizer.convert_tokens_to_ids(IMAGE_TOKEN) == size
    big = build_word_tokenizer(["red"], vocab_size=200)
    assert big.convert_tokens_to_ids(IMAGE_TOKEN) == 200
    with pytest.raises(ValueError, match="smaller than"):
        build_word_tokenizer(["red"], vocab_size=10)


def test_a_verbalization_is_shorter_than_in_bytes(tokenizer):
    """A box verbalization (coordinates split into digits and punctuation): 138 byte tokens, 51 word tokens."""
    text = CORPUS[5]
    words, byte_level = len(tokenizer(text).input_ids), len(build_byte_tokenizer()(text).input_ids)
    assert (byte_level, words) == (138, 51)


def test_processor_and_model_with_the_word_tokenizer(tokenizer, tmp_path):
    config = MoAIConfig.from_preset("tiny")
    config.text_config.vocab_size = len(tokenizer) - 1
    config.image_token_id = len(tokenizer) - 1
    model = MoAIForConditionalGeneration(config).eval()
    processor = MoAIProcessor.from_config(config, tokenizer=tokenizer)
    inputs = processor(
        images=random_images(2),
        text=["Is there a red circle?", "What color is the square?"],
        aux_text=[CORPUS[5], CORPUS[6]],
        aux_images=random_images(2, seed=1, size=(112, 112)),
        return_tensors="pt",
    )
    assert int((inputs["input_ids"] == config.image_token_id).sum()) == 2 * config.num_image_tokens
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, inputs["input_ids"].shape[1] + 3)
    processor.save_pretrained(tmp_path)
    again = MoAIProcessor.from_pretrained(tmp_path)
    assert again.tokenizer(CORPUS[5]).input_ids == tokenizer(CORPUS[5]).input_ids


def test_phrases_are_one_token_where_they_stand_as_whole_words(tmp_path):
    words = [w for w, _ in word_counts(CORPUS).most_common()]
    plain = build_word_tokenizer(words, vocab_size=200)
    tok = build_word_tokenizer(
        words, vocab_size=200, phrases=["red circle", "blue square", "red circle left"]
    )
    named = {k: v for k, v in plain.get_vocab().items() if not k.startswith("<reserved_")}
    assert named == {
        k: tok.get_vocab()[k] for k in named
    }  # the words keep their ids; phrases take reserved rows
    cases = {
        "Is there a Red Circle?": ["is", "there", "a", "red circle", "?"],
        "red circles, red circle left of": ["red", "circle", "##s", ",", "red circle left", "of"],
        "a redcircle red circle.": ["a", "red", "##c", "##i", "##r", "##c", "##l", "##e", "red circle", "."],
        "[0.55, 0.60] blue square.": ["[", "0", ".", "55", ",", "0", ".", "60", "]", "blue square", "."],
    }
    for text, pieces in cases.items():
        ids = tok(text).input_ids
        assert tok.convert_ids_to_tokens(ids)[1:] == pieces, text
        assert tok.decode(ids, skip_special_tokens=True) == tok.decode(
            plain(text).input_ids, skip_special_tokens=True
        )
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert (
        again("Is the red circle above the blue square?").input_ids
        == tok("Is the red circle above the blue square?").input_ids
    )
