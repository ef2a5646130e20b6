"""Official MoAI-7B checkpoints -> this project's layout (docs/official.md §1, docs/model.md).

A bad source (missing, empty, truncated or random ``*.safetensors``, a malformed ``config.json`` or index)
raises ``ValueError`` / ``OSError`` naming the file and the reason, and leaves no output behind: the
conversion is written into a temporary sibling of ``OUT`` that is renamed to ``OUT`` only when complete.

Key map (official -> ours; every target but ``lm_head`` is under ``model.``, the base `MoAIModel`):
    model.tok_embeddings                       -> language_model.embed_tokens (vocab + 1 rows, <image> last)
    model.layers.N.attention.wqkv.Plora_main   -> ...self_attn.{q,k,v}_proj.weight  (split per KV group)
    model.layers.N.attention.wqkv.Plora_A      -> ...self_attn.plora_A_qkv          (one A shared by q/k/v)
    model.layers.N.attention.wqkv.Plora_B      -> ...self_attn.{q,k,v}_proj.plora_B (split like the main weight)
    model.layers.N.attention.wo.*              -> ...self_attn.o_proj.{weight,plora_A,plora_B}
    model.layers.N.feed_forward.w1 / w3 / w2   -> ...mlp.gate_proj / up_proj / down_proj
    model.layers.N.attention_norm / ffn_norm   -> ...input_layernorm / post_attention_layernorm
    model.layers.N.attention.moai_{CA,SA}_*    -> ...self_attn.moai_mixer.{img_aux,...}.{q,k,v,o}_proj.{0,1}
    model.layers.N.attention.moai_GA_{img,lang}-> ...self_attn.moai_mixer.gate_{img,lang}
    model.norm / output                        -> language_model.norm / lm_head
    vit.vision_tower.vision_model.*            -> vision_tower.*
    vision_proj.{0,2}                          -> projector.{0,2}
    moai_compressor.layers.i.0.* / .1.{0,1,3}  -> compressor.layers.i.attn.* / .ff.{norm,fc1,fc2}
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import torch

from ..io import read_json
from ..model.configuration import MoAIConfig, official_overrides
from ..model.modeling import MoAIForConditionalGeneration
from .tokenizer import check_tokenizer_file, save_official_processor

EXPERTS = {
    "moai_CA_img_aux": "img_aux",
    "moai_CA_img_lang": "img_lang",
    "moai_SA_img": "img_self",
    "moai_CA_lang_aux": "lang_aux",
    "moai_CA_lang_img": "lang_img",
    "moai_SA_lang": "lang_self",
}
GATES = {"moai_GA_img": "gate_img", "moai_GA_lang": "gate_lang"}
FFN = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
PLORA_PART = {"Plora_main": "weight", "Plora_A": "plora_A.weight", "Plora_B": "plora_B.weight"}
COMPRESSOR_ATTN = ("norm_media", "norm_latents", "to_q", "to_kv", "to_out")
COMPRESSOR_FF = {"0": "norm", "1": "fc1", "3": "fc2"}


class ConversionError(ValueError):
    """A checkpoint that does not map one-to-one onto the model; the message lists the keys."""


# -- config ---------------------------------------------------------------------------------------
def _rope_parameters(theta: float, scaling: dict[str, Any] | None, max_positions: int) -> dict[str, Any]:
    if not scaling:
        return {"rope_type": "default", "rope_theta": float(theta)}
    kind = scaling.get("type") or scaling.get("rope_type")
    if kind != "dynamic":
        raise ConversionError(
            f"unsupported rope_scaling {scaling!r}: the official InternLM2 code supports 'dynamic' only"
        )
    return {
        "rope_type": "dynamic",
        "rope_theta": float(theta),
        "factor": float(scaling["factor"]),
        "original_max_position_embeddings": max_positions,
    }


def config_from_official(source: dict[str, Any], gate_dtype: str = "float16") -> MoAIConfig:
    """Build an official-mode MoAIConfig from a source ``config.json``.

    Two formats: a fixture config (``internlm2_config`` + every MoAI/CLIP/PLoRA size, tests/fixtures/README.md)
    or the published InternLM2 config of ``BK-Lee/MoAI-7B``, whose MoAI/CLIP/PLoRA sizes the official code
    hard-codes: those come from the ``moai-7b`` preset. The official ``pad_token_id = -100`` is never copied.
    """
    if "internlm2_config" in source:
        text = source["internlm2_config"]
        clip = source["clip_vision_config"]
        interp = source.get("clip_position_interp", {})
        grid = interp.get("new_grid", clip["image_size"] // clip["patch_size"])
        comp, experts, plora = source["compressor"], source["experts"], source["plora"]
        vision = {k: v for k, v in clip.items() if k != "image_size"} | {
            "image_size": grid * clip["patch_size"]
        }
        over = official_overrides(list(source["mixer_layer_indices"]), gate_dtype)
        kwargs = dict(
            vision_config=vision,
            compressor_config=dict(
                depth=comp["depth"],
                num_heads=comp["heads"],
                head_dim=comp["dim_head"],
                num_latents=comp["num_latents"],
                ff_mult=float(comp["ff_mult"]),
                **over["compressor"],
            ),
            mixer_config=dict(num_heads=experts["head_num"], rank=experts["low_rank"], **over["mixer"]),
            plora_config=dict(r=plora["lora_r"], alpha=float(plora["lora_alpha"]), **over["plora"]),
            image_token_id=text.get("image_token_index", text["vocab_size"]),
        )
    else:
        text = source
        preset = MoAIConfig.from_preset("moai-7b")
        over = official_overrides(list(preset.mixer_config.layers), gate_dtype)
        kwargs = dict(
            vision_config=preset.vision_config.to_dict(),
            compressor_config=preset.compressor_config.to_dict(),
            mixer_config=preset.mixer_config.to_dict() | over["mixer"],
            plora_config=preset.plora_config.to_dict(),
            image_token_id=text["vocab_size"],
        )
    text_config = dict(
        vocab_size=text["vocab_size"],
        hidden_size=text["hidden_size"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["num_hidden_layers"],
        num_attention_heads=text["num_attention_heads"],
        num_key_value_heads=text.get("num_key_value_heads", text["num_attention_heads"]),
        max_position_embeddings=text["max_position_embeddings"],
        rms_norm_eps=text["rms_norm_eps"],
        rope_parameters=_rope_parameters(
            text.get("rope_theta", 10000.0), text.get("rope_scaling"), text["max_position_embeddings"]
        ),
        attention_bias=bool(text.get("bias", False)),
        hidden_act=text.get("hidden_act", "silu"),
        bos_token_id=text.get("bos_token_id", 1),
        eos_token_id=text.get("eos_token_id", 2),
        pad_token_id=None,  # never the official -100 (it would zero and freeze a real embedding row)
        tie_word_embeddings=False,
    )
    return MoAIConfig(
        text_config=text_config,
        compat="official",
        position_ids_from_mask=over["position_ids_from_mask"],
        vision_attn_implementation=over["vision_attn_implementation"],
        vision_feature_layer=-1,
        **kwargs,
    )


# -- key mapping ----------------------------------------------------------------------------------
def _split_wqkv(tensor: torch.Tensor, config: MoAIConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split a fused InternLM2 ``wqkv`` (rows grouped per KV head as [q x groups, k, v]) into q, k, v rows."""
    text = config.text_config
    heads, kv = text.num_attention_heads, text.num_key_value_heads
    head_dim = text.hidden_size // heads
    groups = heads // kv
    rest = tensor.shape[1:]
    grouped = tensor.reshape(kv, groups + 2, head_dim, *rest)  # [KV, groups + 2, E, ...]
    q = grouped[:, :groups].reshape(heads * head_dim, *rest)  # head h = kv_index * groups + i
    k = grouped[:, groups].reshape(kv * head_dim, *rest)
    v = grouped[:, groups + 1].reshape(kv * head_dim, *rest)
    return q.contiguous(), k.contiguous(), v.contiguous()


