"""The overfit check: can the MoAI modules alone memorise a small set through the aux knowledge?

MoAI trains its compressor and mixers on a *frozen, pretrained* LLM (arXiv 2403.07508 §3.3). On the random
``tiny`` preset there is no such LLM: a frozen random LM head and final norm bound the per-token
cross-entropy far above zero whatever the MoAI modules do. So the check builds the base first, as any new model is built
(``moai train`` step ``base``), then trains the MoAI modules alone:

1. data: ``samples`` records, each asking ``What word is written on the sign?`` about the *same* blank
   image (small: ``image_size``); the answers are distinct random words of 3-6 capitals, and each
   record's ``aux_text`` is the official OCR sentence naming its word. Nothing but the aux text tells the
   samples apart.
2. ``base``: the vision projector and the LLM of the tiny preset (no MoAI modules) train on the data without
   aux text. They learn the words but cannot tell which one is asked: the loss floors at the entropy of
   the answers, ``samples * ln(samples) / label tokens`` nats per label token (``entropy_floor``).
3. ``step2``: the LLM, vision tower and projector frozen; only the MoAI modules (compressor, experts, gates)
   train, with the aux text. Falling below the floor is possible only by reading the aux text, through
   the compressor and the mixers; the check passes when the loss falls below ``target``.

Run it with ``python -m moai.train.overfit OUT_DIR``; tests/test_train.py runs it in ``make test``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import signal
import string
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..model.configuration import MoAIConfig
from ..model.modeling import MoAIForConditionalGeneration
from ..model.processing import MoAIProcessor
from .config import TrainConfig
from .curves import read_metrics
from .loop import Interrupted, train

QUESTION = "What word is written on the sign?"


@dataclass
class OverfitConfig:
    """Sizes and optimiser settings of the overfit check (defaults: the run recorded in the README)."""

    output_dir: str
    """Where the data, the base run and the MoAI run go."""
    samples: int = 16
    """Number of records to memorise."""
    seed: int = 0
    """Seed of the words, the model initialisation and the data order."""
    base_steps: int = 400
    """Optimizer steps of the ``base`` stage (projector + LLM)."""
    moai_steps: int = 300
    """Optimizer steps of the MoAI stage (``step2``, MoAI modules only). With the fan-in init and scaled
    compressor queries the loss falls below the target after 50-110 steps (seeds 0-4, README); with the config
    init and unscaled queries it took 240-490 steps, hence 1000."""
    mixer_layers: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    """Decoder layers that get a mixer. The tiny preset's single mixer layer (2) is not enough here: it
    plateaus far above the target (README, overfit check); every layer of the 4-layer LLM is."""
    step1_steps: int = 0
    """Steps of a step-1 stage (mixer in sample mode: one random expert per stream and layer) before step 2,
    the paper's two-step recipe (§3.3); 0 goes straight to step 2."""
    trainable: str = "moai"
    """Trainable set of the MoAI stage (``moai`` or ``moai+plora``)."""
    lr: float = 3e-3
    """Peak learning rate of both stages (cosine decay, 10 warm-up steps)."""
    base_min_lr: float = 3e-5
    """Final learning rate of the base stage: low, so that the base converges onto its entropy floor."""
    moai_min_lr: float = 3e-4
    """Final learning rate of the MoAI stage."""
    max_grad_norm: float = 1.0
    """Gradient clipping of the MoAI stage (at the official 10, Adam's late loss spikes stay unclipped)."""
    expert_init_std: float = 0.0
    """Init std of the experts' last ``o`` factor in the MoAI stage (`TrainConfig.expert_init_std`)."""
    moai_init: str = "fan_in"
    """Initialisation of the MoAI modules of the MoAI stage (`TrainConfig.moai_init`: ``config`` | ``fan_in``);
    as the ShapesWorld recipe: fan-in keeps the activations' scale through the narrow low-rank experts."""
    compressor_query_scale: float = 4.0
    """Scale of the never-trained compressor's queries at the MoAI stage's start
    (`TrainConfig.compressor_query_scale`); as the ShapesWorld recipe: the 64 latents start apart, so the
    experts can tell the records' aux apart from the first step."""
    adam_eps: float = 1e-8
    """AdamW epsilon of the MoAI stage. Keep it small: at the identity start the experts' gradients are
    below 1e-6, and an epsilon of 1e-6 freezes the stage on the base's plateau (measured, README)."""
    image_size: int = 28
    """Side of the (shared, blank) image in pixels. It carries nothing the check looks at, so it is kept small:
    28 px are 4 image tokens instead of the tiny preset's 64 (112 px), which makes a step about twice as cheap
    and leaves time for more MoAI steps."""
    aux_position_embeddings: bool = True
    """Give the compressor positions, so the letters of a byte-tokenised word keep their order."""
    target: float = 0.05
    """Loss (nats per label token) the MoAI stage must end below."""

    def __post_init__(self) -> None:
        patch = MoAIConfig.from_preset("tiny").vision_config.patch_size
        if self.image_size < patch or self.image_size % patch:
            raise ValueError(
                f"image_size must be a multiple of the patch size {patch}, got {self.image_size}"
            )
        for name, low in (("samples", 2), ("base_steps", 1), ("moai_steps", 1), ("step1_steps", 0)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)}")
        count = MoAIConfig.from_preset("tiny").text_config.num_hidden_layers
        if not self.mixer_layers or not all(0 <= i < count for i in self.mixer_layers):
            raise ValueError(
                f"mixer_layers must be layers 0..{count - 1} of the tiny preset, got {self.mixer_layers}"
            )


