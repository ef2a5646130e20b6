"""moai: MoAI (Mixture of All Intelligence, Lee et al., ECCV 2024), Hugging Face-native.

Glossary: *perception* runs external CV models; *verbalization* turns their outputs into the aux text;
the *processor* encodes image + question + aux text into tensors; the *compressor* (MoAI-Compressor)
condenses aux embeddings into a few tokens; the *mixer* (MoAI-Mixer) fuses them into the LLM through
six attention experts chosen by two gates; *PLoRA* adds low-rank deltas at image tokens only.
"""

from .model.configuration import MoAIConfig
from .model.modeling import MoAIForConditionalGeneration
from .model.processing import MoAIProcessor

__all__ = ["MoAIConfig", "MoAIForConditionalGeneration", "MoAIProcessor"]
__version__ = "0.1.0"
