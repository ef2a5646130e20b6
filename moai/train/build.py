"""The model a training stage starts from (paper arXiv 2403.07508 §3.3): a random preset or a saved model,
with the MoAI modules this stage adds initialised, and the routing of its step (step 1: one random expert per
stream; step 2 and the base: the gates)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..model.configuration import MoAIConfig, official_overrides
from ..model.constants import IMAGE_EXPERTS, LANGUAGE_EXPERTS
from ..model.modeling import MoAIForConditionalGeneration
from ..model.processing import MoAIProcessor
from .config import TrainConfig
from .vocab import PRESET_TOKENIZERS

MODES = {"step1": "sample", "step2": "gated", "base": "gated"}


def build_model(config: TrainConfig) -> tuple[MoAIForConditionalGeneration, MoAIProcessor]:
    """A random preset or a saved model (new modules seeded either way); the processor that goes with it."""
    torch.manual_seed(config.seed)  # a preset's init, or the mixers a saved base model gains
    path = Path(config.model)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ValueError(f"model {path}: not a save_pretrained directory (no config.json)")
        model_config = MoAIConfig.from_pretrained(path)
        _check_mixer_layers(config, model_config)
        had_mixers = bool(model_config.mixer_config.layers)  # else its compressor was never trained either
        if config.compat == "official":
            if had_mixers and model_config.compat != "official":
                raise ValueError(
                    f"compat official: model {path} already has trained MoAI modules in default mode; "
                    "start from its base (a model without mixers)"
                )
            _official_moai_modules(model_config)
        added = []
        if config.mixer_layers is not None:
            added = sorted(set(config.mixer_layers) - set(model_config.mixer_config.layers))
            model_config.mixer_config.layers = list(config.mixer_layers)
        if config.mixer_scope is not None:  # saved with the trained model: set before it is built
            model_config.mixer_config.scope = config.mixer_scope
        _set_compressor_options(config, model_config, trained=had_mixers)
        _set_new_mixer_options(config, model_config, trained=had_mixers)
        model = _load_with_new_mixers(path, model_config, added, new_compressor=not had_mixers)
        if added:
            model.reset_mixers(added)  # new mixers: identity init, whatever the loader filled in
            _init_new_moai_modules(model, config, added, new_compressor=not had_mixers)
        processor = (
            MoAIProcessor.from_pretrained(path)
            if (path / "processor_config.json").is_file()
            else MoAIProcessor.from_config(model.config)
        )
    else:
        try:
            model_config = MoAIConfig.from_preset(config.model)
        except ValueError as err:
            raise ValueError(
                f"model {config.model!r} is neither a save_pretrained directory nor a preset: {err}"
            ) from None
        _check_mixer_layers(config, model_config)
        if config.step == "base":  # a base model has no MoAI modules
            model_config.mixer_config.layers = []
        elif config.mixer_layers is not None:
            model_config.mixer_config.layers = list(config.mixer_layers)
        if config.compat == "official":
            _official_moai_modules(model_config)
        if config.mixer_scope is not None:
            model_config.mixer_config.scope = config.mixer_scope
        _set_compressor_options(config, model_config, trained=False)
        _set_new_mixer_options(config, model_config, trained=False)
        model = MoAIForConditionalGeneration(model_config)
        layers = model_config.mixer_config.layers
        _init_new_moai_modules(model, config, layers, new_compressor=bool(layers))
        tokenizer = PRESET_TOKENIZERS[config.model]() if config.model in PRESET_TOKENIZERS else None
        processor = MoAIProcessor.from_config(model_config, tokenizer=tokenizer)
    if config.base_weights is not None:
        take_base_weights(model, Path(config.base_weights))
    if config.step != "base" and not model.config.mixer_config.layers:
        raise ValueError(f"step {config.step} needs mixer layers, but model {config.model} has none")
    # the step's routing; the step-1 draws come from a generator `train_step` seeds per micro-batch
    model.set_mixer(mode=MODES[config.step], generator=torch.Generator())
    return model, processor


def _official_moai_modules(model_config: MoAIConfig) -> None:
    """``TrainConfig.compat = official``: the official model's compressor, mixer and RoPE-position behaviour
    (`official_overrides`) set on ``model_config`` before the MoAI modules are built; the mixer layers, and the
    base's vision tower, projector, LLM and PLoRA stay as they are."""
    over = official_overrides(model_config.mixer_config.layers)
    model_config.compat = over["compat"]
    model_config.position_ids_from_mask = over["position_ids_from_mask"]
    for key, value in over["compressor"].items():
        setattr(model_config.compressor_config, key, value)
    for key, value in over["mixer"].items():
        if key != "layers":
            setattr(model_config.mixer_config, key, value)


