"""Stage 0 of the ShapesWorld recipe (moai/recipes/tower.py): the patch labels and the tower's pretraining."""

import pytest
import torch

from moai.model.configuration import MoAIConfig
from moai.model.modeling import MoAIForConditionalGeneration
from moai.model.processing import MoAIProcessor
from moai.recipes.tower import (
    COLOUR_CLASSES,
    IGNORE,
    ITEM_CLASSES,
    TowerConfig,
    patch_labels,
    pretrain_tower,
)
from moai.worlds.shapes import Scene, Shape, Sign, read_scenes, write_world


def scene(shapes=(), signs=()) -> Scene:
    return Scene("t", 0, 0, (240, 240, 240), tuple(shapes), tuple(signs))


def test_each_item_is_labelled_at_the_patch_under_its_centre_and_nowhere_else():
    items = scene(
        shapes=[
            Shape("circle", "red", (220, 40, 40), (10, 10, 40, 40)),  # centre (25, 25): patch row 0, col 0
            Shape("triangle", "blue", (40, 80, 220), (100, 60, 148, 108)),  # centre (124, 84): row 3, col 4
        ],
        signs=[Sign("CAT", (150, 180, 200, 210))],  # centre (175, 195): row 6, col 6
    )
    kinds, colours = patch_labels(items, image_size=224, patch=28)
    assert kinds.shape == colours.shape == (64,)
    expected_kinds, expected_colours = torch.full((64,), IGNORE), torch.full((64,), IGNORE)
    for index, kind, colour in (
        (0, "circle", "red"),
        (3 * 8 + 4, "triangle", "blue"),
        (6 * 8 + 6, "sign", "none"),
    ):
        expected_kinds[index], expected_colours[index] = (
            ITEM_CLASSES.index(kind),
            COLOUR_CLASSES.index(colour),
        )
    assert torch.equal(kinds, expected_kinds) and torch.equal(colours, expected_colours)
    empty = torch.full((64,), IGNORE)
    assert all(torch.equal(labels, empty) for labels in patch_labels(scene(), 224, 28))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    write_world(out, 8, seed=7)
    return out


def shapes_model() -> tuple[MoAIForConditionalGeneration, MoAIProcessor]:
    torch.manual_seed(0)
    config = MoAIConfig.from_preset("shapes")
    config.mixer_config.layers = []
    return MoAIForConditionalGeneration(config), MoAIProcessor.from_config(config)


def test_pretraining_fits_the_labels_and_changes_only_the_tower(world):
    model, processor = shapes_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scenes = read_scenes(world)
    assert len(scenes) == 8
    config = TowerConfig(steps=40, batch_size=8, lr=1e-3, warmup_steps=2)  # one batch: the whole world
    losses = []
    result = pretrain_tower(model, processor, world, config, say=lambda m: None, on_step=losses.append)
    assert set(result) == {"loss", "accuracy", "seconds"}
    assert losses[-1] < 0.5 * losses[0]  # it learns these scenes (at chance: ln 4 + ln 5 = 3.0)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("model.vision_tower.") for k in changed)
    assert "model.vision_tower.embeddings.patch_embedding.weight" in changed


def test_a_world_of_another_image_size_is_refused(world):
    config = MoAIConfig.from_preset("tiny")  # 112 px images; the world's are 224 px
    config.mixer_config.layers = []
    model = MoAIForConditionalGeneration(config)
    with pytest.raises(ValueError, match="images are 224 px, the tower reads 112 px"):
        pretrain_tower(
            model, MoAIProcessor.from_config(config), world, TowerConfig(steps=1), say=lambda m: None
        )
