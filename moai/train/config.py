"""Typed training configuration; YAML is its saved form.

Unknown keys are errors, types are checked, and ``--override key=value`` (dotted keys allowed) is parsed
with YAML rules so ``lr=2e-5`` and ``gradient_checkpointing=true`` read as numbers and booleans.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml


@dataclass
class DataSource:
    """One LLaVA-format file of a data mixture."""

    path: str
    """LLaVA conversation JSON (a list) or JSONL (one record a line)."""
    image_root: str | None = None
    """Directory the records' ``image`` paths are relative to (default: the file's directory)."""
    weight: float = 1.0
    """Sampling weight of this file in the mixture (relative to the others)."""
    blank_images: bool = False
    """Blank every image of this file (pixel values zero, the normaliser's mean colour) while its aux text and
    map stay, so that its questions can only be answered from the aux knowledge; `TrainConfig.image_dropout`
    at probability 1 for this file alone. Not in the paper (docs/shapesworld.md, "A no-search aux task in
    the recipe's data")."""
    drop_modules: list[str] = field(default_factory=list)
    """CV modules (``ps``, ``owod``, ``sgg``, ``ocr``) whose outputs are removed from the aux text and map of
    every record of this file (needs ``aux: cache`` or ``perceive``), as ``moai predict --aux drop:...`` removes
    them at inference; module dropout draws among the modules left. A file whose aux holds the OCR text alone,
    beside the same file with the whole aux, is an easy and a hard version of one reading task. Not in the
    paper (docs/shapesworld.md, "A short aux beside the whole one")."""
    scenes: str | None = None
    """The ShapesWorld ground truth of this file's images (a world's ``scenes.jsonl``, or its directory), for
    the referent target (`TrainConfig.referent_weight`): records are matched to scenes by image file name; a
    record whose scene is missing is reported and skipped. Not in the paper (moai/train/referent.py)."""

    def __post_init__(self) -> None:
        if not (isinstance(self.weight, int | float) and math.isfinite(self.weight) and self.weight > 0):
            raise ValueError(
                f"data source {self.path}: weight must be a positive number, got {self.weight!r}"
            )
        if self.drop_modules:
            from ..perception.verbalize import MODULES  # heavy: numpy and the perception package

            unknown = sorted(set(self.drop_modules) - set(MODULES))
            if unknown:
                raise ValueError(
                    f"data source {self.path}: drop_modules {unknown} unknown; choose from {', '.join(MODULES)}"
                )


@dataclass
class TrainConfig:
    """Everything one ``moai train`` run needs."""

    output_dir: str = "runs/moai"
    """Run directory: checkpoints, metrics.jsonl, TensorBoard events, the saved config."""
    model: str = "tiny"
    """A preset name (tiny | mid | moai-7b) for a random model, or a ``save_pretrained`` directory."""
    base_weights: str | None = None
    """A ``save_pretrained`` directory whose base weights (vision tower, projector, LLM and LM head: every
    weight outside the compressor and the mixers) replace ``model``'s before the run: the MoAI modules
    ``model`` trained move onto another base of the same architecture, e.g. one trained on after the MoAI
    stages, whose own MoAI stages would not start (docs/shapesworld.md, "The MoAI modules moved onto a base
    trained on"). The tokenizer and processor stay ``model``'s. None keeps ``model``'s base."""
    step: Literal["base", "step1", "step2"] = "step2"
    """``step1``: mixer in sample mode (one random expert per stream and layer, gates unused); ``step2``:
    gated mixer, compressor + experts + gates trained; ``base``: projector (and optionally LLM/LoRA)
    without MoAI modules, to make a base model from scratch."""
    trainable: Literal[
        "moai", "moai+plora", "moai+lora", "mixers", "all", "projector", "projector+llm", "projector+lora"
    ] = "moai"
    """What trains: MoAI modules only (the official recipe), plus PLoRA, plus peft LoRA adapters on the LLM,
    the mixers alone (the compressor frozen), everything, or for ``base`` the projector (+ the LLM, or + LoRA adapters on it). LoRA adapters are merged
    into the LLM weights of ``final/``."""
    lora_r: int = 16
    """Rank of the peft LoRA adapters (``...+lora`` policies)."""
    lora_alpha: float = 32.0
    """LoRA scaling numerator (the update is ``alpha / r * B A``)."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA input."""
    lora_targets: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Decoder-layer projections (attention and MLP) that get an adapter."""
    mixer_layers: list[int] | None = None
    """Decoder layers that get a mixer, overriding the model's (None keeps them). Mixers added to a base
    model trained without them start from their (identity) initialisation."""
    expert_init_std: float = 0.0
    """Standard deviation of a normal init of every expert's last ``o`` factor in the mixers this run creates
    (a preset's, or those added to a saved model); 0 keeps it zero, so each new expert starts as the
    identity. A small value lets the other expert factors get gradients from the first step."""
    moai_init: Literal["config", "fan_in"] = "config"
    """Initialisation of the MoAI modules this run creates (the mixers it adds, and the compressor of a model
    that had no mixers, so never trained it): ``config`` as the model config says (normal with the LLM's
    ``initializer_range``, 0.02 in MoAI-7B); ``fan_in``: every linear weight from N(0, 1 / in_features), so
    activations keep their scale through the low-rank experts of a narrow model (at width 128 and rank 32 the
    0.02 init leaves the expert query / key gradients around 1e-10, under Adam's epsilon: docs/shapesworld.md).
    The expert output factors marked for zero init stay zero either way (``expert_init_std`` still applies)."""
    expert_qk_init: Literal["independent", "tied"] = "independent"
    """Initialisation of the query and key projections of the experts this run creates: ``independent``, each
    its own draw; ``tied``, every expert's key factors start as copies of its query factors (then train apart),
    so that a token starts attending to the keys most like itself (the "is this word among the aux tokens?"
    match an AUX expert has to find). Not in the official recipe; measured in docs/shapesworld.md, "Matching
    a word in the aux"."""
    compressor_query_scale: float = 1.0
    """Multiplies the query weights of every compressor block when this run starts a never-trained compressor
    (a preset's, or that of a saved model without mixers), after ``moai_init``. Above 1 each latent starts
    attending to a few aux tokens instead of nearly their mean, so the 64 compressed tokens differ from one
    another and between images from the first step (docs/shapesworld.md, "What the recipe had to get
    right"); 1 keeps the init as it is."""
    compat: Literal["keep", "official"] = "keep"
    """``official``: the MoAI modules this run creates behave as the official model's (docs/official.md §4):
    no aux positions and no key padding mask in the compressor, ``prompt`` scope, experts without the
    identity init, float16 gate softmax, RoPE positions 0..S-1. Only for a run that creates the compressor
    (a preset, or a saved model without mixers); a model trained so keeps it in its config. ``keep``: as the
    model's config says."""
    mixer_scope: Literal["prompt", "causal"] | None = None
    """Override the model's mixer scope (None keeps the checkpoint's)."""
    aux_text_layers: int | None = None
    """``compressor_config.text_layers`` of a compressor this run creates (a preset's, or that of a saved model
    without mixers): the aux text goes through that many frozen LLM layers before the compressor. None keeps
    the model's; a trained compressor keeps its own (another value is an error)."""
    compressor_passthrough: bool | None = None
    """``compressor_config.passthrough`` of a compressor this run creates (a preset's, or that of a saved model
    without mixers): no compression, the AUX experts attend to every aux token. None keeps the model's; a
    trained compressor keeps its own (another value is an error). Not with ``compat: official``."""
    aux_encoder_layers: int | None = None
    """``compressor_config.encoder_layers`` of a compressor this run creates (a preset's, or that of a saved
    model without mixers): trainable self-attention blocks over the aux tokens before the compressor. None
    keeps the model's; a trained compressor keeps its own (another value is an error). Not with ``compat:
    official``."""
    mixer_rank: int | None = None
    """``mixer_config.rank`` (the experts' low-rank width) of a model whose mixers this run creates all of (a
    preset, or a saved model without mixers). None keeps the model's; a model with trained mixers keeps its
    own (another value is an error)."""
    mixer_heads: int | None = None
    """``mixer_config.num_heads`` (attention heads of every expert, each ``hidden_size / heads`` wide) of a model
    whose mixers this run creates all of, as ``mixer_rank``."""
    mixer_sink: bool | None = None
    """``mixer_config.attention_sink`` (a learned key and value each expert may attend to instead of any token)
    of a model whose mixers this run creates all of, as ``mixer_rank``. Not with ``compat: official``."""
    mixer_residual: bool | None = None
    """``mixer_config.into_residual`` (the mixer's change also enters the residual stream) of a model whose
    mixers this run creates all of, as ``mixer_rank``. Not with ``compat: official``."""
    data: list[DataSource] = field(default_factory=list)
    """The data mixture."""
    aux: Literal["record", "cache", "perceive", "none"] = "record"
    """Where the aux text comes from: the record's ``aux_text`` field, the perception cache of
    ``moai perceive --data`` (``perception_cache``), perception computed on the fly, or none."""
    perception_cache: str | None = None
    """Cache directory written by ``moai perceive --data`` (for ``aux: cache``)."""
    perception_preset: str | None = None
    """Perception preset (``default`` | ``official``) run for ``aux: perceive``; with ``aux: cache`` it is
    checked against the cache's config when given."""
    verbalizer: Literal["official", "v2", "compact", "compact-all", "compact-text-first"] = "official"
    """How perception becomes the aux text (``v2``, ``compact``, ``compact-all`` (compact with every relation
    instead of the 10 best) and ``compact-text-first`` (compact with the OCR words first) are for new models,
    see moai/perception/verbalize_v2.py and verbalize_compact.py)."""
    module_dropout: float = 0.0
    """Probability that one CV module's (PS, OWOD, SGG, OCR) outputs are removed from a sample's aux text
    and map, each module independently, drawn per sample and seeded by (seed, global position); needs
    ``aux: cache`` or ``perceive``. Trains a model that answers from whichever modules are left."""
    image_dropout: float = 0.0
    """Probability that a sample's image is blanked (its pixel values set to zero, the normaliser's mean
    colour) while its aux text and map stay, drawn per sample and seeded by (seed, global position): such a
    sample can only be answered from the aux knowledge, so the MoAI modules must learn to read it. Not in the
    paper; measured in docs/shapesworld.md, "Matching a word in the aux" (the ShapesWorld model then leans on
    its aux without scoring higher)."""
    referent_weight: float = 0.0
    """Weight of the referent target's loss beside the answer's (0: off): a linear head regresses the centre of
    each shape a prompt names as ``the {colour} {kind}`` from the LLM's hidden state at the phrase, the
    ground truth coming from the data sources' ``scenes`` (moai/train/referent.py). It teaches a base trained
    from nothing to look a referent up among the image tokens, which the position questions' one yes/no token
    does not (docs/shapesworld.md, "Position with a target for the lookup"). One process only. Not in the
    paper."""
    referent_layer: int = 2
    """Which hidden state the referent head reads: 0 the embeddings, ``i`` the output of the first ``i`` LLM
    layers (decoder layers 0..i-1). With a ``trainable`` policy that trains MoAI modules alone (``moai``,
    ``mixers``) it must be past the first mixer layer, else its loss reaches nothing that trains."""
    image_slot: Literal["template", "as_written"] = "template"
    """Where a training prompt puts the image: ``template``, the chat template's slot, before the user's turn,
    where MoAI-7B's prompt has it (docs/model.md §3) and where the engine, `moai predict`, the server and the
    evaluations ask (LLaVA data's ``<image>`` marker in the first question is taken out and the image put
    there); ``as_written``, where the record's marker stands (in the user's turn, as LLaVA data writes it: a
    prompt that inference never asks; the ShapesWorld models shipped before this option were trained so,
    docs/shapesworld.md, "The image in the prompt")."""
    split_turns: bool = False
    """Train on each question-answer turn of a multi-turn conversation as a sample of its own, the image
    with each question (in ``image_slot``, so each sample is a one-question prompt as `moai predict` and the
    engine ask). With the mixer's ``prompt`` scope only the first question of a conversation enters the
    mixer, so the whole-conversation form trains the aux path on one question a conversation
    (docs/shapesworld.md, "One question a sample")."""
    max_length: int = 2048
    """Maximum tokens per sample (image tokens included); longer samples are truncated at the end."""
    batch_size: int = 4
    """Samples per process per micro-batch."""
    grad_accum: int = 1
    """Micro-batches per optimizer step."""
    max_steps: int = 100
    """Optimizer steps to run."""
    lr: float = 2e-5
    """Peak learning rate (official config value 2e-5)."""
    min_lr: float = 1e-6
    """Final learning rate of the cosine schedule (official 1e-6)."""
    other_lr_scale: float = 1.0
    """Learning rate of the trained parameters outside the MoAI modules (LLM, LM head, projector, vision
    tower, PLoRA, LoRA adapters: whatever ``trainable`` adds to compressor, experts and gates) as a fraction of
    ``lr`` (and ``min_lr``), so a policy that also trains the LLM can move it slower than the new modules; 1:
    one learning rate for all."""
    warmup_steps: int = 0
    """Linear warm-up steps before the cosine decay."""
    weight_decay: float = 0.0
    """AdamW weight decay (official 0)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW betas."""
    adam_eps: float = 1e-8
    """AdamW epsilon (the PyTorch default); larger values damp the steps of parameters whose gradients are
    tiny, as at the identity start of the mixers."""
    max_grad_norm: float = 10.0
    """Gradient clipping norm (official GRAD_MAX 10); 0 disables."""
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    """Autocast precision (bf16/fp16 where the device supports it)."""
    gradient_checkpointing: bool = False
    """Recompute decoder layers in backward to save memory."""
    save_every: int = 0
    """Write a checkpoint every N optimizer steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep."""
    log_every: int = 1
    """Write metrics every N optimizer steps."""
    seed: int = 0
    """Seed of model init, data order and step-1 expert draws."""
    strict: bool = False
    """Abort on the first bad record instead of reporting and skipping it."""
    tensorboard: bool = True
    """Also write TensorBoard events (when tensorboard is installed)."""
    progress: bool = True
    """Show a progress bar with ETA."""

    def __post_init__(self) -> None:
        for name, low, high in _RANGES:
            value = getattr(self, name)
            if value is None:  # an optional field left unset
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"config.{name}: must be a finite number, got {value!r}")
            if value < low or (high is not None and value >= high):
                bound = f">= {low}" if high is None else f"in [{low}, {high})"
                raise ValueError(f"config.{name}: must be {bound}, got {value!r}")
        if self.min_lr > self.lr:
            raise ValueError(f"config.min_lr: {self.min_lr} is above lr {self.lr}")
        for i, beta in enumerate(self.betas):
            if not 0 <= beta < 1:
                raise ValueError(f"config.betas[{i}]: must be in [0, 1), got {beta!r}")

    # -- (de)serialisation ---------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        return _build(cls, data, "config")

    @classmethod
    def load(
        cls, path: str | Path, overrides: list[str] | None = None, root: str | Path | None = None
    ) -> TrainConfig:
        """The config in the YAML file ``path`` with ``KEY=VALUE`` ``overrides`` applied; relative data paths
        (a source's ``path`` and ``image_root``) are resolved against ``root`` (default: the file's directory)."""
        path = Path(path)
        if path.is_dir():
            raise ValueError(f"training config {path} is a directory, not a YAML file")
        if not path.is_file():
            raise FileNotFoundError(f"training config {path} not found")
        data = _load_yaml(path) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: the top level must be a mapping of config keys")
        for item in overrides or []:
            apply_override(data, item)
        try:
            config = cls.from_dict(data)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
        base = path.parent if root is None else Path(root)
        for source in config.data:  # data paths are relative to the config file (or root)
            if not Path(source.path).is_absolute():
                source.path = str(base / source.path)
            if source.image_root is not None and not Path(source.image_root).is_absolute():
                source.image_root = str(base / source.image_root)
            if source.scenes is not None and not Path(source.scenes).is_absolute():
                source.scenes = str(base / source.scenes)
        return config

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["betas"] = list(self.betas)
        return out

    def save(self, path: str | Path) -> None:
        Path(path).write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


def _load_yaml(path: Path) -> Any:
    """The YAML document of ``path``; a malformed one is a one-line error naming the file and line."""
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ValueError(f"{path}{_yaml_where(err)}: malformed YAML: {_yaml_reason(err)}") from None
    except RecursionError:
        raise ValueError(f"{path}: malformed YAML: nested too deeply") from None


def _yaml_where(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None)
    return f":{mark.line + 1}" if mark is not None else ""


def _yaml_reason(err: yaml.YAMLError) -> str:
    return " ".join(str(getattr(err, "problem", None) or err).split())


# (field, lowest allowed value, first value above the range or None): checked on every config whose field is set
_RANGES: tuple[tuple[str, float, float | None], ...] = (
    ("lora_r", 1, None),
    ("lora_alpha", 0, None),
    ("lora_dropout", 0, 1),
    ("module_dropout", 0, 1),
    ("image_dropout", 0, 1),
    ("referent_weight", 0, None),
    ("referent_layer", 0, None),
    ("max_length", 1, None),
    ("batch_size", 1, None),
    ("grad_accum", 1, None),
    ("max_steps", 1, None),
    ("lr", 0, None),
    ("min_lr", 0, None),
    ("other_lr_scale", 0, None),
    ("warmup_steps", 0, None),
    ("weight_decay", 0, None),
    ("adam_eps", 1e-30, None),
    ("expert_init_std", 0, None),
    ("compressor_query_scale", 1e-6, None),
    ("max_grad_norm", 0, None),
    ("save_every", 0, None),
    ("keep_checkpoints", 1, None),
    ("log_every", 1, None),
    ("mixer_rank", 1, None),
    ("mixer_heads", 1, None),
    ("aux_encoder_layers", 0, None),
)


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply ``key=value`` (dotted key for nesting; value parsed as YAML) to a raw config mapping."""
    if "=" not in item:
        raise ValueError(f"override {item!r} must look like key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except (yaml.YAMLError, RecursionError) as err:
        reason = _yaml_reason(err) if isinstance(err, yaml.YAMLError) else "nested too deeply"
        raise ValueError(f"override {item!r}: malformed YAML value: {reason}") from None
    parts = key.strip().split(".")
    if not all(parts):
        raise ValueError(f"override {item!r}: empty key")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ValueError(f"override {item!r}: {part} is not a mapping")
        node = child
    node[parts[-1]] = value


def _check(expected: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(expected)
    if expected is Any:
        return value
    if origin is Literal:
        if value not in typing.get_args(expected):
            raise ValueError(f"{where}: {value!r} is not one of {list(typing.get_args(expected))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(expected):
            try:
                return _check(option, value, where)
            except ValueError as err:
                errors.append(str(err))
        raise ValueError(f"{where}: {value!r} does not match {expected}")
    if expected is type(None):
        if value is not None:
            raise ValueError(f"{where}: expected null, got {value!r}")
        return None
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        (item_type,) = typing.get_args(expected)
        return [_check(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(typing.get_args(expected)):
            raise ValueError(f"{where}: expected {len(typing.get_args(expected))} values, got {value!r}")
        return tuple(
            _check(t, v, f"{where}[{i}]") for i, (t, v) in enumerate(zip(typing.get_args(expected), value))
        )
    if dataclasses.is_dataclass(expected):
        if isinstance(value, expected):
            return value
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
        return _build(expected, value, where)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is float and isinstance(value, str):
        try:  # YAML 1.1 reads "3e-4" (no dot) as a string
            return float(value)
        except ValueError:
            pass
    if expected in (int, float) and isinstance(value, bool):
        raise ValueError(f"{where}: expected {expected.__name__}, got a boolean")
    if not isinstance(value, expected):
        raise ValueError(f"{where}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; known keys: {sorted(names)}")
    kwargs = {k: _check(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from err


def trained_image_slot(run: Path) -> str | None:
    """The ``image_slot`` the run in ``run`` was started with, from its config.yaml: ``as_written`` when the file
    predates the option (`moai train` then encoded the image where the data wrote it); None without the file."""
    path = run / "config.yaml"
    if not path.is_file():
        return None
    saved = _load_yaml(path) or {}
    return str(saved.get("image_slot", "as_written"))