def _set_compressor_options(config: TrainConfig, model_config: MoAIConfig, trained: bool) -> None:
    """``TrainConfig.aux_text_layers``, ``compressor_passthrough`` and ``aux_encoder_layers`` onto
    ``model_config`` (``trained``: the model's compressor is trained, and keeps what it was trained with)."""
    compressor = model_config.compressor_config
    options = (  # key, compressor field, value, what the trained compressor has, why compat official refuses it on
        (
            "aux_text_layers",
            "text_layers",
            config.aux_text_layers,
            "that reads the aux text after {} LLM layers",
            "reads the bare word embeddings (0)",
        ),
        (
            "compressor_passthrough",
            "passthrough",
            config.compressor_passthrough,
            "with passthrough {}",
            "compresses the aux into latents",
        ),
        (
            "aux_encoder_layers",
            "encoder_layers",
            config.aux_encoder_layers,
            "with {} encoder layers",
            "reads the bare word embeddings (0)",
        ),
    )
    for key, field_name, value, trained_has, official_refusal in options:
        current = getattr(compressor, field_name)
        if value is None or value == current:
            continue
        if trained:
            raise ValueError(
                f"{key} {value}: model {config.model} has a trained compressor {trained_has.format(current)}; "
                "start from its base (a model without mixers)"
            )
        if config.compat == "official" and value:
            raise ValueError(f"{key} {value}: compat official {official_refusal}")
        setattr(compressor, field_name, value)  # aux_encoder_layers >= 0: TrainConfig checks its range
    layers = model_config.text_config.num_hidden_layers
    if not 0 <= compressor.text_layers <= layers:
        raise ValueError(
            f"aux_text_layers {compressor.text_layers}: must be 0..{layers} (the LLM's decoder layers)"
        )


def _set_new_mixer_options(config: TrainConfig, model_config: MoAIConfig, trained: bool) -> None:
    """``TrainConfig.mixer_rank``, ``mixer_heads``, ``mixer_sink`` and ``mixer_residual`` onto ``model_config``
    (``trained``: the model's mixers are trained, and keep theirs)."""
    options = (  # key, config field, value, why compat official refuses it switched on (None: it does not)
        ("mixer_rank", "rank", config.mixer_rank, None),
        ("mixer_heads", "num_heads", config.mixer_heads, None),
        ("mixer_sink", "attention_sink", config.mixer_sink, "has no attention sinks"),
        ("mixer_residual", "into_residual", config.mixer_residual, "keeps the un-mixed residual"),
    )
    for key, field_name, value, official_refusal in options:
        current = getattr(model_config.mixer_config, field_name)
        if value is None or value == current:
            continue
        if trained:
            raise ValueError(
                f"{key} {value}: model {config.model} has trained mixers with {field_name} {current}; "
                "start from its base (a model without mixers)"
            )
        if official_refusal and value and config.compat == "official":
            raise ValueError(f"{key} {value}: compat official {official_refusal}")
        setattr(model_config.mixer_config, field_name, value)
    model_config.validate_moai()  # e.g. heads that do not divide the LLM's width


