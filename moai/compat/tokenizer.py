"""The official InternLM2 tokenizer + chat template, carried over from an official checkpoint directory.

Needs ``sentencepiece`` (and ``protobuf`` for the conversion): the ``official`` extra. Token-id parity of
the template with the official pipeline cannot be checked offline (the tokenizer model is not in the
fixtures); see docs/official.md.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..model.configuration import MoAIConfig
from ..model.constants import IMAGE_TOKEN
from ..model.processing import MoAIProcessor


def load_official_tokenizer(src: Path):
    """InternLM2 SentencePiece (92,544 pieces) + ``<image>`` = 92,544, BOS added, left padding with ``</s>``."""
    try:
        import sentencepiece
    except ImportError as err:
        raise ImportError(
            "the official InternLM2 tokenizer needs sentencepiece: pip install 'moai-vlm[official]'"
        ) from err
    import shutil
    import tempfile

    from transformers import LlamaTokenizer

    model_file = src / "tokenizer.model"
    check_sentencepiece_model(model_file, sentencepiece)
    # load from a directory holding only the SentencePiece model: the official tokenizer_config.json points
    # at remote code (InternLM2Tokenizer) that transformers 5 does not ship
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(model_file, Path(tmp) / "tokenizer.model")
        tokenizer = LlamaTokenizer.from_pretrained(tmp, add_bos_token=True, add_eos_token=False, legacy=True)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.pad_token = tokenizer.eos_token  # the official pads with </s>
    tokenizer.padding_side = "left"
    return tokenizer


def check_tokenizer_file(path: Path) -> None:
    """Before converting anything: a ``tokenizer.model`` that cannot be read raises ``ValueError`` naming it.

    Without sentencepiece nothing is checked (the tokenizer is then not converted, with a message).
    """
    try:
        import sentencepiece
    except ImportError:
        return
    check_sentencepiece_model(path, sentencepiece)


def check_sentencepiece_model(path: Path, sentencepiece: Any) -> None:
    """Raise ``ValueError`` naming ``path`` unless it is a SentencePiece model (an empty or corrupt file)."""
    if path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a SentencePiece tokenizer model")
    try:
        sentencepiece.SentencePieceProcessor(model_file=str(path))
    except (RuntimeError, OSError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a SentencePiece tokenizer model ({reason})") from None


def save_official_processor(src: Path, out: Path, config: MoAIConfig, log: Callable[[str], None]) -> None:
    try:
        tokenizer = load_official_tokenizer(src)
    except ImportError as err:
        log(f"tokenizer not converted: {err}")
        return
    processor = MoAIProcessor(
        tokenizer,
        image_size=config.image_size,
        num_image_tokens=config.num_image_tokens,
        template="official",
        image_mean=config.image_mean,
        image_std=config.image_std,
        aux_map_mode="official",
    )
    processor.save_pretrained(out)
    log(f"saved the official tokenizer and template to {out}")
