# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""The KV cache of a model whose mixers run in ``causal`` scope (docs/model.md §8).

In ``causal`` scope the answer tokens were in the mixer's language stream in training, so a generated token
must be mixed too: it reads the compressed aux tokens (L_AUX), the image stream (L_IMG) and every earlier
language token (L_SELF). `MoAICache` is transformers' `DynamicCache` that also keeps those: the compressor's
output of the prefill, and per mixer layer a `MixerMemory`. `MoAIForConditionalGeneration.generate` makes one
for such a model; every cache operation of generation (beam reordering, batch expansion and selection,
cropping) applies to both.

Shapes: B batch, A aux tokens, D hidden.
"""

from __future__ import annotations

import torch
from transformers.cache_utils import DynamicCache

from .mixer import MixerMemory


class MoAICache(DynamicCache):
    """`DynamicCache` + the compressed aux tokens and the mixers' `MixerMemory` of the tokens already run."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.aux: torch.Tensor | None = None
        """[B, A, D] the MoAI-Compressor's output at prefill; None until the prefill ran the mixers."""
        self.aux_keep: torch.Tensor | None = None
        """[B, A] True at a real aux token (a passthrough compressor's padding), or None (all real)."""
        self.mixers: dict[int, MixerMemory] = {}
        """Per mixer layer index, the states its decode steps attend to."""
        self.prefill_length = 0
        """Tokens of the prefill that filled the mixers' memory."""

    def remember_aux(self, aux: torch.Tensor | None, aux_keep: torch.Tensor | None, length: int = 0) -> None:
        """Keep the compressed aux tokens of a prefill of ``length`` tokens for the decode steps."""
        self.aux, self.aux_keep, self.mixers, self.prefill_length = aux, aux_keep, {}, length

    @property
    def decoded(self) -> int:
        """Tokens run after the prefill (the most `crop` can remove from the mixers' memory)."""
        return self.get_seq_length() - self.prefill_length if self.holds_mixer_states else 0

    @property
    def holds_mixer_states(self) -> bool:
        """Whether a prefill through the mixers filled this cache (decode steps then mix their tokens)."""
        return self.aux is not None

    def _select(self, index: torch.Tensor) -> None:
        if self.aux is not None:
            self.aux = self.aux.index_select(0, index.to(self.aux.device))
        if self.aux_keep is not None:
            self.aux_keep = self.aux_keep.index_select(0, index.to(self.aux_keep.device))
        self.mixers = {layer: memory.select(index) for layer, memory in self.mixers.items()}

    def reset(self) -> None:
        super().reset()
        self.remember_aux(None, None)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        super().reorder_cache(beam_idx)
        self._select(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        super().batch_select_indices(indices)
        self._select(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        super().batch_repeat_interleave(repeats)
        if self.aux is not None:
            self._select(torch.arange(self.aux.shape[0], device=self.aux.device).repeat_interleave(repeats))

    def crop(self, tokens_to_remove: int) -> None:
        """transformers' `crop` (``tokens_to_remove`` < 0: that many of the last tokens out), the mixers'
        memory cropped alike; only tokens decoded after the prefill can leave it."""
        removed = -tokens_to_remove if tokens_to_remove < 0 else 0
        if removed > self.decoded and self.holds_mixer_states:
            raise ValueError(
                f"crop: {removed} tokens asked, only {self.decoded} decoded after the prefill can leave the "
                "mixers' memory"
            )
        super().crop(tokens_to_remove)
        if removed and self.holds_mixer_states:
            self.mixers = {layer: memory.cropped(removed) for layer, memory in self.mixers.items()}