def random_words(n: int, seed: int) -> list[str]:
    """n distinct words of 3-6 capitals (the ShapesWorld sign alphabet)."""
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(string.ascii_uppercase) for _ in range(rng.randint(3, 6))))
    return sorted(words)


def write_data(root: Path, n: int, seed: int) -> Path:
    """Write the LLaVA-format records (one shared blank image) and return the JSONL path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (240, 240, 240)).save(root / "images" / "blank.png")
    lines = []
    for i, word in enumerate(random_words(n, seed)):
        record = {
            "id": f"word-{i}",
            "image": "images/blank.png",
            "aux_text": f"The image includes text descriptions: {word}.",
            "conversations": [
                {"from": "human", "value": f"<image>\n{QUESTION}"},
                {"from": "gpt", "value": word},
            ],
        }
        lines.append(json.dumps(record))
    path = root / "data.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_overfit(config: OverfitConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the base, train the MoAI modules alone, and report both loss curves against the floor."""
    root = Path(config.output_dir)
    data = write_data(root, config.samples, config.seed)

    # the random tiny preset, without mixers (a base model has none), compressor positions as configured
    model_config = MoAIConfig.from_preset("tiny")
    model_config.mixer_config.layers = []
    model_config.compressor_config.aux_position_embeddings = config.aux_position_embeddings
    model_config.vision_config.image_size = config.image_size
    init = root / "init"
    torch.manual_seed(config.seed)
    MoAIForConditionalGeneration(model_config).save_pretrained(init)
    MoAIProcessor.from_config(model_config).save_pretrained(init)

    common = dict(
        data=[{"path": str(data)}],
        batch_size=config.samples,
        lr=config.lr,
        warmup_steps=10,
        seed=config.seed,
        progress=False,
        tensorboard=False,
    )
    base = TrainConfig.from_dict(
        dict(
            common,
            output_dir=str(root / "base"),
            model=str(init),
            step="base",
            trainable="projector+llm",
            aux="none",
            max_steps=config.base_steps,
            min_lr=config.base_min_lr,
        )
    )
    base_summary = train(base, log=log)
    stages = (
        [("step1", config.step1_steps), ("step2", config.moai_steps)]
        if config.step1_steps
        else [("step2", config.moai_steps)]
    )
    start, moai_losses = root / "base" / "final", []
    for step, steps in stages:
        run = root / ("moai" if step == "step2" else "moai-step1")
        moai = TrainConfig.from_dict(
            dict(
                common,
                output_dir=str(run),
                model=str(start),
                step=step,
                trainable=config.trainable,
                mixer_layers=list(config.mixer_layers),
                max_steps=steps,
                min_lr=config.moai_min_lr,
                max_grad_norm=config.max_grad_norm,
                expert_init_std=config.expert_init_std,
                moai_init=config.moai_init,
                compressor_query_scale=config.compressor_query_scale,
                adam_eps=config.adam_eps,
            )
        )
        moai_summary = train(moai, log=log)
        moai_losses += [r["loss"] for r in read_metrics(run)]
        start = run / "final"

    base_metrics = read_metrics(root / "base")
    label_tokens = base_metrics[0]["label_tokens"]
    floor = config.samples * math.log(config.samples) / label_tokens
    below = next((i + 1 for i, loss in enumerate(moai_losses) if loss < config.target), None)
    result = {
        "config": asdict(config),
        "label_tokens": label_tokens,
        "entropy_floor": floor,
        "base_final_loss": base_metrics[-1]["loss"],
        "moai_first_loss": moai_losses[0],
        "moai_final_loss": moai_losses[-1],
        "moai_first_step_below_target": below,
        "moai_trainable_params": moai_summary["trainable_params"],
        "total_params": moai_summary["total_params"],
        "base_seconds": base_summary["seconds"],
        "moai_seconds": moai_summary["seconds"],
        "passed": moai_losses[-1] < config.target,
    }
    (root / "overfit.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    """``python -m moai.train.overfit OUT_DIR [options]``: run the check, print the losses; exit 0 if it passed."""
    defaults = OverfitConfig(output_dir="")  # the CLI's defaults are the dataclass's, stated once
    parser = argparse.ArgumentParser(prog="python -m moai.train.overfit", description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", help="where the data, the base run and the MoAI run go")

    def option(name: str, kind: type, text: str, **extra: Any) -> None:
        field_name = name.removeprefix("--").replace("-", "_")
        default = getattr(defaults, field_name)
        shown = " ".join(map(str, default)) if isinstance(default, list) else default
        parser.add_argument(name, type=kind, default=default, help=f"{text} (default: {shown})", **extra)

    option("--samples", int, "records to memorise")
    option("--seed", int, "seed of the words, the model initialisation and the data order")
    option("--base-steps", int, "steps of the base stage (projector + LLM, no aux text)")
    option("--moai-steps", int, "steps of the MoAI stage (step 2, MoAI modules only)")
    option("--trainable", str, "trainable set of the MoAI stage", choices=["moai", "moai+plora"])
    option("--mixer-layers", int, "decoder layers that get a mixer", nargs="+", metavar="LAYER")
    option("--step1-steps", int, "steps of a step-1 stage (one random expert per stream) before step 2")
    option("--image-size", int, "side of the shared blank image in pixels (a multiple of 14)")
    option("--lr", float, "peak learning rate of both stages")
    option("--max-grad-norm", float, "gradient clipping of the MoAI stage")
    option("--expert-init-std", float, "init std of the experts' last o factor (0: the identity start)")
    option("--adam-eps", float, "AdamW epsilon of the MoAI stage")
    option("--moai-init", str, "init of the MoAI modules", choices=["config", "fan_in"])
    option("--compressor-query-scale", float, "scale of the untrained compressor's queries at the start")
    try:
        config = OverfitConfig(**vars(parser.parse_args(argv)))
        r = run_overfit(config, log=lambda _msg: None)
    except (ValueError, OSError) as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    except Interrupted as stopped:  # SIGINT / SIGTERM in a stage: its checkpoint is kept
        print(f"{parser.prog}: {stopped.summary} (the check restarts from scratch)", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:  # Ctrl-C between the stages
        print(f"{parser.prog}: interrupted by SIGINT", file=sys.stderr)
        return 128 + signal.SIGINT
    print(
        f"samples {config.samples}, {r['label_tokens']} label tokens; entropy floor {r['entropy_floor']:.4f}"
    )
    print(f"base  (projector + LLM, {config.base_steps} steps, no aux): loss {r['base_final_loss']:.4f}")
    print(
        ("step1 + " if config.step1_steps else "")
        + f"step2 ({config.trainable}: {r['moai_trainable_params']:,} of {r['total_params']:,} params, "
        f"mixers in layers {config.mixer_layers}, "
        + (f"{config.step1_steps} + " if config.step1_steps else "")
        + f"{config.moai_steps} steps, aux on): "
        f"loss {r['moai_first_loss']:.4f} -> {r['moai_final_loss']:.4f}"
        + (
            f", below {config.target} from step {r['moai_first_step_below_target']}"
            if r["moai_first_step_below_target"]
            else ""
        )
    )
    print(f"OVERFIT {'OK' if r['passed'] else 'FAILED'} (target < {config.target})")
    return 0 if r["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
