"""Vision tower: position-table interpolation as the official (bicubic, fp16 round-trip of patch rows)."""

import torch
from conftest import FIXTURES
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from moai.model.vision import interpolate_position_table, load_clip_weights


def test_interpolation_matches_official_table():
    expected = load_file(str(FIXTURES / "official_tiny" / "expected.safetensors"))
    before, after = expected["clip_pos_embed_before_interp"], expected["clip_pos_embed_after_interp"]
    got = interpolate_position_table(before, 35)
    assert got.shape == after.shape == (1226, before.shape[1])
    assert torch.equal(got, after)
    # without the fp16 round-trip the table is measurably different (the official quirk matters)
    assert (interpolate_position_table(before, 35, fp16_roundtrip=False) - after).abs().max() > 1e-5


def test_load_pretrained_tower_interpolates_once_and_stores_a_parameter():
    small = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=56,
        patch_size=14,
    )
    big = CLIPVisionConfig(**{**small.to_dict(), "image_size": 84})
    source = CLIPVisionModel(small).state_dict()
    tower = CLIPVisionModel(big)
    load_clip_weights(tower, source)
    table = tower.embeddings.position_embedding.weight
    assert isinstance(table, torch.nn.Parameter) and table.shape == (37, 32)
    torch.testing.assert_close(
        table, interpolate_position_table(source["embeddings.position_embedding.weight"], 6)
    )
    assert tower(torch.zeros(2, 3, 84, 84)).last_hidden_state.shape == (2, 37, 32)
