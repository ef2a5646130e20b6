"""``moai compat check FIXTURE_DIR``: official-mode numerics against outputs of the official code.

The fixture directory (format of shared/fixtures/official_tiny, fixtures README part B) holds the official
weights (``state_dict.safetensors`` + ``config.json``), the inputs the official code received and what it
returned. This converts the weights, feeds the same inputs through this project's model in official mode,
and compares every output and intermediate; the first diverging stage is printed when a check fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.mixer import STREAM_IMAGE, STREAM_NONE, STREAM_PROMPT
from ..model.modeling import MoAIForConditionalGeneration
from .official import convert_checkpoint

LOGIT_TOL = 1e-4
PADDED_LOGIT_TOL = 1e-3
AUX_TOL = 1e-4
STAGES = ("vit_features", "image_features", "compressed_aux")


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True
    max_diff: float = 0.0


def expand_official_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int, num_image_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official inputs hold one ``<image>`` per sample; expand it to N tokens in place (pads stay left).

    Returns input_ids, attention_mask and stream ids (image / prompt language / none), the same positions
    as the official merged sequence with its ``im_mask`` and ``lang_mask``.
    """
    ids, masks, streams = [], [], []
    for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        r_ids, r_mask, r_stream = [], [], []
        for tok, m in zip(row, mask):
            n = num_image_tokens if tok == image_token_id else 1
            r_ids += [tok] * n
            r_mask += [m] * n
            r_stream += [
                STREAM_NONE if not m else STREAM_IMAGE if tok == image_token_id else STREAM_PROMPT
            ] * n
        ids.append(r_ids)
        masks.append(r_mask)
        streams.append(r_stream)
    width = max(len(r) for r in ids)
    if any(len(r) != width for r in ids):
        raise ValueError("fixture rows do not have one <image> each; cannot expand to equal lengths")
    return torch.tensor(ids), torch.tensor(masks), torch.tensor(streams)


def _maxdiff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    d = (a.float() - b.float()).abs()
    if mask is not None:
        d = d[mask.bool()]
    return float(d.max()) if d.numel() else 0.0


