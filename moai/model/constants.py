# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""The token, stream and expert names shared by the processor, the model and the trainer, defined once.

Pure constants (no torch import), so that tokenizer conversion and data validation can use them cheaply.
Paper: arXiv 2403.07508 §3 (MoAI-Mixer); docs/model.md §4 (streams) and §6 (experts).
"""

from __future__ import annotations

IMAGE_TOKEN = "<image>"
"""The placeholder the processor expands to N image tokens (one per CLIP patch, docs/model.md §3)."""

IGNORE_INDEX = -100
"""Label of a position that carries no loss (prompt, image, padding)."""

# Per-token stream ids: the processor's ``mm_token_type_ids`` (docs/model.md §4, §6). The processor assigns
# them (`moai.model.processing.token_streams`); the model reads them; ``generate`` extends them with
# STREAM_NONE for new tokens.
STREAM_NONE = 0
"""Padding, and tokens generated after the prompt: never in the mixer, no PLoRA."""
STREAM_IMAGE = 1
"""The N image tokens: the mixer's image stream, and where PLoRA applies."""
STREAM_PROMPT = 2
"""The prompt's language tokens (BOS, preamble, chat tags, question): the mixer's language stream."""
STREAM_ANSWER = 3
"""Everything from the first labelled token on; joins the language stream only with ``scope="causal"``."""

# The six MoAI-Mixer experts (paper §3, MoAI-Mixer), as the submodule names of `MoAIMixer`, in gate order:
# gate weight i of a stream weights its expert i.
IMAGE_EXPERTS = ("img_aux", "img_lang", "img_self")
"""Image-stream experts: queries are image tokens; keys/values aux, language, image tokens."""
LANGUAGE_EXPERTS = ("lang_aux", "lang_img", "lang_self")
"""Language-stream experts: queries are language tokens; keys/values aux, image, language tokens."""
EXPERTS_PER_STREAM = len(IMAGE_EXPERTS)
"""Experts (and gate outputs) per stream; the step-1 draw picks one of them per stream."""
EXPERT_NAMES = ("I_AUX", "I_LANG", "I_SELF", "L_AUX", "L_IMG", "L_SELF")
"""The paper's names of ``IMAGE_EXPERTS + LANGUAGE_EXPERTS``, used in metrics and plots."""

MIXER_MODES = ("sample", "gated", "topk")
"""Expert routing: training step 1, step 2 / inference, and this project's top-k option (docs/model.md §6)."""

assert len(LANGUAGE_EXPERTS) == EXPERTS_PER_STREAM and len(EXPERT_NAMES) == 2 * EXPERTS_PER_STREAM