_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


def map_key(key: str) -> list[str] | None:
    """Target key(s) of one official key (three for the fused ``wqkv`` tensors); None when unknown.

    Everything but the LM head lives under ``model.`` (`MoAIModel`, the base model without the head)."""
    if key == "output.weight":
        return ["lm_head.weight"]
    targets = _map_base_key(key)
    return None if targets is None else ["model." + t for t in targets]


def _map_base_key(key: str) -> list[str] | None:
    """`map_key` for the keys of the base model, relative to it."""
    if key == "model.tok_embeddings.weight":
        return ["language_model.embed_tokens.weight"]
    if key == "model.norm.weight":
        return ["language_model.norm.weight"]
    if key.startswith("vit.vision_tower.vision_model."):
        return ["vision_tower." + key.removeprefix("vit.vision_tower.vision_model.")]
    if m := re.fullmatch(r"vision_proj\.(0|2)\.(weight|bias)", key):
        return [f"projector.{m[1]}.{m[2]}"]
    if key in ("moai_compressor.latents",):
        return ["compressor.latents"]
    if m := re.fullmatch(r"moai_compressor\.norm\.(weight|bias)", key):
        return [f"compressor.norm.{m[1]}"]
    if m := re.fullmatch(r"moai_compressor\.layers\.(\d+)\.0\.(\w+)\.(weight|bias)", key):
        return [f"compressor.layers.{m[1]}.attn.{m[2]}.{m[3]}"] if m[2] in COMPRESSOR_ATTN else None
    if m := re.fullmatch(r"moai_compressor\.layers\.(\d+)\.1\.(\d)\.(weight|bias)", key):
        return (
            [f"compressor.layers.{m[1]}.ff.{COMPRESSOR_FF[m[2]]}.{m[3]}"] if m[2] in COMPRESSOR_FF else None
        )
    m = _LAYER.match(key)
    if not m:
        return None
    prefix, rest = f"language_model.layers.{m[1]}.", m[2]
    if rest == "attention_norm.weight":
        return [prefix + "input_layernorm.weight"]
    if rest == "ffn_norm.weight":
        return [prefix + "post_attention_layernorm.weight"]
    if p := re.fullmatch(r"attention\.wqkv\.(Plora_main|Plora_A|Plora_B)\.weight", rest):
        if p[1] == "Plora_A":
            return [prefix + "self_attn.plora_A_qkv.weight"]
        return [prefix + f"self_attn.{n}_proj.{PLORA_PART[p[1]]}" for n in "qkv"]
    if p := re.fullmatch(r"attention\.wo\.(Plora_main|Plora_A|Plora_B)\.weight", rest):
        return [prefix + f"self_attn.o_proj.{PLORA_PART[p[1]]}"]
    if p := re.fullmatch(r"feed_forward\.(w1|w2|w3)\.(Plora_main|Plora_A|Plora_B)\.weight", rest):
        return [prefix + f"mlp.{FFN[p[1]]}.{PLORA_PART[p[2]]}"]
    if p := re.fullmatch(r"attention\.(moai_\w+?)\.linear_([qkvo])\.([01])\.weight", rest):
        return (
            [prefix + f"self_attn.moai_mixer.{EXPERTS[p[1]]}.{p[2]}_proj.{p[3]}.weight"]
            if p[1] in EXPERTS
            else None
        )
    if p := re.fullmatch(r"attention\.(moai_GA_img|moai_GA_lang)\.(weight|bias)", rest):
        return [prefix + f"self_attn.moai_mixer.{GATES[p[1]]}.{p[2]}"]
    return None


