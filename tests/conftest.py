import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from pathlib import Path

import numpy as np
import pytest
import torch

from moai import MoAIConfig, MoAIForConditionalGeneration, MoAIProcessor

#: Test vectors taken from the official implementation, shipped with the repository (tests/fixtures/README.md).
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def randomize_zero_inits(model: torch.nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised factors (PLoRA B, expert output, attention sinks) random values so every path
    matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if getattr(module, "_moai_zero_init", False):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.2)
            for name in ("sink_key", "sink_value"):  # the experts' attention sinks, when configured
                sink = getattr(module, name, None)
                if isinstance(sink, torch.nn.Parameter):
                    sink.copy_(torch.randn(sink.shape, generator=gen))


def tiny_model(seed: int = 0, randomize: bool = True, **mixer: object) -> MoAIForConditionalGeneration:
    torch.manual_seed(seed)
    config = MoAIConfig.from_preset("tiny")
    for key, value in mixer.items():
        setattr(config.mixer_config, key, value)
    model = MoAIForConditionalGeneration(config).eval()
    if randomize:
        randomize_zero_inits(model, seed)
    return model


def save_shapes_model(path: Path, seed: int = 0, randomize: bool = False) -> Path:
    """A random `shapes` model saved as ``moai train`` saves one (weights, processor with the ShapesWorld word
    tokenizer, aux settings for the ``shapesworld`` perception preset); ``randomize``: `randomize_zero_inits`."""
    from moai.perception.settings import AuxSettings
    from moai.train.vocab import shapes_tokenizer

    torch.manual_seed(seed)
    config = MoAIConfig.from_preset("shapes")
    model = MoAIForConditionalGeneration(config)
    if randomize:
        randomize_zero_inits(model, seed)
    model.save_pretrained(path)
    MoAIProcessor.from_config(config, tokenizer=shapes_tokenizer()).save_pretrained(path)
    AuxSettings(perception_preset="shapesworld").save(path)
    return path


def random_images(n: int, seed: int = 0, size: tuple[int, int] = (90, 120)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size[0] + 7 * i, size[1], 3), dtype=np.uint8) for i in range(n)]


QUESTIONS = [
    "What color is the circle?",
    "How many squares are there in this picture of many shapes?",
    "Is there a red triangle?",
    "What word is written on the sign? Answer with one word.",
]
AUX = [
    "The image includes bounding box coordinates and their objects: [0.10, 0.20, 0.30, 0.40] circle.",
    "",
    "The image includes text descriptions: STOP, and GO.",
    "The image includes relationships between objects: circle is left of square, and square is above sign.",
]


@pytest.fixture(scope="session")
def processor() -> MoAIProcessor:
    return MoAIProcessor.from_preset("tiny")


@pytest.fixture()
def batch4(processor):
    images = random_images(4)
    maps = random_images(4, seed=1, size=(112, 112))
    return processor(images=images, text=QUESTIONS, aux_text=AUX, aux_images=maps, return_tensors="pt")


def select(inputs, i: int, processor: MoAIProcessor):
    """Re-encode sample i of the QUESTIONS batch alone (no padding)."""
    images = random_images(4)
    maps = random_images(4, seed=1, size=(112, 112))
    return processor(images=[images[i]], text=[QUESTIONS[i]], aux_text=[AUX[i]], aux_images=[maps[i]])
