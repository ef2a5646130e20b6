"""Tiny random Mask2Former and OWLv2 checkpoints, built offline, for tests and benchmarks.

They have the real architectures and processors at toy widths with random weights: they exercise the
plumbing, the post-processing and the shapes of the ``mask2former`` / ``owlv2`` backends without a
download, and say nothing about accuracy. ``save_tiny_*`` write ``save_pretrained`` directories that the
backends load through their ``checkpoint`` option.
"""

from __future__ import annotations

import string
from pathlib import Path

from .vocab import coco_panoptic_classes

#: Side of the tiny models' input images (the processors resize the 490 canvas to it).
TINY_IMAGE_SIZE = 64


def save_tiny_mask2former(directory: str | Path, seed: int = 0, num_queries: int = 10) -> Path:
    """A 133-class Mask2Former (Swin backbone, hidden 32) with COCO-panoptic ``id2label``, saved with its processor."""
    import torch
    from transformers import (
        Mask2FormerConfig,
        Mask2FormerForUniversalSegmentation,
        Mask2FormerImageProcessor,
        SwinConfig,
    )

    labels = coco_panoptic_classes()
    backbone = SwinConfig(
        embed_dim=16,
        depths=[1, 1, 1, 1],
        num_heads=[1, 1, 1, 1],
        window_size=4,
        image_size=TINY_IMAGE_SIZE,
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = Mask2FormerConfig(
        backbone_config=backbone,
        hidden_dim=32,  # GroupNorm(32, .) in the pixel decoder needs a multiple of 32
        mask_feature_size=32,
        feature_size=32,
        num_queries=num_queries,
        encoder_layers=1,
        decoder_layers=2,
        num_attention_heads=2,
        dim_feedforward=32,
        encoder_feedforward_dim=32,
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={name: i for i, name in enumerate(labels)},
    )
    torch.manual_seed(seed)
    model = Mask2FormerForUniversalSegmentation(config).eval()
    processor = Mask2FormerImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    directory = Path(directory)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory


def tiny_clip_tokenizer(max_length: int = 48):  # -> transformers.CLIPTokenizer
    """A character-level CLIP BPE tokenizer (no merges) with CLIP's special-token layout: ``!`` (pad) = 0,
    so that OWLv2's "first token id > 0" query mask behaves as with the real vocabulary. ``max_length`` 48
    fits the longest official query (37 characters) at one token per character (the real CLIP BPE: 16)."""
    from transformers import CLIPTokenizer

    vocab = {"!": 0, "<|startoftext|>": 1, "<|endoftext|>": 2}
    for char in string.ascii_lowercase + string.digits + "-',.&()/":
        vocab.setdefault(char, len(vocab))
        vocab.setdefault(char + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length, pad_token="!")


def save_tiny_owlv2(directory: str | Path, seed: int = 0) -> Path:
    """An OWLv2 (text and vision towers of width 32, 64-px images, patch 16) with its processor."""
    import torch
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    tokenizer = tiny_clip_tokenizer()
    vocab_size = len(tokenizer.get_vocab())
    config = Owlv2Config(
        text_config={
            "vocab_size": vocab_size,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": tokenizer.model_max_length,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 16,
        },
        projection_dim=32,
    )
    torch.manual_seed(seed)
    model = Owlv2ForObjectDetection(config).eval()
    image_processor = Owlv2ImageProcessorPil(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    directory = Path(directory)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return directory