def convert_tensor(key: str, tensor: torch.Tensor, config: MoAIConfig) -> dict[str, torch.Tensor]:
    """Map one official tensor to its target tensor(s), keeping the dtype."""
    targets = map_key(key)
    if targets is None:
        raise ConversionError(f"unknown official key: {key}")
    if len(targets) == 3:
        try:
            return dict(zip(targets, _split_wqkv(tensor, config)))
        except RuntimeError:  # a reshape that does not fit: the source was made for another config
            raise ConversionError(
                f"{key}: shape {tuple(tensor.shape)} cannot be split into q, k, v rows for "
                f"{config.text_config.num_attention_heads} heads / {config.text_config.num_key_value_heads} "
                "KV heads"
            ) from None
    return {targets[0]: tensor}


def target_shapes(key: str, shape: tuple[int, ...], config: MoAIConfig) -> dict[str, tuple[int, ...]]:
    """Shapes that ``convert_tensor`` produces, from the source shape alone (no data, for meta checks)."""
    return {
        k: tuple(v.shape) for k, v in convert_tensor(key, torch.empty(shape, device="meta"), config).items()
    }


# -- reading the source ---------------------------------------------------------------------------
def read_official_config(path: Path, gate_dtype: str = "float16") -> MoAIConfig:
    """``config_from_official`` of a ``config.json``; a file that is not one names itself and the reason."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not an official MoAI checkpoint directory")
    source = read_json(path, "an official MoAI config")
    if not isinstance(source, dict):
        raise ValueError(
            f"{path}: not an official MoAI config (a JSON {type(source).__name__}, not an object)"
        )
    try:
        return config_from_official(source, gate_dtype=gate_dtype)
    except KeyError as err:
        raise ValueError(f"{path}: not an official MoAI config (no {err.args[0]!r} entry)") from None
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: not an official MoAI config ({err})") from None


def source_shards(src: Path) -> list[Path]:
    """The safetensors files of an official checkpoint directory (index, single file, or fixture)."""
    index = src / "model.safetensors.index.json"
    if index.is_file():
        listing = read_json(index, 'a safetensors index {"weight_map": {key: file}}')
        weight_map = listing.get("weight_map") if isinstance(listing, dict) else None
        if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
            raise ValueError(f'{index}: not a safetensors index (no "weight_map" of key -> file name)')
        if not weight_map:
            raise ValueError(f"{index}: empty weight_map")
        files = [src / f for f in sorted(set(weight_map.values()))]
        for file in files:
            if not file.is_file():
                raise FileNotFoundError(f"{file} not found (listed in {index.name})")
        return files
    for name in ("model.safetensors", "state_dict.safetensors"):
        if (src / name).is_file():
            return [src / name]
    found = sorted(src.glob("*.safetensors"))
    if not found:
        raise FileNotFoundError(f"{src}: no safetensors shards, index or state_dict.safetensors")
    return found


@contextmanager
def open_safetensors(path: Path) -> Iterator[Any]:
    """``safe_open(path)``; an empty, truncated or non-safetensors file raises ``ValueError`` naming it.

    Errors while reading tensors inside the block are translated the same way.
    """
    from safetensors import SafetensorError, safe_open

    if path.is_file() and path.stat().st_size == 0:
        raise ValueError(f"{path}: empty file (0 bytes), not a safetensors file")
    try:
        with safe_open(str(path), framework="pt") as handle:
            yield handle
    except SafetensorError as err:
        raise ValueError(f"{path}: not a valid safetensors file ({err})") from None


def check_safetensors(path: Path) -> None:
    """Raise ``ValueError`` unless ``path`` is a complete safetensors file (header and data sizes agree)."""
    with open_safetensors(path) as handle:
        handle.keys()


# -- streaming conversion -------------------------------------------------------------------------
def expected_keys(config: MoAIConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of the target model, built on the meta device."""
    with torch.device("meta"):
        model = MoAIForConditionalGeneration(config)
    return {name: tuple(p.shape) for name, p in model.named_parameters()}


