"""Training data: LLaVA conversation files, validation, a weighted mixture, and the collator.

Records keep the LLaVA format unchanged::

    {"id": "...", "image": "relative/path.png",
     "conversations": [{"from": "human", "value": "<image>\\nQ1"}, {"from": "gpt", "value": "A1"}, ...]}

plus an optional ``aux_text`` (the verbalized perception) and ``aux_map`` (a panoptic colour-map image).
A bad record is reported with file, line and reason and skipped (or, with ``strict``, aborts the run);
it is never dropped silently. A sample whose labels are all masked after truncation (the LLaVA
"tokenization mismatch -> loss 0" trap) is counted and reported, never trained on.
"""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..io import ImageLoadError, Problem, load_image, open_guarded
from ..model.constants import IGNORE_INDEX, IMAGE_TOKEN
from ..model.processing import EncodedConversation, MoAIProcessor
from ..perception import Perceiver, PerceptionCache, PerceptionConfig
from ..perception.types import Perception
from ..perception.verbalize import MODULES, aux_inputs
from .config import DataSource
from .referent import PhraseTokens, read_referents, referent_targets


class DataError(ValueError):
    """A bad record under ``strict``: names the file, line and reason."""


@dataclass(frozen=True)
class Example:
    """One validated conversation."""

    id: str
    image: Path
    turns: tuple[tuple[str, str], ...]
    aux_text: str
    aux_map: Path | np.ndarray | None
    """A panoptic colour-map image file, or the map computed from perception (H, W, 3), or None."""
    source: str
    line: int
    perception: Perception | None = None
    """What perception found (``aux: cache`` / ``perceive``), kept for module dropout; None otherwise."""
    blank_image: bool = False
    """Blank this sample's image in the batch, its aux kept (its file's `DataSource.blank_images`)."""
    drop_modules: tuple[str, ...] = ()
    """CV modules removed from this sample's aux text and map (its file's `DataSource.drop_modules`)."""
    referents: tuple[tuple[str, tuple[float, float]], ...] = ()
    """(phrase, centre in [-1, 1]) of the shapes its scene names uniquely, for the referent target (its file's
    `DataSource.scenes`; moai/train/referent.py)."""


@dataclass
class DataReport:
    """What loading and encoding found; printed in the run summary."""

    loaded: int = 0
    problems: list[Problem] = field(default_factory=list)
    fully_masked: list[Problem] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        reasons = Counter(p.reason.split(":")[0] for p in self.problems)
        return {
            "loaded": self.loaded,
            "skipped_bad_records": len(self.problems),
            "skipped_fully_masked": len(self.fully_masked),
            **{f"bad: {k}": v for k, v in reasons.items()},
        }


def _records(path: Path) -> list[tuple[int, Any]]:
    """(line or index, record or problem text) pairs from a JSON list or a JSONL file.

    A malformed ``.json`` file is one problem at the line of the syntax error; a malformed JSONL line (or
    one that is not UTF-8) is a problem of that line only.
    """
    raw = path.read_bytes()
    if path.suffix == ".json":
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError as err:
            return [(raw[: err.start].count(b"\n") + 1, f"not UTF-8 text: byte {err.start}")]
        except json.JSONDecodeError as err:
            return [(err.lineno, f"malformed JSON: {err.msg} (column {err.colno})")]
        except RecursionError:
            return [(1, "malformed JSON: nested too deeply")]
        if not isinstance(data, list):
            return [(1, "malformed JSON: the top level of a .json data file must be a list of records")]
        return [(i + 1, rec) for i, rec in enumerate(data)]
    out: list[tuple[int, Any]] = []
    for lineno, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            out.append((lineno, json.loads(line.decode("utf-8"))))
        except UnicodeDecodeError:
            out.append((lineno, "not UTF-8 text"))
        except json.JSONDecodeError as err:
            out.append((lineno, f"malformed JSON line: {err.msg} (column {err.colno})"))
        except RecursionError:
            out.append((lineno, "malformed JSON line: nested too deeply"))
    return out


