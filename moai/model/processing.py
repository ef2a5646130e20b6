# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""MoAIProcessor: image + question (+ aux text, + panoptic map) -> batch-first tensors for the model.

The one contract between text and model: the prompt template, ``<image>`` placement and
expansion to N image tokens, aux-text tokenisation, per-token stream ids (``mm_token_type_ids``: 0 pad or
generated, 1 image, 2 prompt language, 3 answer; `token_streams`), labels when answers are given, and pixel
values. `MoAIProcessor.build_batch` is where every batch is assembled (``__call__`` and the training collator).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer, BatchFeature, PreTrainedTokenizerFast

from ..io import load_image
from .configuration import CLIP_MEAN, CLIP_STD, MoAIConfig
from .constants import IGNORE_INDEX, IMAGE_TOKEN, STREAM_ANSWER, STREAM_IMAGE, STREAM_NONE, STREAM_PROMPT


def token_streams(
    input_ids: torch.Tensor,
    image_token_id: int,
    attention_mask: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Stream id of every token [B, S] (docs/model.md §4, §6): the one definition of ``mm_token_type_ids``.

    Padding (mask 0) is ``STREAM_NONE``, ``<image>`` tokens ``STREAM_IMAGE``, the other prompt tokens
    ``STREAM_PROMPT``, and everything from the first labelled token on ``STREAM_ANSWER`` (answers, and in
    multi-turn data the later turns, whose states have seen earlier answers: outside the ``prompt`` mixer
    scope). A sample without ``<image>`` tokens is text only: all ``STREAM_NONE`` (the plain LLM). The processor, ``generate`` and the parity check all call it; ``generate`` then extends the ids
    with ``STREAM_NONE`` for new tokens.

    Args: input_ids [B, S]; attention_mask [B, S] (None: no padding); labels [B, S] (None: no answers).
    """
    image = input_ids == image_token_id  # [B, S]
    real = torch.ones_like(image) if attention_mask is None else attention_mask.bool()
    streams = torch.full_like(input_ids, STREAM_NONE)
    streams[real & ~image] = STREAM_PROMPT
    if labels is not None:
        after = (labels != IGNORE_INDEX).long().cumsum(dim=1) > 0  # [B, S] at/after the first answer
        streams[real & ~image & after] = STREAM_ANSWER
    streams[real & image] = STREAM_IMAGE
    text_only = ~image.any(dim=1)  # [B] a sample without an image is the plain LLM: no mixer, no PLoRA
    streams[text_only] = STREAM_NONE
    return streams


class EncodedConversation(NamedTuple):
    """One conversation's token ids, stream ids and labels (equal lengths, unpadded)."""

    ids: list[int]
    streams: list[int]
    labels: list[int]

    def truncated(self, max_length: int) -> EncodedConversation:
        """The first ``max_length`` tokens (streams and labels are per token, so a prefix stays valid)."""
        return EncodedConversation(self.ids[:max_length], self.streams[:max_length], self.labels[:max_length])


@dataclass(frozen=True)
class PromptTemplate:
    """A chat template: ``prompt`` has ``{image}`` and ``{question}`` slots; ``answer`` has ``{answer}``;
    ``turn`` (with ``{question}``) starts each later turn of a multi-turn conversation."""

    prompt: str
    answer: str
    turn: str
    stop: str | None = None
    """End-of-turn marker that can serve as an extra stop token."""


TEMPLATES = {
    # the official eval/benchmark template (docs/model.md §4); the tokenizer adds <s>
    "official": PromptTemplate(
        prompt=(
            "AI assistant should give helpful and detailed answers to user after fully understanding an image. "
            "{image} [UNUSED_TOKEN_146]user\n{question}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n"
        ),
        answer=" {answer}[UNUSED_TOKEN_145]</s>",
        turn="\n[UNUSED_TOKEN_146]user\n{question}[UNUSED_TOKEN_145]\n[UNUSED_TOKEN_146]assistant\n",
        stop="[UNUSED_TOKEN_145]",
    ),
    "chatml": PromptTemplate(
        prompt="{image}\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
        answer="{answer}<|im_end|></s>",
        turn="\n<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n",
        stop="<|im_end|>",
    ),
}


def build_byte_tokenizer(vocab_size: int = 264) -> PreTrainedTokenizerFast:
    """A byte-level tokenizer built offline (no download): 3 specials, 256 bytes, chat tags, ``<image>``.

    Ids: 0 ``<pad>``, 1 ``<s>``, 2 ``</s>``, 3..258 the bytes, 259 ``<|im_start|>``, 260 ``<|im_end|>``,
    reserved rows up to ``vocab_size - 1``, and ``<image>`` = ``vocab_size`` (the extra embedding row).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from tokenizers.pre_tokenizers import ByteLevel

    specials = ["<pad>", "<s>", "</s>"]
    byte_chars = sorted(ByteLevel.alphabet(), key=lambda c: _BYTE_ORDER[c])
    vocab = {tok: i for i, tok in enumerate(specials + byte_chars)}
    chat = ["<|im_start|>", "<|im_end|>"]
    n_reserved = vocab_size - len(vocab) - len(chat)
    if n_reserved < 0:
        raise ValueError(
            f"vocab_size {vocab_size} is too small for a byte tokenizer (needs {len(vocab) + len(chat)})"
        )
    reserved = [f"<reserved_{i}>" for i in range(n_reserved)]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(chat + reserved + [IMAGE_TOKEN])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", padding_side="left"
    )
    assert fast.convert_tokens_to_ids(IMAGE_TOKEN) == vocab_size
    return fast


WORD_SPECIALS = ("<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>")
"""The word tokenizer's first ids: padding, BOS, EOS, unknown, and the chatml tags."""


def _word_tokenizer_parts(phrases: Sequence[str] = ()):
    """The normaliser (NFKC, lower case) and pre-tokeniser (whitespace, then punctuation) of the word
    tokenizer, shared by `word_counts` and `build_word_tokenizer` so the vocabulary is counted as encoded.

    A phrase of ``phrases`` (lower-case words separated by single spaces) is kept as one piece where it
    stands as whole words; every other run of non-space characters is a piece of its own."""
    from tokenizers import Regex, normalizers, pre_tokenizers  # heavy: tokenizers' Rust extension

    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    if phrases:  # longest first, so a phrase that extends another wins
        alternatives = "|".join(re.escape(p) for p in sorted(phrases, key=len, reverse=True))
        pieces = Regex(rf"\b(?:{alternatives})\b|\S+")
        split = pre_tokenizers.Split(pieces, behavior="removed", invert=True)
    else:
        split = pre_tokenizers.WhitespaceSplit()
    pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.Punctuation()])
    return normalizer, pre_tokenizer


