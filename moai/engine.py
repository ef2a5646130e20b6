"""The inference engine: image -> perception -> verbalization -> processor -> generate (paper §3, Fig. 2).

``Engine.load(path)`` loads a saved MoAI directory with the perception preset and verbalizer it was trained
with (``aux_config.json`` in the directory, written by ``moai train``); ``answer`` runs the whole
pipeline batched. Perception results, and the aux text and colour map verbalized from them, are kept per
image content hash in bounded LRU caches, so asking several questions about one image perceives and
verbalizes it once. ``moai predict`` and ``moai demo`` use this class;
nothing else re-implements the pipeline.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .io import ImageSource, load_image
from .model.mixer import gate_statistics
from .model.modeling import MoAIForConditionalGeneration
from .model.processing import MoAIProcessor
from .perception.config import PerceptionConfig
from .perception.run import Perceiver, resolve_device
from .perception.settings import AuxSettings
from .perception.types import Perception
from .perception.verbalize import MODULES, aux_inputs

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "checkpoints" / "moai-tiny-shapes"
"""The bundled ShapesWorld model (docs/shapesworld.md), the default of every inference command."""

ONE_THREAD_WORK = 1e8
"""``threads="auto"``: a forward whose prompt tokens (batch x length) times the LLM width squared is below this
runs on one intra-op thread. Its matrix products are too small for a second OpenMP thread to pay for waking it:
on the 2-core machine one thread was 2.7x faster for the bundled model at batch 1 and 1.7x at batch 8, and
break-even at about 1e8 (batch 8 of 80 tokens, 384 wide; ``bench/infer_threads.py``, docs/serve.md)."""


def parse_aux(value: str) -> tuple[str, ...]:
    """``--aux on|off|drop:ocr,sgg``: the modules whose aux is removed (``on``: none, ``off``: all four)."""
    if value == "on":
        return ()
    if value == "off":
        return MODULES
    if value.startswith("drop:"):
        names = tuple(n.strip() for n in value[5:].split(",") if n.strip())
        bad = [n for n in names if n not in MODULES]
        if bad or not names:
            raise ValueError(f"--aux {value!r}: name modules from {', '.join(MODULES)} after drop:")
        return names
    raise ValueError(f"--aux {value!r}: expected on, off or drop:MODULE[,MODULE...]")


@dataclass
class Answer:
    """One answer of `Engine.answer`."""

    text: str
    """The generated answer (special tokens removed, stripped)."""
    aux_text: str
    """The verbalized aux knowledge the model read."""
    perception: Perception | None = field(default=None, repr=False)
    """What the four CV modules found (before any ``drop``)."""
    gate_weights: dict[str, dict[str, float]] | None = None
    """On request (``gates=True``): the mean gate weight of each expert per mixer layer over the prompt's
    image tokens (``I_*``) and language tokens (``L_*``), ``{"layer1": {"I_AUX": 0.2, ...}}``."""


class Engine:
    """A loaded model, its processor and its perception models: ``answer`` runs the MoAI pipeline.

    Args:
        model: a MoAI model (eval mode is set).
        processor: its processor.
        perceiver: the perception models (None: built on first use from ``inference.perception_preset``).
        aux_settings: perception preset, verbalizer and map style the model expects.
        cache_size: perception results (and verbalized aux inputs) kept per image content hash (LRU).
        threads: intra-op threads of the model's forward passes: ``"auto"`` (one thread for a small forward,
            `ONE_THREAD_WORK`, else torch's setting), a number of threads, or 0 for torch's setting always.
            Set per call in the calling thread and restored after it.
    """

    def __init__(
        self,
        model: MoAIForConditionalGeneration,
        processor: MoAIProcessor,
        perceiver: Perceiver | None = None,
        aux_settings: AuxSettings | None = None,
        cache_size: int = 256,
        threads: int | str = "auto",
    ) -> None:
        if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 0):
            raise ValueError(f"threads {threads!r}: expected 'auto' or a number of threads >= 0")
        self.threads = threads
        self.model = model.eval()
        self.processor = processor
        self.aux_settings = aux_settings or AuxSettings()
        self._perceiver = perceiver
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Perception] = OrderedDict()
        self._aux_cache: OrderedDict[tuple[str, frozenset[str]], tuple[str, np.ndarray]] = OrderedDict()
        self._worker: ThreadPoolExecutor | None = None

    @property
    def worker(self) -> ThreadPoolExecutor:
        """The one thread that runs this engine's background ``generate`` calls (`stream`, the server's
        batches). One thread, not one per call: every new thread that runs torch ops gets its own OpenMP
        team, and idle teams slowed a busy one by a third on a 2-core machine (bench/serve.py)."""
        if self._worker is None:
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moai-generate")
        return self._worker

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu", **kwargs: Any) -> Engine:
        """Load a ``save_pretrained`` MoAI directory (default: the bundled ShapesWorld model) onto ``device``
        (``"auto"``: CUDA when there is a device, else the CPU; perception runs where its preset says)."""
        path = Path(path) if path is not None else DEFAULT_MODEL
        device = resolve_device(device)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"model {path}: not a saved MoAI directory (no config.json)")
        from transformers.utils import logging as hf_logging

        previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            model = MoAIForConditionalGeneration.from_pretrained(path).to(device)
        finally:
            hf_logging.set_verbosity(previous)
            if bars:
                hf_logging.enable_progress_bar()
        processor = MoAIProcessor.from_pretrained(path)
        return cls(model, processor, aux_settings=AuxSettings.load(path), **kwargs)

    # -- perception ------------------------------------------------------------------------------
    @property
    def perceiver(self) -> Perceiver:
        if self._perceiver is None:
            self._perceiver = Perceiver(PerceptionConfig.from_preset(self.aux_settings.perception_preset))
        return self._perceiver

    def perceive(self, images: Sequence[Image.Image]) -> list[Perception]:
        """Perception of each image, from the in-process cache (keyed by pixel content) when seen before."""
        return self._perceive_keyed(images)[1]

    def _perceive_keyed(self, images: Sequence[Image.Image]) -> tuple[list[str], list[Perception]]:
        """(pixel hash, perception) of each image (`perceive`)."""
        keys = [_pixel_hash(img) for img in images]
        found = {k: self._cache[k] for k in keys if k in self._cache}
        todo = {k: img for k, img in zip(keys, images) if k not in found}
        if todo:  # more new images than the cache holds still get their perception: kept in ``found``
            found.update(zip(todo, self.perceiver.perceive_loaded(list(todo.values()))))
        for key in keys:
            self._remember(key, found[key])
        return keys, [found[k] for k in keys]

    def _remember(self, key: str, perception: Perception) -> None:
        """Put (or refresh) ``key`` as the most recently used entry; drop the least recent over ``cache_size``."""
        self._cache[key] = perception
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def _cached_aux_inputs(
        self, key: str, perception: Perception, drop: Iterable[str]
    ) -> tuple[str, np.ndarray]:
        """`aux_inputs` of the perception of the image with pixel hash ``key``, verbalized once per drop set.
        The colour map is shared between calls: read it, never write it."""
        slot = (key, frozenset(drop))
        if slot not in self._aux_cache:
            self._aux_cache[slot] = self.aux_inputs(perception, slot[1])
            while len(self._aux_cache) > self.cache_size:
                self._aux_cache.popitem(last=False)
        self._aux_cache.move_to_end(slot)
        return self._aux_cache[slot]

    def aux_inputs(self, perception: Perception, drop: Iterable[str] = ()) -> tuple[str, np.ndarray]:
        """The aux text and panoptic map of a perception with the modules in ``drop`` removed."""
        return aux_inputs(perception, self.aux_settings.verbalizer, self.aux_settings.map_style, drop)

    # -- answering -------------------------------------------------------------------------------
    @torch.no_grad()
    def answer(
        self,
        images: Sequence[ImageSource | Image.Image],
        questions: Sequence[str],
        *,
        drop: Iterable[str] = (),
        perceptions: Sequence[Perception] | None = None,
        history: Sequence[Sequence[tuple[str, str]]] | None = None,
        gates: bool = False,
        max_new_tokens: int = 16,
        **generation: Any,
    ) -> list[Answer]:
        """Answer ``questions[i]`` about ``images[i]`` in one batched ``generate`` (greedy by default).

        Args:
            images: files, bytes or PIL images (one per question).
            questions: the questions.
            drop: modules whose aux is removed (``MODULES``), the inference-time ablation.
            perceptions: use these instead of perceiving the images (precomputed, or another image's to
                check that the answers follow the aux knowledge).
            history: earlier ``(question, answer)`` turns per sample (multi-turn), or None.
            gates: also return the gate weights of the prompt (one extra forward pass).
            max_new_tokens / generation: passed to ``generate``.
        """
        if not questions:
            if len(images):
                raise ValueError(f"{len(images)} images for 0 questions")
            return []
        batch, aux, perceptions = self.prepare(images, questions, drop, perceptions, history)
        new = self.generate(batch, max_new_tokens, **generation)
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        weights = self.gate_weights(batch) if gates else [None] * len(texts)
        return [Answer(t.strip(), a, p, w) for t, (a, _), p, w in zip(texts, aux, perceptions, weights)]

    def prepare(
        self,
        images: Sequence[ImageSource | Image.Image],
        questions: Sequence[str],
        drop: Iterable[str] = (),
        perceptions: Sequence[Perception] | None = None,
        history: Sequence[Sequence[tuple[str, str]]] | None = None,
        answers: Sequence[str] | None = None,
    ) -> tuple[Any, list[tuple[str, np.ndarray]], list[Perception]]:
        """The model inputs of a batch: images perceived (or ``perceptions``), aux verbalized with ``drop``
        removed, prompts in the conversation template. With ``answers`` each question's answer closes its
        conversation and the batch has ``labels`` (teacher forcing); without, it ends at the answer prompt.
        Returns (batch, (aux text, colour map) per sample, perceptions)."""
        if len(images) != len(questions):
            raise ValueError(f"{len(images)} images for {len(questions)} questions")
        if history is not None and len(history) != len(questions):
            raise ValueError(f"{len(history)} histories for {len(questions)} questions")
        if answers is not None and len(answers) != len(questions):
            raise ValueError(f"{len(answers)} answers for {len(questions)} questions")
        loaded = [img if isinstance(img, Image.Image) else load_image(img) for img in images]
        drop = tuple(drop)
        if perceptions is None:
            keys, perceptions = self._perceive_keyed(loaded)
            aux = [self._cached_aux_inputs(k, p, drop) for k, p in zip(keys, perceptions)]
        elif len(perceptions) != len(loaded):
            raise ValueError(f"{len(perceptions)} perceptions for {len(loaded)} images")
        else:
            aux = [self.aux_inputs(p, drop) for p in perceptions]
        rows = [
            self.processor.encode_turns(
                [*(history[i] if history else ()), (q, answers[i] if answers else None)]
            )
            for i, q in enumerate(questions)
        ]
        batch = self.processor.build_batch(
            rows,
            loaded,
            aux_text=[text for text, _ in aux],
            aux_images=[colour_map for _, colour_map in aux] if self.model.config.use_aux_map else None,
            with_labels=answers is not None,
        ).to(self.model.device)
        return batch, aux, list(perceptions)

    def threads_for(self, input_ids: torch.Tensor) -> int:
        """Intra-op threads for a forward over ``input_ids`` [B, S] (0: leave torch's setting; see ``threads``).
        ``"auto"`` leaves torch's setting on an accelerator, where the CPU threads only launch kernels."""
        if self.threads != "auto":
            return int(self.threads)
        if input_ids.device.type != "cpu":
            return 0
        width = self.model.config.text_config.hidden_size
        return 1 if input_ids.numel() * width**2 < ONE_THREAD_WORK else 0

    @torch.no_grad()
    def generate(self, batch: Any, max_new_tokens: int = 16, **generation: Any) -> torch.Tensor:
        """``model.generate`` on `prepare`'s inputs (greedy unless ``do_sample``; the tokenizer's pad id).
        Returns the new tokens [B, T]. `answer`, `stream` and the server's batches all generate here."""
        generation.setdefault("do_sample", False)
        pad = self.processor.tokenizer.pad_token_id
        with intra_op_threads(self.threads_for(batch["input_ids"])):
            out = self.model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=pad, **generation)
        return out[:, batch["input_ids"].shape[1] :]

    def stream(
        self,
        image: ImageSource | Image.Image,
        question: str,
        *,
        drop: Iterable[str] = (),
        perception: Perception | None = None,
        history: Sequence[tuple[str, str]] | None = None,
        max_new_tokens: int = 16,
        **generation: Any,
    ) -> Iterator[str]:
        """Yield the answer to one question as it is generated (a transformers ``TextIteratorStreamer``;
        ``generate`` runs on the engine's `worker` thread). Joined, the pieces are `answer`'s text before stripping."""
        from transformers import TextIteratorStreamer

        batch, _, _ = self.prepare(
            [image],
            [question],
            drop,
            None if perception is None else [perception],
            None if history is None else [history],
        )
        streamer = TextIteratorStreamer(self.processor.tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def run() -> None:
            try:
                self.generate(batch, max_new_tokens, streamer=streamer, **generation)
            except BaseException as err:  # handed to the consumer below, after the streamer is closed
                failure.append(err)
                streamer.end()

        done = self.worker.submit(run)
        yield from (piece for piece in streamer if piece)
        done.result()
        if failure:
            raise failure[0]

    def gate_weights(self, batch: dict[str, torch.Tensor]) -> list[dict[str, dict[str, float]]]:
        """Per sample: the mean gate weight of each expert per mixer layer over the prompt (`gate_statistics`)."""
        with intra_op_threads(self.threads_for(batch["input_ids"])):
            out = self.model(**batch)
        layers = self.model.language_model.mixer_layers
        streams = batch["mm_token_type_ids"]
        if not out.gate_weights:
            return [{} for _ in range(streams.shape[0])]
        return [
            gate_statistics(tuple(w[i : i + 1] for w in out.gate_weights), streams[i : i + 1], layers)
            for i in range(streams.shape[0])
        ]


@contextmanager
def intra_op_threads(threads: int) -> Iterator[None]:
    """Run the block on ``threads`` intra-op threads (0: as set), then restore torch's setting. OpenMP's
    thread count is a per-thread setting, so a forward on another thread (the server's event loop) keeps its own."""
    before = torch.get_num_threads()
    if not threads or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pixel_hash(image: Image.Image) -> str:
    """sha256 of an image's mode, size and pixels: the same picture from any file format hits the cache."""
    digest = hashlib.sha256(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()