class _Capture:
    """Forward hooks recording the intermediates the fixture has (``inter.<run>.*``)."""

    def __init__(self, model: MoAIForConditionalGeneration) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []
        add = self.handles.append
        add(model.vision.register_forward_hook(self._keep("vit_features", first_only=True)))
        add(model.projector.register_forward_hook(self._keep("image_features", first_only=True)))
        add(model.compressor.register_forward_hook(self._keep("compressed_aux")))
        for i, layer in enumerate(model.language_model.layers):
            add(layer.register_forward_hook(self._keep(f"layer{i:02d}_out")))
            mixer = getattr(layer.self_attn, "moai_mixer", None)
            if mixer is not None:
                # runs after the mixer hook: sees the rewritten attention input
                add(
                    layer.self_attn.register_forward_pre_hook(
                        self._keep_kwarg(f"layer{i:02d}_mixed_hidden"), with_kwargs=True
                    )
                )
                add(
                    mixer.gate_img.register_forward_hook(
                        self._keep(f"layer{i:02d}_moai_GA_img_logits_b0", row0=True)
                    )
                )
                add(
                    mixer.gate_lang.register_forward_hook(
                        self._keep(f"layer{i:02d}_moai_GA_lang_logits_b0", row0=True)
                    )
                )

    def _keep(self, name: str, first_only: bool = False, row0: bool = False):
        def hook(module, args, output):
            if first_only and name in self.values:
                return  # the vision tower also encodes the panoptic map when aux comes from raw inputs
            out = output[0] if isinstance(output, tuple) else output
            self.values[name] = (out[0] if row0 else out).detach().clone()

        return hook

    def _keep_kwarg(self, name: str):
        def hook(module, args, kwargs):
            self.values[name] = kwargs["hidden_states"].detach().clone()

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def run_parity(
    fixture: str | Path,
    out: Callable[[str], None] = print,
    device: str = "cpu",
    dtype: str = "float32",
    report: dict[str, dict] | None = None,
) -> int:
    """Run every check; print one line each and a final verdict. Returns the exit code (0 = all required pass).

    In a low-precision ``dtype`` the differences are reported without thresholds. ``report`` (if given) is
    filled with ``{check: {"ok", "max_diff", "detail"}}``.
    """
    from safetensors.torch import load_file

    fixture = Path(fixture)
    for name in ("config.json", "state_dict.safetensors", "inputs.safetensors", "expected.safetensors"):
        if not (fixture / name).is_file():
            raise FileNotFoundError(f"{fixture / name} not found: not a parity fixture directory")
    inputs, expected = (
        load_file(str(fixture / "inputs.safetensors")),
        load_file(str(fixture / "expected.safetensors")),
    )
    torch_dtype = getattr(torch, dtype)
    tol_scale = 1.0 if torch_dtype == torch.float32 else float("inf")  # low precision: report, no threshold

    with tempfile.TemporaryDirectory() as tmp:
        convert_checkpoint(fixture, tmp, log=lambda _msg: None)
        model = MoAIForConditionalGeneration.from_pretrained(
            tmp, attn_implementation="eager", dtype=torch_dtype
        )
    model = model.to(device).eval()
    cfg = model.config
    checks: list[Check] = []

    def add(name: str, diff: float, tol: float, required: bool = True) -> None:
        checks.append(
            Check(name, diff <= tol * tol_scale, f"max|Δ|={diff:.3g} (tol {tol:g})", required, diff)
        )
        out(f"{'ok  ' if checks[-1].ok else 'FAIL'} {name:<32} {checks[-1].detail}")

    def exact(name: str, got: torch.Tensor, want: torch.Tensor, required: bool = True) -> None:
        same = got.shape == want.shape and bool((got.cpu() == want.cpu()).all())
        detail = "identical" if same else f"differ: got {got.tolist()} want {want.tolist()}"
        checks.append(Check(name, same, detail, required and tol_scale == 1.0))
        out(f"{'ok  ' if same else 'FAIL'} {name:<32} {detail}")

    def batch(suffix: str) -> dict[str, torch.Tensor]:
        ids, mask, streams = expand_official_inputs(
            inputs[f"input_ids_{suffix}"],
            inputs[f"attention_mask_{suffix}"],
            cfg.image_token_id,
            cfg.num_image_tokens,
        )
        return {
            "input_ids": ids.to(device),
            "attention_mask": mask.to(device),
            "mm_token_type_ids": streams.to(device),
            "pixel_values": inputs[f"pixel_values_{suffix}"].to(device, torch_dtype),
            "aux_embeds": inputs[f"aux_embeds_{suffix}"].to(device, torch_dtype),
        }

    def forward(b: dict[str, torch.Tensor], gate: str, mode: str = "gated", forced=None) -> torch.Tensor:
        cfg.mixer_config.gate_softmax_dtype = gate
        cfg.mixer_config.forced_experts = forced
        with torch.no_grad():
            return model(**b, mixer_mode=mode).logits.float().cpu()

    b1 = batch("b1")
    # the layout the official merge produced: masks and streams
    if "im_mask_b1" in inputs:
        exact(
            "streams_b1 (im/lang masks)", b1["mm_token_type_ids"].cpu() == STREAM_IMAGE, inputs["im_mask_b1"]
        )
    for suffix in ("b1", "b2"):
        if f"merged_attention_mask_{suffix}" in expected:
            b = batch(suffix)
            exact(
                f"merged_attention_mask_{suffix}",
                b["attention_mask"].cpu(),
                expected[f"merged_attention_mask_{suffix}"],
            )
            with torch.no_grad():
                emb = model.get_input_embeddings()(b["input_ids"])
                emb = model._merge_image_features(b["input_ids"], emb, b["pixel_values"]).float().cpu()
            want = expected[f"merged_inputs_embeds_{suffix}"]
            add(f"merged_inputs_embeds_{suffix}", _maxdiff(emb, want, b["attention_mask"].cpu()), LOGIT_TOL)

    # logits: eval (fp16 gates), step 2 (bf16 gates), step 1 with forced experts
    runs = {"eval_b1": ("float16", "gated", None), "step2_b1": ("bfloat16", "gated", None)}
    for key in sorted(expected):
        if key.startswith("logits_step1_dice") and key.endswith("_b1"):
            a, b_ = int(key[len("logits_step1_dice")]), int(key[len("logits_step1_dice") + 1])
            runs[key.removeprefix("logits_")] = ("float32", "sample", [a, b_])
    for run, (gate, mode, forced) in runs.items():
        want = expected.get(f"logits_{run}")
        if want is None:
            continue
        capture = _Capture(model)
        try:
            got = forward(b1, gate, mode, forced)
        finally:
            capture.close()
        diff = _maxdiff(got, want)
        add(f"logits_{run}", diff, LOGIT_TOL)
        if diff > LOGIT_TOL * tol_scale:
            _report_divergence(run, capture.values, expected, out)
        elif any(k.startswith(f"inter.{run}.") for k in expected):
            worst = max(
                (
                    _maxdiff(capture.values[k.split(".", 2)[2]], expected[k])
                    for k in expected
                    if k.startswith(f"inter.{run}.") and k.split(".", 2)[2] in capture.values
                ),
                default=0.0,
            )
            add(f"intermediates {run}", worst, LOGIT_TOL, required=False)

    # padded batch: logits on real rows
    if "logits_eval_b2" in expected:
        b2 = batch("b2")
        got = forward(b2, "float16")
        real = b2["attention_mask"].cpu()
        add(
            "logits_eval_b2 (non-pad rows)", _maxdiff(got, expected["logits_eval_b2"], real), PADDED_LOGIT_TOL
        )

    # generation (greedy with KV cache, beam 3): the official mode keeps fp16 gates
    cfg.mixer_config.gate_softmax_dtype, cfg.mixer_config.forced_experts = "float16", None
    gen = dict(max_new_tokens=8, do_sample=False, use_cache=True, pad_token_id=2, eos_token_id=2)
    for key, b, beams in (
        ("generated_ids_b1", b1, 1),
        ("generated_ids_beam3_b1", b1, 3),
        ("generated_ids_b2", None, 1),
    ):
        if key not in expected:
            continue
        suffix = "b2" if key.endswith("b2") else "b1"
        b = b if b is not None else batch(suffix)
        with torch.no_grad():
            ids = model.generate(**b, num_beams=beams, min_new_tokens=8, **gen)
        exact(
            key,
            ids[:, b["input_ids"].shape[1] :].cpu(),
            expected[key][:, inputs[f"input_ids_{suffix}"].shape[1] :],
        )

    # the aux path from raw inputs: verbalization ids + panoptic map through vision tower and projector
    for suffix in ("b1", "b2"):
        if f"aux_recipe.verb_ids_{suffix}" not in inputs:
            continue
        verb = inputs[f"aux_recipe.verb_ids_{suffix}"].to(device)
        pan = inputs[f"aux_recipe.panoptic_map_fp16_{suffix}"]  # [B, 3, H, W] in [0, 1], fp16
        mean = torch.tensor(cfg.image_mean).view(1, 3, 1, 1) * 255
        std = torch.tensor(cfg.image_std).view(1, 3, 1, 1) * 255
        aux_pixels = ((pan.float() - mean) / std).to(device, torch_dtype)  # the official normalisation quirk
        with torch.no_grad():
            aux, _ = model.build_aux_embeds(verb, None, aux_pixels)
        add(f"aux_embeds_{suffix} from recipe", _maxdiff(aux.cpu(), inputs[f"aux_embeds_{suffix}"]), AUX_TOL)

    if report is not None:
        report.update({c.name: {"ok": c.ok, "max_diff": c.max_diff, "detail": c.detail} for c in checks})
    failed = [c for c in checks if c.required and not c.ok]
    worst = max((c.max_diff for c in checks), default=0.0)
    if failed:
        out(
            f"PARITY FAILED {len(failed)}/{sum(c.required for c in checks)} required checks: {', '.join(c.name for c in failed)}"
        )
        return 1
    out(f"PARITY OK max|Δ|={worst:.3g}")
    return 0


def _report_divergence(
    run: str, got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], out
) -> None:
    """Print the first stage (in data-flow order) whose captured value differs beyond tolerance."""
    prefix = f"inter.{run}."
    names = [k.removeprefix(prefix) for k in expected if k.startswith(prefix)]
    order = [s for s in STAGES if s in names] + sorted(n for n in names if n.startswith("layer"))
    for name in order:
        if name not in got:
            continue
        diff = _maxdiff(got[name], expected[prefix + name])
        if diff > LOGIT_TOL:
            out(f"     first divergence in {run}: {name} max|Δ|={diff:.3g}")
            return
    out(
        f"     no captured intermediate of {run} diverges; the difference arises after the last decoder layer"
    )