def word_counts(texts: Iterable[str]) -> Counter[str]:
    """How often each word (as the word tokenizer splits and lower-cases it) occurs in ``texts``."""
    normalizer, pre_tokenizer = _word_tokenizer_parts()
    counts: Counter[str] = Counter()
    for text in texts:
        counts.update(w for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    return counts


def build_word_tokenizer(
    words: Iterable[str], vocab_size: int | None = None, phrases: Sequence[str] = ()
) -> PreTrainedTokenizerFast:
    """A word-level tokenizer for a small closed world (e.g. ShapesWorld, docs/shapesworld.md), built offline.

    Text is NFKC-normalised, lower-cased and split on whitespace and punctuation; a word in ``words`` is
    one token, any other ASCII word is spelled in letters and digits (WordPiece pieces ``s ##t ##o ##p``),
    so no word of a closed world's text becomes ``<unk>`` and decoding gives it back (lower case). Compared
    with the byte tokenizer a verbalization gets 2-3 times shorter (tests/test_word_tokenizer.py: a box
    listing, 138 -> 51 tokens), which is what the compressor's attention pays for.

    Ids: ``WORD_SPECIALS`` first, then the characters, then ``words`` in the order given (most frequent
    first, e.g. ``[w for w, _ in word_counts(texts).most_common()]``), then ``phrases``, reserved rows up
    to ``vocab_size``, and ``<image>`` = the vocabulary size (the extra embedding row, as MoAI-7B).

    ``phrases`` are multi-word names made one token each wherever they stand as whole words (ShapesWorld's
    ``red circle``: the object's colour and kind bound in one token, in the question and in the aux text
    alike; docs/shapesworld.md, "One token an object").
    """
    from tokenizers import Tokenizer, decoders, models, processors  # heavy: tokenizers' Rust extension

    chars = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
    punctuation = [c for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"]
    vocab: dict[str, int] = {}
    for token in [*WORD_SPECIALS, *chars, *(f"##{c}" for c in chars), *punctuation, *words, *phrases]:
        vocab.setdefault(token, len(vocab))
    size = len(vocab) if vocab_size is None else vocab_size
    if size < len(vocab):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the {len(vocab)} tokens the words need")
    normalizer, pre_tokenizer = _word_tokenizer_parts(phrases)
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", continuing_subword_prefix="##"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tok.add_special_tokens(list(WORD_SPECIALS[4:]) + [f"<reserved_{i}>" for i in range(size - len(vocab))])
    tok.add_special_tokens([IMAGE_TOKEN])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        padding_side="left",
    )
    assert fast.convert_tokens_to_ids(IMAGE_TOKEN) == size
    return fast


def _byte_order() -> dict[str, int]:
    """GPT-2's byte -> printable-char table, as a char -> byte value map."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


_BYTE_ORDER = _byte_order()


class MoAIProcessor:
    """Tokenizer + image processor + prompt template for MoAI.

    Args:
        tokenizer: a tokenizer that knows ``<image>`` and adds BOS.
        image_size: square side the images are resized to (bilinear, no crop; official: 490).
        num_image_tokens: tokens one image expands to (``(image_size / patch) ** 2``).
        template: name in ``TEMPLATES``.
        image_mean / image_std: per-channel normalisation in [0, 1] units (applied as ``x*255`` scale).
        aux_map_mode: ``standard`` (uint8 colour maps, normalised like images) or ``official`` (float maps in
            [0, 1], cast to fp16 and normalised as if 0..255: the official quirk, docs/verbalization.md §5).
    """

    def __init__(
        self,
        tokenizer: Any,
        *,
        image_size: int,
        num_image_tokens: int,
        template: str = "chatml",
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        aux_map_mode: str = "standard",
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"unknown template {template!r}; choose one of {sorted(TEMPLATES)}")
        if aux_map_mode not in ("standard", "official"):
            raise ValueError(f"aux_map_mode must be standard or official, got {aux_map_mode!r}")
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.num_image_tokens = num_image_tokens
        self.template_name = template
        self.template = TEMPLATES[template]
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)
        self.aux_map_mode = aux_map_mode
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer does not know {IMAGE_TOKEN}")

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: MoAIConfig, tokenizer: Any | None = None, **kwargs: Any) -> MoAIProcessor:
        tokenizer = tokenizer or build_byte_tokenizer(config.text_config.vocab_size)
        return cls(
            tokenizer,
            image_size=config.image_size,
            num_image_tokens=config.num_image_tokens,
            image_mean=config.image_mean,
            image_std=config.image_std,
            **kwargs,
        )

    @classmethod
    def from_preset(cls, name: str) -> MoAIProcessor:
        """Processor of a preset; ``tiny`` / ``mid`` use the offline byte tokenizer."""
        if name == "moai-7b":
            raise ValueError(
                "the moai-7b processor needs the official InternLM2 tokenizer files: use "
                "MoAIProcessor.from_pretrained(DIR) on a converted checkpoint (see docs/official.md)"
            )
        config = MoAIConfig.from_preset(name)
        return cls.from_config(config)

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(path)
        settings = ProcessorSettings(
            image_size=self.image_size,
            num_image_tokens=self.num_image_tokens,
            template=self.template_name,
            image_mean=self.image_mean,
            image_std=self.image_std,
            aux_map_mode=self.aux_map_mode,
        )
        (path / "processor_config.json").write_text(json.dumps(asdict(settings), indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> MoAIProcessor:
        """Load from a local directory (``save_pretrained``'s); also ``AutoProcessor.from_pretrained(path)``.
        The keywords transformers' Auto classes add (``_from_auto``, ``trust_remote_code`` ...) are ignored."""
        path = Path(path)
        settings_file = path / "processor_config.json"
        if not settings_file.is_file():
            raise FileNotFoundError(f"{settings_file} not found: not a MoAI processor directory")
        settings = json.loads(settings_file.read_text())
        tokenizer = AutoTokenizer.from_pretrained(path)
        return cls(tokenizer, **settings)

    # -- text ------------------------------------------------------------------------------------
    def format_prompt(self, question: str) -> str:
        """Place the question in the template; ``<image>`` goes to the template's slot unless the text has it."""
        n = question.count(IMAGE_TOKEN)
        if n > 1:
            raise ValueError(f"text has {n} {IMAGE_TOKEN} tokens; MoAI takes exactly one image per sample")
        slot = "" if n == 1 else IMAGE_TOKEN
        return self.template.prompt.format(image=slot, question=question)

    def encode_turns(self, turns: Sequence[tuple[str, str | None]]) -> EncodedConversation:
        """Token ids, stream ids and labels of one conversation [(question, answer), ...].

        The first question carries the image (template slot unless it has ``<image>``); later questions must
        not. Only the answers (with their end tokens) get labels. Streams (`token_streams`): image 1, the first
        prompt 2, and everything from the first answer on 3 (outside the ``prompt`` mixer scope, docs/model.md §6).
        """
        if not turns:
            raise ValueError("a conversation needs at least one turn")
        question, answer = turns[0]
        for i, (later_q, _) in enumerate(turns[1:], start=1):
            if IMAGE_TOKEN in later_q:
                raise ValueError(
                    f"turn {i} has {IMAGE_TOKEN}; MoAI takes exactly one image, in the first turn"
                )
        prompt_ids = self.tokenizer(self.format_prompt(question)).input_ids
        ids: list[int] = []
        for tid in prompt_ids:  # expand the single <image> to N image tokens
            ids += [tid] * (self.num_image_tokens if tid == self.image_token_id else 1)
        labels = [IGNORE_INDEX] * len(ids)
        for i, (q, a) in enumerate(turns):
            if i > 0:
                turn_ids = self.tokenizer(
                    self.template.turn.format(question=q), add_special_tokens=False
                ).input_ids
                ids += turn_ids
                labels += [IGNORE_INDEX] * len(turn_ids)
            if a is None:
                if i != len(turns) - 1:
                    raise ValueError(f"turn {i} has no answer but is not the last turn")
                continue
            answer_ids = self.tokenizer(
                self.template.answer.format(answer=a), add_special_tokens=False
            ).input_ids
            ids += answer_ids
            labels += answer_ids
        streams = token_streams(torch.tensor([ids]), self.image_token_id, labels=torch.tensor([labels]))
        return EncodedConversation(ids, streams[0].tolist(), labels)

    def pad_left(self, rows: list[list[int]], value: int) -> torch.Tensor:
        width = max(len(r) for r in rows)
        return torch.tensor([[value] * (width - len(r)) + r for r in rows], dtype=torch.long)

    # -- images ----------------------------------------------------------------------------------
    def _to_rgb(self, image: Any, what: str) -> Image.Image:
        """An accepted image as RGB through ``moai.io.load_image`` (EXIF orientation, mode conversion and the
        decompression-bomb guard, as perception and the training data load it; docs/architecture.md).

        Accepted: a path, a PIL image (any mode), or an (H, W), (H, W, 1) or (H, W, 3) array or tensor (CHW
        tensors are transposed; values outside uint8 are clipped to 0..255 and truncated).
        """
        if isinstance(image, (str, Path)):
            return load_image(image, name=f"{what}: {image}")
        if isinstance(image, Image.Image):
            return load_image(image, name=what)
        if isinstance(image, torch.Tensor):
            image = image.detach().cpu().numpy()
            if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
                image = image.transpose(1, 2, 0)  # CHW -> HWC
        if not isinstance(image, np.ndarray):
            raise ValueError(
                f"{what}: expected a PIL image, a path, a numpy array or a tensor, got {type(image).__name__}"
            )
        if image.ndim != 2 and (image.ndim != 3 or image.shape[-1] not in (1, 3)):
            raise ValueError(
                f"{what}: expected an RGB image of shape (height, width, 3), got shape {image.shape}"
            )
        if min(image.shape[:2]) < 1:
            raise ValueError(f"{what}: image has an empty side, shape {image.shape}")
        if image.dtype != np.uint8:
            image = np.clip(image, 0, 255).astype(np.uint8)
        return load_image(image, name=what)

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        """[B, H, W, 3] in 0..255 units -> [B, 3, H, W], ``(x - 255 mean) / (255 std)`` as the official."""
        mean = torch.tensor(self.image_mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(self.image_std).view(1, 3, 1, 1) * 255
        # contiguous first: broadcasting over a permuted view is several times slower on CPU
        return (x.permute(0, 3, 1, 2).contiguous() - mean) / std

    def preprocess_images(self, images: Sequence[Any]) -> torch.Tensor:
        """Resize to image_size x image_size (PIL bilinear, no crop) and normalise: [B, 3, S, S] float32."""
        out = []
        for i, image in enumerate(images):
            pil = self._to_rgb(image, f"images[{i}]")
            if pil.size != (self.image_size, self.image_size):
                pil = pil.resize((self.image_size, self.image_size), Image.BILINEAR)
            out.append(torch.from_numpy(np.asarray(pil).astype(np.float32)))
        return self._normalise(torch.stack(out))

    def preprocess_aux_images(self, maps: Sequence[Any]) -> torch.Tensor:
        """Panoptic colour maps -> [B, 3, S, S]; nearest resize keeps the colours."""
        out = []
        for i, m in enumerate(maps):
            if self.aux_map_mode == "official":
                # float map in [0, 1] (colormap / 255), cast to fp16, then normalised as if it were 0..255
                arr = torch.as_tensor(np.asarray(m), dtype=torch.float32)
                if arr.ndim != 3 or arr.shape[-1] != 3:
                    raise ValueError(
                        f"aux_images[{i}]: expected a (height, width, 3) float map, got {tuple(arr.shape)}"
                    )
                if arr.shape[:2] != (self.image_size, self.image_size):
                    arr = torch.nn.functional.interpolate(
                        arr.permute(2, 0, 1)[None], size=(self.image_size,) * 2, mode="nearest"
                    )[0].permute(1, 2, 0)
                out.append(arr.half().float())
            else:
                pil = self._to_rgb(m, f"aux_images[{i}]")
                if pil.size != (self.image_size, self.image_size):
                    pil = pil.resize((self.image_size, self.image_size), Image.NEAREST)
                out.append(torch.from_numpy(np.asarray(pil).astype(np.float32)))
        return self._normalise(torch.stack(out))

    # -- main entry ------------------------------------------------------------------------------
    def __call__(
        self,
        images: Sequence[Any] | Any | None = None,
        text: Sequence[str] | str | None = None,
        aux_text: Sequence[str] | str | None = None,
        aux_images: Sequence[Any] | None = None,
        answers: Sequence[str] | None = None,
        return_tensors: str = "pt",
    ) -> BatchFeature:
        """Encode a batch. One image per sample; questions without ``<image>`` get it from the template."""
        if return_tensors != "pt":
            raise ValueError(f"only return_tensors='pt' is supported, got {return_tensors!r}")
        if text is None:
            raise ValueError("text is required")
        texts = [text] if isinstance(text, str) else list(text)
        if not texts:
            raise ValueError("text is an empty list")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise ValueError(f"text[{i}] must be a string, got {type(t).__name__}")
            if not t.replace(IMAGE_TOKEN, "").strip():
                raise ValueError(f"text[{i}] is empty")
        if images is None:
            raise ValueError("images is required: MoAI takes exactly one image per sample")
        image_list = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(image_list) != len(texts):
            raise ValueError(
                f"number of images ({len(image_list)}) does not match the number of texts ({len(texts)}): "
                f"each sample has exactly one {IMAGE_TOKEN}"
            )
        if answers is not None and len(answers) != len(texts):
            raise ValueError(f"{len(answers)} answers for {len(texts)} texts")

        rows = [
            self.encode_turns([(t, None if answers is None else answers[i])]) for i, t in enumerate(texts)
        ]
        return self.build_batch(
            rows,
            image_list,
            aux_text=[aux_text] if isinstance(aux_text, str) else aux_text,
            aux_images=aux_images,
            with_labels=answers is not None,
        )

    def build_batch(
        self,
        rows: Sequence[EncodedConversation],
        images: Sequence[Any],
        *,
        aux_text: Sequence[str] | None = None,
        aux_images: Sequence[Any] | None = None,
        with_labels: bool = True,
    ) -> BatchFeature:
        """Assemble model inputs from encoded conversations (`encode_turns`), one image each.

        Left-pads ``input_ids`` / ``attention_mask`` / ``mm_token_type_ids`` (and ``labels`` when
        ``with_labels``), preprocesses the images, tokenises the aux texts (``aux_input_ids``,
        ``aux_attention_mask``) and the panoptic maps (``aux_pixel_values``). The one place a batch is built:
        ``__call__`` and the training collator both call it.
        """
        n = len(rows)
        if len(images) != n:
            raise ValueError(f"{len(images)} images for {n} texts")
        pad_id = self.tokenizer.pad_token_id
        data: dict[str, torch.Tensor] = {
            "input_ids": self.pad_left([r.ids for r in rows], pad_id),
            "attention_mask": self.pad_left([[1] * len(r.ids) for r in rows], 0),
            "mm_token_type_ids": self.pad_left([r.streams for r in rows], STREAM_NONE),
            "pixel_values": self.preprocess_images(images),
        }
        if with_labels:
            data["labels"] = self.pad_left([r.labels for r in rows], IGNORE_INDEX)
        if aux_text is not None:
            if len(aux_text) != n:
                raise ValueError(f"{len(aux_text)} aux texts for {n} texts")
            aux_ids = [self.tokenizer(a).input_ids for a in aux_text]
            data["aux_input_ids"] = self.pad_left(aux_ids, pad_id)
            data["aux_attention_mask"] = self.pad_left([[1] * len(a) for a in aux_ids], 0)
        if aux_images is not None:
            if len(aux_images) != n:
                raise ValueError(f"{len(aux_images)} aux images for {n} texts")
            data["aux_pixel_values"] = self.preprocess_aux_images(aux_images)
        return BatchFeature(data=data)

    def batch_decode(self, ids: torch.Tensor | Sequence[Sequence[int]], **kwargs: Any) -> list[str]:
        return self.tokenizer.batch_decode(ids, **kwargs)

    def decode(self, ids: torch.Tensor | Sequence[int], **kwargs: Any) -> str:
        return self.tokenizer.decode(ids, **kwargs)


@dataclass
class ProcessorSettings:
    """What `processor_config.json` stores besides the tokenizer."""

    image_size: int
    num_image_tokens: int
    template: str
    image_mean: list[float]
    image_std: list[float]
    aux_map_mode: str


AutoProcessor.register(MoAIConfig, MoAIProcessor)
