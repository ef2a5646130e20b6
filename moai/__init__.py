"""moai: MoAI (Mixture of All Intelligence, Lee et al., ECCV 2024), Hugging Face-native.

Glossary: *perception* runs external CV models; *verbalization* turns their outputs into the aux text;
the *processor* encodes image + question + aux text into tensors; the *compressor* (MoAI-Compressor)
condenses aux embeddings into a few tokens; the *mixer* (MoAI-Mixer) fuses them into the LLM through
six attention experts chosen by two gates; *PLoRA* adds low-rank deltas at image tokens only.

Layers (docs/architecture.md; imports run one way, downwards): ``moai.io`` / ``moai.args`` (reading JSON and
images, argparse types) <- ``moai.model`` <- ``moai.verbalize`` <- ``moai.perception`` <- ``moai.compat``,
``moai.train``, ``moai.demo`` <- ``moai.cli``.

The model classes are imported lazily, so that ``moai.verbalize`` and the CLI start without torch.
"""

import os
import sys
from typing import TYPE_CHECKING, Any

# torch's CPU kernels run on OpenMP threads; with GNU OpenMP's default wait policy idle workers spin, and
# on a CPU where another process holds a core a training step can take ~100x longer (bench/threads.py).
# Passive waiting costs nothing measurable on an idle machine. Set before torch loads; an explicit
# OMP_WAIT_POLICY (even empty) is respected.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
__all__ = ["MoAIConfig", "MoAIForConditionalGeneration", "MoAIProcessor"]

_LAZY = {
    "MoAIConfig": "moai.model.configuration",
    "MoAIForConditionalGeneration": "moai.model.modeling",
    "MoAIProcessor": "moai.model.processing",
}

if TYPE_CHECKING:
    from .model.configuration import MoAIConfig
    from .model.modeling import MoAIForConditionalGeneration
    from .model.processing import MoAIProcessor


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        if name == "MoAIConfig":  # registering the Auto classes needs the modeling module
            importlib.import_module("moai.model.modeling")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moai' has no attribute {name!r}")