def check_coverage(produced: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """Every target parameter filled exactly once, with the right shape; raise listing the offenders."""
    missing = sorted(set(expected) - set(produced))
    extra = sorted(set(produced) - set(expected))
    bad = sorted(k for k in set(produced) & set(expected) if tuple(produced[k]) != tuple(expected[k]))
    problems = []
    if missing:
        problems.append(f"{len(missing)} target parameters not filled: {missing[:20]}")
    if extra:
        problems.append(f"{len(extra)} produced keys the model does not have: {extra[:20]}")
    if bad:
        problems.append(
            "shape mismatches: " + ", ".join(f"{k} {produced[k]} != {expected[k]}" for k in bad[:20])
        )
    if problems:
        raise ConversionError("; ".join(problems))


@contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """A fresh temporary sibling of ``out`` that is renamed to ``out`` when the block succeeds.

    When the block raises (or is interrupted), the temporary directory and any parent directories created
    for it are removed, so nothing is left behind. ``out`` must not exist or be an empty directory (then it
    is replaced); an existing file or non-empty directory is refused before anything is written.
    """
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a directory")
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out}: exists and is not empty; give a new or empty output directory")
    created = [parent for parent in (out.parent, *out.parent.parents) if not parent.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    stage.mkdir()
    try:
        yield stage
        os.replace(stage, out)  # atomic; replaces an empty directory
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        for parent in created:  # innermost first
            with suppress(OSError):
                parent.rmdir()
        raise


def _convert_shard(
    shard: Path, config: MoAIConfig, seen: dict[str, str], produced: dict[str, tuple[int, ...]]
) -> dict[str, torch.Tensor]:
    """The converted tensors of one source shard; duplicates and unknown keys raise `ConversionError`."""
    converted: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    with open_safetensors(shard) as f:
        for key in f.keys():
            if key in seen:
                raise ConversionError(f"source key {key} appears in both {seen[key]} and {shard.name}")
            seen[key] = shard.name
            if map_key(key) is None:
                unknown.append(key)
                continue
            for target, tensor in convert_tensor(key, f.get_tensor(key), config).items():
                if target in converted or target in produced:
                    raise ConversionError(f"target {target} filled twice (last from {key})")
                converted[target] = tensor
    if unknown:
        raise ConversionError(f"{shard}: {len(unknown)} source keys have no mapping: {unknown[:20]}")
    return converted


def convert_checkpoint(
    src: str | Path,
    out: str | Path,
    *,
    gate_dtype: str = "float16",
    log: Callable[[str], None] = print,
) -> MoAIConfig:
    """Convert an official checkpoint directory into a ``save_pretrained`` directory, shard by shard.

    Memory stays at about one source shard plus its converted copy; each output shard is written as soon as
    it is complete, into a temporary sibling of ``out`` that becomes ``out`` at the end (`staged_directory`):
    a failed or interrupted conversion leaves nothing. Every source key must be consumed exactly once and
    every target parameter filled, else `ConversionError` lists the keys. A bad source file raises
    ``ValueError`` / ``OSError`` naming it.
    """
    from safetensors.torch import save_file

    src, out = Path(src), Path(out)
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: not a directory (give an official MoAI checkpoint directory)")
    config = read_official_config(src / "config.json", gate_dtype=gate_dtype)
    shards = source_shards(src)
    for shard in shards:  # every input checked before anything is written
        check_safetensors(shard)
    if (src / "tokenizer.model").is_file():
        check_tokenizer_file(src / "tokenizer.model")
    expected = expected_keys(config)
    seen: dict[str, str] = {}
    produced: dict[str, tuple[int, ...]] = {}
    weight_map: dict[str, str] = {}
    total_size = 0
    with staged_directory(out) as stage:
        for i, shard in enumerate(shards):
            name = (
                f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                if len(shards) > 1
                else "model.safetensors"
            )
            converted = _convert_shard(shard, config, seen, produced)
            for k, v in converted.items():
                produced[k] = tuple(v.shape)
                weight_map[k] = name
                total_size += v.numel() * v.element_size()
            save_file(converted, str(stage / name), metadata={"format": "pt"})
            log(f"wrote {name}: {len(converted)} tensors from {shard.name}")
            del converted
        check_coverage(produced, expected)
        if len(shards) > 1:
            index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
            (stage / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        config.save_pretrained(stage)
        _copy_tokenizer(src, stage, config, log)
    log(f"converted {len(seen)} official keys -> {len(produced)} parameters in {out}")
    return config


def _copy_tokenizer(src: Path, out: Path, config: MoAIConfig, log: Callable[[str], None]) -> None:
    """Bring the official InternLM2 tokenizer and chat template along when the source has them."""
    if not (src / "tokenizer.model").is_file():
        log("no tokenizer.model in the source: tokenizer not converted (load your own with MoAIProcessor)")
        return
    save_official_processor(src, out, config, log)


def check_official_keys(shapes: Iterable[tuple[str, tuple[int, ...]]], config: MoAIConfig) -> tuple[int, int]:
    """Check an official key/shape listing against ``config`` on the meta device; return (mapped, total)."""
    produced: dict[str, tuple[int, ...]] = {}
    unknown, total = [], 0
    for key, shape in shapes:
        total += 1
        if map_key(key) is None:
            unknown.append(key)
            continue
        for target, tshape in target_shapes(key, tuple(shape), config).items():
            if target in produced:
                raise ConversionError(f"target {target} filled twice (last from {key})")
            produced[target] = tshape
    if unknown:
        raise ConversionError(f"{len(unknown)} official keys have no mapping: {unknown[:20]}")
    check_coverage(produced, expected_keys(config))
    return total, total
