"""Bad input gets a ValueError that names the problem."""

import numpy as np
import pytest
import torch
from conftest import random_images, tiny_model

from moai import MoAIConfig


def test_image_token_count_mismatch(processor):
    model = tiny_model()
    batch = processor(
        images=random_images(1), text=["hi"], aux_text=["x"], aux_images=random_images(1, 1, (112, 112))
    )
    ids = batch["input_ids"].clone()
    ids[0, -1] = model.config.image_token_id  # one image token too many
    with pytest.raises(ValueError, match="number of <image> tokens"):
        model(**{**batch, "input_ids": ids, "mm_token_type_ids": None})
    with pytest.raises(ValueError, match="2 <image> tokens"):
        processor(images=random_images(1), text=["<image> and <image>"])
    with pytest.raises(ValueError, match=r"number of images \(2\) does not match the number of texts \(1\)"):
        processor(images=random_images(2), text=["one question"])


def test_aux_inputs_missing(processor):
    model = tiny_model()
    batch = processor(images=random_images(1), text=["hi"])
    with pytest.raises(ValueError, match="aux_input_ids"):
        model(**batch)
    batch = processor(images=random_images(1), text=["hi"], aux_text=["aux"])
    with pytest.raises(ValueError, match="aux_pixel_values"):
        model(**batch)
    config = MoAIConfig.from_preset("tiny", use_aux_map=False)
    from moai import MoAIForConditionalGeneration

    assert MoAIForConditionalGeneration(config)(**batch).logits.shape[0] == 1  # text-only aux is fine there


def test_wrong_image_shape_or_channels(processor):
    model = tiny_model()
    batch = processor(
        images=random_images(1), text=["hi"], aux_text=["x"], aux_images=random_images(1, 1, (112, 112))
    )
    with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 112, 112\)"):
        model(**{**batch, "pixel_values": torch.zeros(1, 3, 96, 96)})
    with pytest.raises(ValueError, match=r"pixel_values must have shape"):
        model(**{**batch, "pixel_values": torch.zeros(1, 4, 112, 112)})
    with pytest.raises(ValueError, match=r"images\[0\].*\(height, width, 3\)"):
        processor(images=[np.zeros((20, 20, 4), dtype=np.uint8)], text=["hi"])
    with pytest.raises(ValueError, match=r"images\[0\].*PIL image"):
        processor(images=[12], text=["hi"])


def test_empty_text(processor):
    with pytest.raises(ValueError, match=r"text\[1\] is empty"):
        processor(images=random_images(2), text=["fine", "   "])
    with pytest.raises(ValueError, match="text is an empty list"):
        processor(images=[], text=[])
    model = tiny_model()
    with pytest.raises(ValueError, match="input_ids is empty"):
        model(input_ids=torch.zeros(1, 0, dtype=torch.long))


def test_grayscale_and_pil_images_are_converted(processor):
    from PIL import Image

    gray = np.full((30, 40), 128, dtype=np.uint8)
    rgba = Image.new("RGBA", (50, 20), (10, 20, 30, 128))
    batch = processor(images=[gray, rgba], text=["a", "b"])
    assert batch["pixel_values"].shape == (2, 3, 112, 112)


def test_bad_preset_and_config_values():
    with pytest.raises(ValueError, match="unknown preset"):
        MoAIConfig.from_preset("huge")
    config = MoAIConfig.from_preset("tiny")
    config.mixer_config.layers = [9]
    with pytest.raises(ValueError, match="mixer_config.layers has 9"):
        config.validate_moai()


def test_byte_tokenizer_round_trip_and_size_check():
    from moai.model.processing import build_byte_tokenizer

    tok = build_byte_tokenizer(264)
    text = "héllo wörld ✓ <|im_start|>"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text and max(ids) < 264
    with pytest.raises(ValueError, match="too small for a byte tokenizer"):
        build_byte_tokenizer(100)
