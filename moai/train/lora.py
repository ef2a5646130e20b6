"""LoRA on the LLM through peft: an option beyond the paper's recipe (arXiv 2403.07508 §3.3 trains the MoAI modules).

The adapters are injected into the decoder's own projections with ``peft.inject_adapter_in_model``, so the
model keeps its class and ``save_pretrained``; the MoAI experts (which also have ``q_proj`` ... but are
low-rank sequences of their own) are never targeted. PLoRA keeps working: the `PLoRALinear` becomes the
adapter's ``base_layer``, and peft passes the image-token mask through to it. The adapters' parameters
form the model's ``lora`` parameter group (``set_trainable("moai+lora")``). At the end of a run the
adapters are merged into the base weights, so ``final/`` is a plain MoAI checkpoint that loads without peft.
"""

from __future__ import annotations

import re

from torch import nn

from .config import TrainConfig

# full module names (under the LLM) of the decoder's attention and MLP projections; never the mixer experts,
# whose q_proj ... sit one level deeper, under ``self_attn.moai_mixer.<expert>``
_PROJECTION = r".*layers\.\d+\.(self_attn|mlp)\."


def add_lora(model: nn.Module, config: TrainConfig) -> None:
    """Inject LoRA adapters (``config.lora_*``) into the decoder layers' projections named in ``lora_targets``."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as error:
        raise ImportError(
            f"trainable {config.trainable!r} needs peft: pip install 'moai[train]' (or pip install peft)"
        ) from error
    pattern = re.compile(rf"{_PROJECTION}(\w+)")
    found = {
        m[2]
        for name, module in model.language_model.named_modules()
        if isinstance(module, nn.Linear) and (m := pattern.fullmatch(name)) and not m[2].startswith("plora")
    }
    if not set(config.lora_targets) <= found:
        raise ValueError(
            f"lora_targets {sorted(set(config.lora_targets) - found)} matched no projection of the decoder "
            f"layers; they have {sorted(found)}"
        )
    names = "|".join(re.escape(t) for t in config.lora_targets)
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=rf"{_PROJECTION}({names})",
        bias="none",
    )
    inject_adapter_in_model(lora, model.language_model)


def merge_lora(model: nn.Module) -> int:
    """Merge every LoRA adapter into its base layer and put the base layer back; return how many merged."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for name, module in list(model.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, child = name.rsplit(".", 1)
            setattr(model.get_submodule(parent), child, module.get_base_layer())
            merged += 1
    return merged
