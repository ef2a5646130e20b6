"""``moai compat check FIXTURE_DIR``: official-mode numerics against outputs of the official code.

The fixture directory (the format of tests/fixtures/official_tiny, described in tests/fixtures/README.md)
holds the official weights (``state_dict.safetensors`` + ``config.json``), the inputs the official code
received and what it returned. This converts the weights, feeds the same inputs through this project's model in official mode,
and compares every output and intermediate; the first diverging stage is printed when a check fails.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model.constants import STREAM_IMAGE, STREAM_NONE
from ..model.modeling import MoAIForConditionalGeneration
from ..model.processing import token_streams
from .official import convert_checkpoint

LOGIT_TOL = 1e-4
"""float32 agreement required wherever no half-precision rounding is involved (or it is teacher-forced)."""
AUX_TOL = 1e-4
NOISE_TRIALS = 4
"""Runs with 1-ulp input perturbations that measure the end-to-end noise floor."""
NOISE_K = 4.0
"""End-to-end tolerance = max(LOGIT_TOL, NOISE_K * measured spread); docs/official.md says why 4."""
STAGES = ("vit_features", "image_features", "compressed_aux")
SECTIONS = ("layout", "gated", "step1", "batch2", "generation", "aux")
"""Groups of checks: merged inputs and masks; gated logits (eval and step 2, teacher-forced and end to end);
step-1 logits with forced experts; the padded batch; generation (greedy, beam 3, padded); the aux path from raw
inputs."""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True
    max_diff: float = 0.0
    spread: float | None = None
    """End-to-end checks: the measured 1-ulp noise floor their tolerance derives from."""


def expand_official_inputs(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, image_token_id: int, num_image_tokens: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Official inputs hold one ``<image>`` per sample; expand it to N tokens in place (pads stay left).

    Returns input_ids, attention_mask and stream ids (the processor's `token_streams`: image / prompt
    language / none), the same positions as the official merged sequence with its ``im_mask`` and ``lang_mask``.
    """
    ids, masks = [], []
    for row, mask in zip(input_ids.tolist(), attention_mask.tolist()):
        r_ids, r_mask = [], []
        for tok, m in zip(row, mask):
            n = num_image_tokens if tok == image_token_id else 1
            r_ids += [tok] * n
            r_mask += [m] * n
        ids.append(r_ids)
        masks.append(r_mask)
    width = max(len(r) for r in ids)
    if any(len(r) != width for r in ids):
        raise ValueError("fixture rows do not have one <image> each; cannot expand to equal lengths")
    ids_t, masks_t = torch.tensor(ids), torch.tensor(masks)  # [B, S]
    return ids_t, masks_t, token_streams(ids_t, image_token_id, masks_t)


def _maxdiff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    d = (a.float().cpu() - b.float().cpu()).abs()  # recorded values live on the CPU, the model's anywhere
    if mask is not None:
        d = d[mask.bool()]
    return float(d.max()) if d.numel() else 0.0