def check_image(path: Path) -> str | None:
    """Why ``path`` is not a decodable image, or None; cheap: PNG chunks are CRC-checked without inflating
    the pixels, JPEG is decoded at 1/8 scale, other formats are decoded in full. The header is opened under
    ``moai.io``'s decompression-bomb guard, the limit `_open_rgb` (``moai.io.load_image``) applies later."""
    try:
        with open_guarded(path, str(path)) as im:
            if im.width < 1 or im.height < 1:
                return f"bad image: {path} is {im.width}x{im.height}"
            if im.format == "PNG":
                im.verify()
            else:
                im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
                im.load()
    except ImageLoadError as err:
        return _bad_image(path, err.reason)
    except (OSError, SyntaxError, ValueError) as err:
        return _bad_image(path, str(err).replace(str(path), "").strip(" '") or type(err).__name__)
    return None


def _bad_image(path: Path, reason: str) -> str:
    """``bad image: PATH: reason``, or ``...: empty file`` for a zero-byte file whatever the decoder said."""
    empty = path.is_file() and path.stat().st_size == 0
    return f"bad image: {path}: {'empty file' if empty else reason}"


def validate_record(
    record: Any, image_root: Path, check: Callable[[Path], str | None] = check_image
) -> tuple[Example | None, str | None]:
    """Check one record (its images decoded by ``check``); return (example, None) or (None, reason)."""
    if isinstance(record, str):
        return None, record
    if not isinstance(record, dict):
        return None, f"not a JSON object: {type(record).__name__}"
    image = record.get("image")
    if not isinstance(image, str) or not image:
        return None, "missing image: the record has no 'image' path (text-only records are not supported)"
    image_path = image_root / image
    if not image_path.is_file():
        return None, f"missing image file: {image_path}"
    bad_image = check(image_path)
    if bad_image is not None:
        return None, bad_image
    convs = record.get("conversations")
    if not isinstance(convs, list) or not convs:
        return None, "no conversations: 'conversations' must be a non-empty list"
    turns, question = [], None
    for i, turn in enumerate(convs):
        if not isinstance(turn, dict):
            return None, f"bad turn: turn {i} is not an object"
        who, value = turn.get("from"), turn.get("value")
        if not isinstance(value, str):
            return None, f"non-string value: turn {i} value is {type(value).__name__}"
        if not value.strip():
            return None, f"empty value: turn {i} is empty"
        expected = "human" if i % 2 == 0 else "gpt"
        if who != expected:
            return (
                None,
                f"bad roles: turn {i} is from {who!r}, expected {expected!r} (human and gpt alternate)",
            )
        if who == "human":
            question = value
        else:
            turns.append((question, value))
    if len(convs) % 2:
        return None, "bad roles: the last human turn has no gpt answer"
    n_images = sum(t["value"].count(IMAGE_TOKEN) for t in convs)
    if n_images == 0:
        return None, f"no {IMAGE_TOKEN}: the conversation has no {IMAGE_TOKEN} token"
    if n_images > 1:
        return None, f"several {IMAGE_TOKEN}: the conversation has {n_images}, MoAI takes one image"
    if IMAGE_TOKEN not in convs[0]["value"]:
        return None, f"misplaced {IMAGE_TOKEN}: it must be in the first human turn"
    aux_text = record.get("aux_text", "")
    if not isinstance(aux_text, str):
        return None, f"non-string value: aux_text is {type(aux_text).__name__}"
    aux_map = record.get("aux_map")
    aux_map_path = image_root / aux_map if isinstance(aux_map, str) else None
    if aux_map_path is not None:
        if not aux_map_path.is_file():
            return None, f"missing image file: aux_map {aux_map_path}"
        bad_map = check(aux_map_path)
        if bad_map is not None:
            return None, f"{bad_map} (aux_map)"
    example = Example(
        id=str(record.get("id", "")),
        image=image_path,
        turns=tuple(turns),
        aux_text=aux_text,
        aux_map=aux_map_path,
        source="",
        line=0,
    )
    return example, None