def _load_with_new_mixers(
    path: Path, model_config: MoAIConfig, added: list[int], new_compressor: bool = False
) -> MoAIForConditionalGeneration:
    """``from_pretrained`` (quietly: no progress bar, no loader report about the mixers in ``added``, whose
    weights are expected to be missing, nor, with ``new_compressor``, about compressor weights a base never
    had, e.g. the aux encoder's); any other missing weight is a one-line error naming the directory."""
    from transformers.utils import logging as hf_logging

    previous, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = MoAIForConditionalGeneration.from_pretrained(
            path, config=model_config, output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(previous)
        if bars:
            hf_logging.enable_progress_bar()
    new = tuple(f"model.language_model.layers.{i}.self_attn.moai_mixer." for i in added)
    new += ("model.compressor.",) if new_compressor else ()
    missing = sorted(k for k in info["missing_keys"] if not k.startswith(new))
    if missing:
        raise ValueError(
            f"model {path}: {len(missing)} weights missing from the checkpoint, e.g. {missing[0]}"
        )
    return model


def take_base_weights(model: MoAIForConditionalGeneration, path: Path) -> int:
    """Copy into ``model`` every weight of the saved model in ``path`` outside the MoAI modules (vision tower,
    projector, LLM, LM head), keeping ``model``'s compressor and mixers: the MoAI modules moved onto another
    base (paper §3.3 trains them on a frozen base; here the base may have trained on after them). Returns the
    number of tensors copied; a directory that is not a saved model, or a base whose weights do not match
    ``model``'s names and shapes, is a one-line error naming it."""
    if not (path / "config.json").is_file():
        raise ValueError(f"base_weights {path}: not a save_pretrained directory (no config.json)")
    base_config = MoAIConfig.from_pretrained(path)
    # a base trained without mixers has a compressor it never trained, maybe never saved: not read here
    base = _load_with_new_mixers(path, base_config, [], new_compressor=not base_config.mixer_config.layers)
    moai = set(model.moai_parameter_names())
    theirs = base.state_dict()
    ours = {name: tensor for name, tensor in model.state_dict().items() if name not in moai}
    for name, tensor in ours.items():
        if name not in theirs:
            raise ValueError(f"base_weights {path}: no weight {name} (another architecture than model's)")
        if theirs[name].shape != tensor.shape:
            raise ValueError(
                f"base_weights {path}: {name} is {tuple(theirs[name].shape)}, model's is {tuple(tensor.shape)}"
            )
    with torch.no_grad():
        for name, tensor in ours.items():
            tensor.copy_(theirs[name])
    return len(ours)


def _check_mixer_layers(config: TrainConfig, model_config: MoAIConfig) -> None:
    """``mixer_layers`` must name distinct decoder layers of the model."""
    layers = config.mixer_layers or []
    count = model_config.text_config.num_hidden_layers
    bad = [i for i in layers if not 0 <= i < count]
    if bad or len(set(layers)) != len(layers):
        raise ValueError(
            f"config.mixer_layers: {layers} must be distinct decoder layers 0..{count - 1} of model {config.model}"
        )


def _init_new_moai_modules(
    model: MoAIForConditionalGeneration, config: TrainConfig, layers: list[int], new_compressor: bool
) -> None:
    """Initialise what this run creates: the mixers of ``layers`` and, when ``new_compressor``, the compressor
    (``moai_init``, ``compressor_query_scale``, ``expert_init_std``)."""
    if config.moai_init == "fan_in":
        mixers = [model.language_model.layers[i].self_attn.moai_mixer for i in layers]
        fan_in_init([*mixers, model.model.compressor] if new_compressor else mixers)
    if new_compressor:
        _scale_compressor_queries(model, config.compressor_query_scale)
    _init_expert_outputs(model, layers, config.expert_init_std)
    if config.expert_qk_init == "tied":
        tie_expert_query_keys(model, layers)


@torch.no_grad()
def tie_expert_query_keys(model: MoAIForConditionalGeneration, layers: list[int]) -> None:
    """``TrainConfig.expert_qk_init = tied``: copy every expert's query factors into its key factors (the two
    then train apart), so that each expert starts attending to the keys most like its query."""
    for idx in layers:
        mixer = model.language_model.layers[idx].self_attn.moai_mixer
        for name in IMAGE_EXPERTS + LANGUAGE_EXPERTS:
            expert = getattr(mixer, name)
            for key, query in zip(expert.k_proj, expert.q_proj):
                key.weight.copy_(query.weight)


@torch.no_grad()
def fan_in_init(modules: list[nn.Module]) -> None:
    """``TrainConfig.moai_init = fan_in``: every linear weight of ``modules`` from N(0, 1 / in_features), biases
    zero; the linears marked for zero init (an expert's last output factor) stay zero."""
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, nn.Linear):
                if getattr(sub, "_moai_zero_init", False):
                    sub.weight.zero_()
                else:
                    sub.weight.normal_(0.0, sub.in_features**-0.5)
                if sub.bias is not None:
                    sub.bias.zero_()


@torch.no_grad()
def _scale_compressor_queries(model: MoAIForConditionalGeneration, scale: float) -> None:
    """``TrainConfig.compressor_query_scale``: multiply the query weights of every compressor block."""
    if scale != 1.0:
        for block in model.model.compressor.layers:
            block.attn.to_q.weight.mul_(scale)


def _init_expert_outputs(model: MoAIForConditionalGeneration, layers: list[int], std: float) -> None:
    """Draw the last ``o`` factor of every expert of the mixers in ``layers`` from N(0, std²) (global RNG);
    std 0 leaves the identity init untouched."""
    if std <= 0:
        return
    with torch.no_grad():
        for idx in layers:
            mixer = model.language_model.layers[idx].self_attn.moai_mixer
            for name in IMAGE_EXPERTS + LANGUAGE_EXPERTS:
                getattr(mixer, name).o_proj[1].weight.normal_(0.0, std)