class _Capture:
    """Forward hooks recording the intermediates the fixture has (``inter.<run>.*``).

    With ``forced_gates`` (``{"layerNN_moai_GA_img_logits_b0": [N, 3], ...}``) the gates are teacher-forced:
    each gate's computed logits are recorded, then replaced by the given ones, so that the half-precision
    gate softmax sees exactly the official inputs and no host rounding can flip it.
    """

    def __init__(
        self, model: MoAIForConditionalGeneration, forced_gates: dict[str, torch.Tensor] | None = None
    ) -> None:
        self.values: dict[str, torch.Tensor] = {}
        self.handles = []
        self.forced = forced_gates
        add = self.handles.append
        add(model.projector.register_forward_hook(self._keep_input("vit_features", first_only=True)))
        add(model.projector.register_forward_hook(self._keep("image_features", first_only=True)))
        add(model.compressor.register_forward_hook(self._keep("compressed_aux")))
        for i, layer in enumerate(model.language_model.layers):
            add(layer.register_forward_hook(self._keep(f"layer{i:02d}_out")))
            mixer = layer.mixer
            if mixer is None:
                continue
            add(mixer.register_forward_hook(self._keep(f"layer{i:02d}_mixed_hidden")))
            for stream in ("img", "lang"):
                name = f"layer{i:02d}_moai_GA_{stream}_logits_b0"
                add(getattr(mixer, f"gate_{stream}").register_forward_hook(self._gate(name)))

    def _keep(self, name: str, first_only: bool = False):
        def hook(module, args, output):
            if first_only and name in self.values:
                return  # the vision tower also encodes the panoptic map when aux comes from raw inputs
            out = output[0] if isinstance(output, tuple) else output
            self.values[name] = out.detach().clone()

        return hook

    def _keep_input(self, name: str, first_only: bool = False):
        def hook(module, args, output):
            if first_only and name in self.values:
                return
            self.values[name] = args[0].detach().clone()  # what the module received

        return hook

    def _gate(self, name: str):
        def hook(module, args, output):
            self.values[name] = output[0].detach().clone()  # batch row 0, as the fixture records it
            if self.forced is None:
                return None
            want = self.forced[name]
            if output.shape != (1, *want.shape):
                raise ValueError(
                    f"cannot teacher-force {name}: the fixture has {tuple(want.shape)} for batch row 0, "
                    f"the gate computed {tuple(output.shape)}"
                )
            return want.to(output.device, output.dtype)[None]

        return hook

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def ulp_perturbed(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``x`` with every element moved by one fp32 ulp, up or down at random."""
    up = torch.rand(x.shape, generator=generator) < 0.5
    target = torch.where(up, torch.full_like(x, float("inf")), torch.full_like(x, float("-inf")))
    return torch.nextafter(x, target.to(x.device))


def run_parity(
    fixture: str | Path,
    out: Callable[[str], None] = print,
    device: str = "cpu",
    dtype: str = "float32",
    report: dict[str, dict] | None = None,
    noise_trials: int = NOISE_TRIALS,
    sections: Collection[str] = SECTIONS,
) -> int:
    """Run the checks of ``sections`` (default: every check, `SECTIONS`); print one line each and a final
    verdict. Returns the exit code (0 = all required pass).

    Two kinds of logit check (docs/official.md, "Portable parity"):

    * teacher-forced: the gates get the fixture's recorded logits, so the half-precision gate softmax sees
      the official inputs exactly; what remains is float32 and must agree to ``LOGIT_TOL`` on any host.
      The computed gate logits are compared with the recorded ones too (a float32 stage).
    * end to end, untouched: the tolerance is ``max(LOGIT_TOL, NOISE_K * spread)``, where ``spread`` is how
      far this model's own logits move when its float inputs are moved by one fp32 ulp — the effect of
      half-precision gate roundings flipping, measured on this host for this fixture.

    In a low-precision ``dtype`` the differences are reported without thresholds. ``report`` (if given) is
    filled with ``{check: {"ok", "max_diff", "detail"}}``. On CUDA in float32, TF32 is turned off for the
    run (docs/model.md §9): the thresholds are for IEEE float32.
    """
    with _ieee_float32(device, dtype):
        return _run_parity(fixture, out, device, dtype, report, noise_trials, sections)


@contextmanager
def _ieee_float32(device: str, dtype: str) -> Iterator[None]:
    """TF32 off for CUDA matmuls and convolutions in the block (float32 on CUDA only), then as before."""
    if torch.device(device).type != "cuda" or dtype != "float32":
        yield
        return
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch before 2.9: the allow_tf32 flags
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
        before = matmul.allow_tf32, conv.allow_tf32
        matmul.allow_tf32 = conv.allow_tf32 = False
        try:
            yield
        finally:
            matmul.allow_tf32, conv.allow_tf32 = before
        return
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    before = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = before


def _run_parity(
    fixture: str | Path,
    out: Callable[[str], None],
    device: str,
    dtype: str,
    report: dict[str, dict] | None,
    noise_trials: int,
    sections: Collection[str],
) -> int:
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

    def add(name: str, diff: float, tol: float, required: bool = True, note: str = "") -> None:
        checks.append(
            Check(name, diff <= tol * tol_scale, f"max|Δ|={diff:.3g} (tol {tol:.3g}{note})", required, diff)
        )
        out(f"{'ok  ' if checks[-1].ok else 'FAIL'} {name:<40} {checks[-1].detail}")

    def verdict(name: str, ok: bool, detail: str, required: bool = True) -> None:
        checks.append(Check(name, ok, detail, required and tol_scale == 1.0))
        out(f"{'ok  ' if ok else 'FAIL'} {name:<40} {detail}")

    def exact(name: str, got: torch.Tensor, want: torch.Tensor, required: bool = True) -> None:
        same = got.shape == want.shape and bool((got.cpu() == want.cpu()).all())
        verdict(
            name, same, "identical" if same else f"differ: got {got.tolist()} want {want.tolist()}", required
        )

    def batch(suffix: str) -> dict[str, torch.Tensor]:
        for key in ("input_ids", "attention_mask", "pixel_values", "aux_embeds"):
            if f"{key}_{suffix}" not in inputs:
                raise ValueError(f"{fixture / 'inputs.safetensors'} has no tensor {key}_{suffix}")
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
        model.set_mixer(mode=mode, gate_softmax_dtype=gate, forced_experts=forced)
        with torch.no_grad():
            return model(**b).logits.float().cpu()

    gen = torch.Generator().manual_seed(0)

    def noise_floor(b: dict[str, torch.Tensor], gate: str, reference: torch.Tensor, mask=None) -> float:
        """Largest logit change over ``noise_trials`` runs with the float inputs moved by one fp32 ulp."""
        spread = 0.0
        for _ in range(noise_trials):
            nudged = dict(b)
            for key in ("pixel_values", "aux_embeds"):
                nudged[key] = ulp_perturbed(b[key].float().cpu(), gen).to(device, torch_dtype)
            spread = max(spread, _maxdiff(forward(nudged, gate), reference, mask))
        return spread

    def end_to_end(name: str, got: torch.Tensor, want: torch.Tensor, spread: float, mask=None) -> None:
        tol = max(LOGIT_TOL, NOISE_K * spread)
        add(name, _maxdiff(got, want, mask), tol, note=f"; 1-ulp spread {spread:.2g}")
        checks[-1].spread = spread

    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        raise ValueError(f"unknown parity section(s) {unknown}; choose from {', '.join(SECTIONS)}")
    b1 = batch("b1")
    # the layout the official merge produced: masks and streams
    if "layout" in sections and "im_mask_b1" in inputs:
        exact(
            "streams_b1 (im/lang masks)", b1["mm_token_type_ids"].cpu() == STREAM_IMAGE, inputs["im_mask_b1"]
        )
    for suffix in ("b1", "b2"):
        if "layout" in sections and f"merged_attention_mask_{suffix}" in expected:
            b = batch(suffix)
            exact(
                f"merged_attention_mask_{suffix}",
                b["attention_mask"].cpu(),
                expected[f"merged_attention_mask_{suffix}"],
            )
            with torch.no_grad():
                emb = model.get_input_embeddings()(b["input_ids"])
                emb = (
                    model.model.merge_image_features(b["input_ids"], emb, b["pixel_values"])[0].float().cpu()
                )
            want = expected[f"merged_inputs_embeds_{suffix}"]
            add(f"merged_inputs_embeds_{suffix}", _maxdiff(emb, want, b["attention_mask"].cpu()), LOGIT_TOL)

    # gated runs: eval (fp16 gate softmax) and step 2 (bf16), teacher-forced, then end to end
    for run, gate in (("eval_b1", "float16"), ("step2_b1", "bfloat16")):
        want = expected.get(f"logits_{run}")
        if want is None or "gated" not in sections:
            continue
        prefix = f"inter.{run}."
        recorded = {k.removeprefix(prefix): v for k, v in expected.items() if k.startswith(prefix)}
        gates = {k: v for k, v in recorded.items() if "_moai_GA_" in k}
        n_gates = 2 * len(cfg.mixer_config.layers)
        if len(gates) == n_gates:
            capture = _Capture(model, forced_gates=gates)
            try:
                forced = forward(b1, gate)
            finally:
                capture.close()
            add(f"logits_{run} (gates teacher-forced)", _maxdiff(forced, want), LOGIT_TOL)
            add(
                f"gate logits {run} (fp32 stage)",
                max(_maxdiff(capture.values[k], v) for k, v in gates.items()),
                LOGIT_TOL,
            )
            # the residual stream grows with depth (|x| ~ 35 by the last layer of official_tiny): compare
            # each stage relative to its scale, max|Δ| / max(1, max|x|)
            stages = {
                k: _maxdiff(capture.values[k], v) / max(1.0, float(v.abs().max()))
                for k, v in recorded.items()
                if k not in gates and k in capture.values
            }
            if stages:
                worst = max(stages, key=stages.get)
                add(
                    f"intermediates {run} (teacher-forced)",
                    stages[worst],
                    LOGIT_TOL,
                    note=f"; relative to max(1, max|x|); worst {worst}",
                )
        else:
            out(f"     {run}: the fixture records {len(gates)} of {n_gates} gate logits; no teacher forcing")
        capture = _Capture(model)
        try:
            got = forward(b1, gate)
        finally:
            capture.close()
        end_to_end(f"logits_{run} (end to end)", got, want, noise_floor(b1, gate, got))
        if not checks[-1].ok:
            _report_divergence(run, capture.values, expected, out)

    # step 1, experts forced: no gate, float32 throughout
    for key in sorted(expected):
        if "step1" in sections and key.startswith("logits_step1_dice") and key.endswith("_b1"):
            a, b_ = int(key[len("logits_step1_dice")]), int(key[len("logits_step1_dice") + 1])
            add(key, _maxdiff(forward(b1, "float32", "sample", [a, b_]), expected[key]), LOGIT_TOL)

    # padded batch: logits on real rows (the fixture records row 0's gates only: end to end)
    if "batch2" in sections and "logits_eval_b2" in expected:
        b2 = batch("b2")
        real = b2["attention_mask"].cpu()
        got = forward(b2, "float16")
        spread = noise_floor(b2, "float16", got, real)
        end_to_end("logits_eval_b2 (non-pad rows)", got, expected["logits_eval_b2"], spread, real)

    # generation (greedy with KV cache, beam 3): the official mode keeps fp16 gates
    model.set_mixer(mode="gated", gate_softmax_dtype="float16", forced_experts=None)
    for key, beams in (("generated_ids_b1", 1), ("generated_ids_beam3_b1", 3), ("generated_ids_b2", 1)):
        if key not in expected or "generation" not in sections:
            continue
        suffix = "b2" if key.endswith("b2") else "b1"
        b = batch(suffix)
        prompt = inputs[f"input_ids_{suffix}"].shape[1]
        want = expected[key][:, prompt:]
        with torch.no_grad():
            ids = model.generate(
                **b,
                num_beams=beams,
                max_new_tokens=want.shape[1],
                min_new_tokens=want.shape[1],
                do_sample=False,
                use_cache=True,
                pad_token_id=2,
                eos_token_id=2,
            )
        got = ids[:, b["input_ids"].shape[1] :].cpu()
        if got.shape == want.shape and bool((got == want).all()):
            verdict(key, True, "identical")
            continue
        # a different token is acceptable only where the two candidates tie within the logit tolerance
        gap = _sequence_gap(model, b, got, want)
        verdict(
            key,
            gap <= LOGIT_TOL,
            f"differ: got {got.tolist()} want {want.tolist()}; log-prob gap {gap:.3g} (tie tol {LOGIT_TOL:g})",
        )

    # the aux path from raw inputs: verbalization ids + panoptic map through vision tower and projector
    for suffix in ("b1", "b2"):
        if f"aux_recipe.verb_ids_{suffix}" not in inputs or "aux" not in sections:
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
        report.update(
            {
                c.name: {"ok": c.ok, "max_diff": c.max_diff, "spread": c.spread, "detail": c.detail}
                for c in checks
            }
        )
    failed = [c for c in checks if c.required and not c.ok]
    if failed:
        out(
            f"PARITY FAILED {len(failed)}/{sum(c.required for c in checks)} required checks: "
            + ", ".join(c.name for c in failed)
        )
        return 1
    out(f"PARITY OK {len(checks)} checks")
    return 0


def _sequence_gap(
    model: MoAIForConditionalGeneration, batch: dict[str, torch.Tensor], got: torch.Tensor, want: torch.Tensor
) -> float:
    """Largest per-row difference in total log-probability between two continuations of the same prompts.

    Both continuations are scored by this model, teacher-forced, with generated tokens outside the mixer
    (stream 0, as in cached decoding). Two greedy or beam results that differ only through a near-tie
    score within the logit tolerance of each other.
    """

    def score(cont: torch.Tensor) -> torch.Tensor:
        cont = cont.to(batch["input_ids"].device)
        ids = torch.cat([batch["input_ids"], cont], dim=1)  # [B, S + T]
        mask = torch.cat([batch["attention_mask"], torch.ones_like(cont)], dim=1)
        streams = torch.cat([batch["mm_token_type_ids"], torch.full_like(cont, STREAM_NONE)], dim=1)
        with torch.no_grad():
            logits = model(
                **{**batch, "input_ids": ids, "attention_mask": mask, "mm_token_type_ids": streams}
            ).logits.float()
        logp = logits[:, batch["input_ids"].shape[1] - 1 : -1].log_softmax(-1)  # [B, T, V]
        return logp.gather(-1, cont[..., None]).squeeze(-1).sum(-1).cpu()  # [B]

    if got.shape != want.shape:
        return float("inf")
    return float((score(got) - score(want)).abs().max())


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