def load_examples(
    source: DataSource,
    *,
    strict: bool = False,
    report: DataReport | None = None,
    log: Callable[[str], None] = print,
) -> list[Example]:
    """Validated examples of one file; bad records are reported (and skipped, or abort under strict).

    Every record's image (and aux map) is decoded here, before training starts, once per distinct file.
    """
    path = Path(source.path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {path} not found")
    root = Path(source.image_root) if source.image_root else path.parent
    report = report if report is not None else DataReport()
    checked: dict[Path, str | None] = {}

    def check(image: Path) -> str | None:
        if image not in checked:
            checked[image] = check_image(image)
        return checked[image]

    scenes = None
    if source.scenes is not None:
        scenes = read_referents(Path(source.scenes))
    examples = []
    for line, record in _records(path):
        example, reason = validate_record(record, root, check)
        if reason is None and scenes is not None and example.image.stem not in scenes:
            reason = f"no scene {example.image.stem} in scenes {source.scenes}"
        if reason is not None:
            problem = Problem(str(path), line, reason)
            if strict:
                raise DataError(str(problem))
            report.problems.append(problem)
            log(f"skipped {problem}")
            continue
        examples.append(
            Example(
                **{
                    **example.__dict__,
                    "source": str(path),
                    "line": line,
                    "blank_image": source.blank_images,
                    "drop_modules": tuple(source.drop_modules),
                    "referents": scenes[example.image.stem] if scenes is not None else (),
                }
            )
        )
    report.loaded += len(examples)
    return examples


def split_turns(examples: Sequence[Example]) -> list[Example]:
    """One example per question-answer turn, the image token before each later question as the first
    turn has it (`TrainConfig.split_turns`); ids get ``#<turn>``, source and line stay those of the record."""
    out = []
    for example in examples:
        if len(example.turns) == 1:
            out.append(example)
            continue
        for i, (question, answer) in enumerate(example.turns):
            if i > 0:
                question = f"{IMAGE_TOKEN}\n{question}"
            out.append(
                Example(**{**example.__dict__, "id": f"{example.id}#{i}", "turns": ((question, answer),)})
            )
    return out


class Mixture:
    """A deterministic, resumable stream of examples from several files with sampling weights.

    One mixture epoch takes ``ceil(weight * len(file))`` samples of each file (a random subset when the
    weight is below 1, repeats when above), shuffled together; the order of epoch e is seeded by
    (seed, e), so global position p always names the same example: resuming needs only p.
    """

    def __init__(self, files: Sequence[list[Example]], weights: Sequence[float], seed: int) -> None:
        self.files = [f for f in files]
        self.weights = list(weights)
        self.seed = seed
        self.epoch_len = sum(math.ceil(w * len(f)) for f, w in zip(self.files, self.weights) if f)
        if self.epoch_len == 0:
            raise ValueError("the data mixture is empty: no valid examples")
        self._cache: tuple[int, list[Example]] | None = None

    def _epoch(self, epoch: int) -> list[Example]:
        if self._cache is None or self._cache[0] != epoch:
            rng = random.Random(f"{self.seed}-{epoch}")
            order: list[Example] = []
            for examples, weight in zip(self.files, self.weights):
                n = math.ceil(weight * len(examples))
                whole, part = divmod(n, len(examples)) if examples else (0, 0)
                order += examples * whole + rng.sample(examples, part)
            rng.shuffle(order)
            self._cache = (epoch, order)
        return self._cache[1]

    def __getitem__(self, position: int) -> Example:
        return self._epoch(position // self.epoch_len)[position % self.epoch_len]


@dataclass(frozen=True)
class ModuleDropout:
    """Remove each CV module's aux part from a sample with probability ``p`` (docs/shapesworld.md, Ablation).

    The draw for the sample at global mixture position ``position`` is seeded by ``(seed, position)``, so a
    resumed run or another process count draws the same modules for the same sample.
    """

    p: float
    """Probability that one module's outputs are removed from one sample (each module independently)."""
    seed: int
    """Seed of the draws (the run's seed)."""
    verbalizer: str
    """Verbalization style of the remaining perception."""
    map_style: str
    """Panoptic colour-map style of the remaining perception."""

    def dropped(self, position: int) -> tuple[str, ...]:
        rng = random.Random(f"{self.seed}-module-dropout-{position}")
        return tuple(m for m in MODULES if rng.random() < self.p)

    def apply(self, example: Example, position: int) -> Example:
        """``example`` with the drawn modules removed from its aux text and map (unchanged when none is)."""
        drop = self.dropped(position)
        if not set(drop) - set(example.drop_modules) or example.perception is None:
            return example
        drop = tuple(m for m in MODULES if m in drop or m in example.drop_modules)  # the file's own stay out
        aux_text, aux_map = aux_inputs(example.perception, self.verbalizer, self.map_style, drop)
        return Example(**{**example.__dict__, "aux_text": aux_text, "aux_map": aux_map})


@dataclass(frozen=True)
class ImageDropout:
    """Blank a sample's image with probability ``p``, its aux kept (`TrainConfig.image_dropout`).

    The draw for the sample at global mixture position ``position`` is seeded by ``(seed, position)``, as
    `ModuleDropout`'s, so a resumed run or another process count blanks the same samples.
    """

    p: float
    """Probability that one sample's image is blanked."""
    seed: int
    """Seed of the draws (the run's seed)."""

    def dropped(self, position: int) -> bool:
        return random.Random(f"{self.seed}-image-dropout-{position}").random() < self.p


IMAGE_SLOTS = ("template", "as_written")
"""Where a training prompt puts the image (`TrainConfig.image_slot`)."""

_IMAGE_MARKER = re.compile(rf"\s*{re.escape(IMAGE_TOKEN)}\s*")


def image_in_template_slot(turns: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """``turns`` with the ``<image>`` marker of the first question taken out (and the whitespace around it), so
    that the processor puts the image in its chat template's slot: where MoAI-7B's prompt has it (before the
    user's turn, docs/model.md §3) and where the engine, `moai predict`, the server and the evaluations ask.
    LLaVA-format data writes ``<image>\n`` at the start (or ``\n<image>`` at the end) of the first question."""
    (question, answer), *rest = turns
    return ((_IMAGE_MARKER.sub(" ", question).strip(), answer), *rest)


class Collator:
    """Encode, truncate and batch a list of examples through the processor (`MoAIProcessor.build_batch`)."""

    def __init__(
        self,
        processor: MoAIProcessor,
        max_length: int,
        use_aux_map: bool,
        dropout: ModuleDropout | None = None,
        image_dropout: ImageDropout | None = None,
        image_slot: str = "template",
        referents: bool = False,
    ) -> None:
        """``referents``: add the referent target's `REFERENT_KEYS` to every batch (moai/train/referent.py)."""
        if image_slot not in IMAGE_SLOTS:
            raise ValueError(f"image_slot {image_slot!r}: expected one of {', '.join(IMAGE_SLOTS)}")
        self.processor = processor
        self.max_length = max_length
        self.use_aux_map = use_aux_map
        self.dropout = dropout
        self.image_dropout = image_dropout
        self.image_slot = image_slot
        self.phrase_tokens = PhraseTokens(processor.tokenizer) if referents else None

    def encode(self, example: Example) -> EncodedConversation:
        """The example's prompt and answers as the processor encodes them: with the image in the template's
        slot (``image_slot="template"``, as inference asks) or where the record's ``<image>`` stands."""
        turns = image_in_template_slot(example.turns) if self.image_slot == "template" else example.turns
        return self.processor.encode_turns(turns).truncated(self.max_length)

    def check(self, example: Example) -> str | None:
        """Why an example cannot be trained on after truncation, or None."""
        sample = self.encode(example)
        n_image = sum(1 for t in sample.ids if t == self.processor.image_token_id)
        if 0 < n_image < self.processor.num_image_tokens:
            return f"truncated image: max_length {self.max_length} cuts into the image tokens"
        if all(label == IGNORE_INDEX for label in sample.labels[1:]):
            return f"fully masked: no answer token left after truncation to {self.max_length} tokens"
        return None

    def __call__(
        self, examples: Sequence[Example], positions: Sequence[int] | None = None
    ) -> dict[str, torch.Tensor]:
        """A training batch; ``positions`` (the examples' global mixture positions) seed module and image
        dropout."""
        seeded = [d for d in (self.dropout, self.image_dropout) if d is not None and d.p > 0]
        if seeded and (positions is None or len(positions) != len(examples)):
            raise ValueError("module and image dropout need the global position of every example")
        if self.dropout is not None and self.dropout.p > 0:
            examples = [self.dropout.apply(e, p) for e, p in zip(examples, positions)]
        batch = dict(
            self.processor.build_batch(
                [self.encode(e) for e in examples],
                [_open_rgb(e.image, e) for e in examples],
                aux_text=[e.aux_text for e in examples],
                aux_images=[self._aux_map(e) for e in examples] if self.use_aux_map else None,
            )
        )
        blank = torch.tensor([e.blank_image for e in examples])  # [B]
        if self.image_dropout is not None and self.image_dropout.p > 0:
            blank |= torch.tensor([self.image_dropout.dropped(p) for p in positions])
        if blank.any():
            # zero after normalisation = the normaliser's mean colour, a flat canvas; the aux map is not touched
            batch["pixel_values"] = batch["pixel_values"].masked_fill(blank[:, None, None, None], 0.0)
        if self.phrase_tokens is not None:
            batch.update(
                referent_targets(
                    batch["input_ids"], batch["labels"], [e.referents for e in examples], self.phrase_tokens
                )
            )
        return batch

    def _aux_map(self, example: Example) -> Image.Image | np.ndarray:
        if example.aux_map is None:  # nothing segmented: a black map, as the official
            return np.zeros((self.processor.image_size, self.processor.image_size, 3), np.uint8)
        if isinstance(example.aux_map, np.ndarray):
            return example.aux_map
        return _open_rgb(example.aux_map, example)


class AuxResolver:
    """Fill each example's aux text and panoptic map from perception (``aux: cache`` or ``perceive``).

    ``cache``: the cache of ``moai perceive --data`` (refused when it was written with another perception
    config than ``preset``'s, if one is given); an image missing from the cache is a reported problem.
    ``perceive``: run the perception preset on the images now (slow; for small data sets).
    """

    def __init__(self, mode: str, cache_dir: str | None, preset: str | None, verbalizer: str, map_style: str):
        self.mode, self.verbalizer, self.map_style = mode, verbalizer, map_style
        self.config = PerceptionConfig.from_preset(preset) if preset else None
        self.cache = None
        self.perceiver: Perceiver | None = None
        if mode == "cache":
            if not cache_dir:
                raise ValueError(
                    "aux: cache needs perception_cache (the --out directory of moai perceive --data)"
                )
            self.cache = PerceptionCache(cache_dir, config=self.config)
        elif mode == "perceive" and self.config is None:
            raise ValueError("aux: perceive needs perception_preset")

    def resolve(self, examples: list[Example]) -> tuple[list[Example], list[Problem]]:
        """The examples with their aux filled in, and a problem for each image perception has no result for.

        Perception, its aux text and its panoptic map are made once per distinct image and shared by every
        record about it (several conversations about one image cost one map, not one each)."""
        images = list(dict.fromkeys(e.image for e in examples))
        if self.mode == "cache":
            found = [self.cache.get(image) for image in images]
        else:
            if self.perceiver is None:  # the models load on first use and stay with this resolver
                self.perceiver = Perceiver(self.config)
            found = self.perceiver([str(image) for image in images])
        perceptions = {image: p for image, p in zip(images, found) if p is not None}
        resolved: dict[tuple[Path, tuple[str, ...]], tuple[str, np.ndarray]] = {}
        out, problems = [], []
        for example in examples:
            if example.image not in perceptions:
                problems.append(
                    Problem(example.source, example.line, f"not in perception cache: {example.image}")
                )
                continue
            perception, key = perceptions[example.image], (example.image, example.drop_modules)
            if key not in resolved:
                resolved[key] = aux_inputs(perception, self.verbalizer, self.map_style, example.drop_modules)
            aux_text, aux_map = resolved[key]
            out.append(
                Example(
                    **{**example.__dict__, "aux_text": aux_text, "aux_map": aux_map, "perception": perception}
                )
            )
        return out, problems


def _open_rgb(path: Path, example: Example) -> Image.Image:
    """The image through ``moai.io.load_image`` (EXIF orientation, mode conversion, decompression-bomb guard,
    as the processor and perception load it); one that became unreadable after the check is a `DataError`
    naming its record."""
    try:
        return load_image(path)
    except ImageLoadError as err:
        raise DataError(f"{example.source}:{example.line}: {_bad_image(path, err.reason)}") from None
