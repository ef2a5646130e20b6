"""The trained variants of the ShapesWorld ablation (docs/shapesworld.md, "Ablation").

    python -m moai.recipes.variants --recipe runs/shapesworld [--step2-steps 1000] [--only NAME,...]

The paper's removed-module table (arXiv 2403.07508, Table 4) compares models trained differently, not only one
model with parts of its input removed. Each variant here is ``moai train`` runs of the shipped stage configs
(moai/train/configs/shapesworld/) with a few overrides, on the world, perception cache and frozen base of a
finished recipe run (``make shapesworld-model``), into ``RECIPE/variants/NAME/``. Every MoAI variant ends as the
recipe does: its MoAI modules moved onto the recipe's ``base_pos`` model and step 2's last part run again there
(``step2_pos``; docs/shapesworld.md, "The MoAI modules moved onto a base trained on"):

* ``reference``: step 2's last part as the recipe, from the recipe's ``step2_shown`` model, with the variants'
  step count (the row the other MoAI variants compare against when ``--step2-steps`` differs from the recipe's);
* ``module-dropout``: ``step2_dropout.yaml`` in its place (each module's aux removed from a sample with
  probability 0.3);
* ``official-mode``: every MoAI stage with ``compat: official`` (the official compressor and mixer behaviour,
  so no compressor passthrough and the ``prompt`` mixer scope, where the recipe's later parts of step 2 set
  ``causal``);
* ``v2-verbalizer`` / ``official-verbalizer``: every MoAI stage on the v2 / official verbalization;
* ``base-equal-compute``: the base trained on (``base.yaml``'s schedule, from the recipe's base, base2/final)
  until its training time equals that of the recipe's stages together (both base runs, the MoAI stages and
  stage 8's two), as measured in their summaries;
* ``base-pos-equal-compute``: the base the MoAI modules end on (``base_pos``, with the position tower and the
  position questions) trained on by ``base_pos.yaml`` for as long as the MoAI stages and ``step2_pos`` took:
  the base alone at the MoAI model's whole compute, everything before those stages shared by both.

A rerun keeps the stages already trained; ``variants.json`` maps each variant to its final model.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..train.config import TrainConfig
from .launch import default_processes, train_stage
from .shapesworld import BASE_STAGES, CONFIGS, MOAI_STAGES, MOVE_STAGES, MOVED_ONTO, NO_AUX_STAGES


@dataclass(frozen=True)
class Variant:
    """One trained variant: the stages it runs, from which model of the recipe, with which overrides."""

    name: str
    """Directory and row name."""
    start: str
    """The recipe stage whose final model the first stage starts from (``base2``, the recipe's base, or
    ``step2_shown``)."""
    stages: tuple[str, ...]
    """Shipped stage configs run in order (`MOAI_STAGES`, ``step2_dropout``, ``step2_pos``, ``base``)."""
    overrides: tuple[str, ...] = ()
    """``key=value`` overrides applied to every stage."""
    label: str = ""
    """Row name in the ablation table."""


MOVED = MOVE_STAGES[-1]
"""The stage that ends every MoAI variant: its modules moved onto the recipe's ``base_pos`` and trained there."""
BASE_POS = MOVED_ONTO[MOVED]
"""The base the MoAI modules end on (``base_pos``)."""
EQUAL_COMPUTE_STAGES = ("base", BASE_POS)
"""The base stages a variant trains on for the MoAI stages' time (`equal_compute_steps`)."""
VARIANTS = (
    Variant("reference", MOAI_STAGES[-2], (MOAI_STAGES[-1], MOVED), label="MoAI-tiny, step 2 retrained"),
    Variant(
        "module-dropout",
        MOAI_STAGES[-2],
        ("step2_dropout", MOVED),
        ("module_dropout=0.3",),  # step2_dropout.yaml's, in the moved stage too
        "MoAI-tiny + module dropout",
    ),
    Variant(
        "official-mode",
        BASE_STAGES[-1],
        (*MOAI_STAGES, MOVED),
        ("compat=official", "compressor_passthrough=false", "mixer_scope=prompt"),
        "MoAI-tiny trained in official mode",
    ),
    Variant(
        "v2-verbalizer",
        BASE_STAGES[-1],
        (*MOAI_STAGES, MOVED),
        ("verbalizer=v2",),
        "MoAI-tiny, v2 verbalizer",
    ),
    Variant(
        "official-verbalizer",
        BASE_STAGES[-1],
        (*MOAI_STAGES, MOVED),
        ("verbalizer=official",),
        "MoAI-tiny, official verbalizer",
    ),
    Variant(
        "base-equal-compute",
        BASE_STAGES[-1],
        ("base",),
        ("warmup_steps=30",),  # base2.yaml's: base.yaml's schedule restarted from a trained base
        "base (no aux), same compute as MoAI",
    ),
    Variant(
        "base-pos-equal-compute",
        BASE_POS,
        (BASE_POS,),
        label="base_pos trained on (no aux), same compute as MoAI",
    ),
)
"""Every variant, in the order they are trained and reported."""
NAMES = tuple(v.name for v in VARIANTS)
STEP2_STAGES = ("step2", "step2_dropout", MOVED)
"""Step 2's last part, in each of its forms: ``--step2-steps`` sets their steps."""


def _summary(recipe: Path, stage: str) -> dict:
    """The training summary of one recipe stage (`_find_summary`); a stage with none is a `ValueError`."""
    summary = _find_summary(recipe, stage)
    if summary is None:
        raise ValueError(
            f"recipe run {recipe}: no summary of stage {stage} "
            f"({recipe / stage / 'summary.json'} nor {recipe / 'recipe.json'})"
        )
    return summary


def _find_summary(recipe: Path, stage: str) -> dict | None:
    """The stage's ``summary.json``, else the copy the recipe keeps in ``recipe.json`` (the only record left where
    the stage's run directory is gone), else None."""
    path = recipe / stage / "summary.json"
    if path.is_file():
        return json.loads(path.read_text())
    return _record(recipe).get(stage, {}).get("summary")


def _record(recipe: Path) -> dict:
    """The recipe run's ``recipe.json`` ({} where there is none)."""
    index = recipe / "recipe.json"
    return json.loads(index.read_text()) if index.is_file() else {}


def equal_compute_steps(recipe: Path, stage: str = "base") -> int:
    """More steps of a base stage so that the base is trained as long as the MoAI model past it: the stage's own
    steps scaled by those stages' time over its own (wall seconds of each stage's summary).

    ``base`` (from base2): past both base runs come the MoAI stages (+ the base trained on and the moved
    modules' stage, where the run has them; a run made before them has not). ``base_pos``: past it come the
    MoAI stages and the moved modules' stage."""
    if stage == "base":
        runs = [_summary(recipe, s) for s in BASE_STAGES]
        after = (*MOAI_STAGES, *(s for s in MOVE_STAGES if _find_summary(recipe, s) is not None))
    elif stage == BASE_POS:
        runs, after = [_summary(recipe, stage)], (*MOAI_STAGES, MOVED)
    else:
        raise ValueError(f"no equal-compute schedule for stage {stage}")
    steps, seconds = sum(r["steps"] for r in runs), sum(float(r["seconds"]) for r in runs)
    moai = sum(float(_summary(recipe, s)["seconds"]) for s in after)
    return max(1, round(steps * moai / max(seconds, 1e-3)))


def stage_config(
    stage: str, variant: Variant, recipe: Path, model: str, steps: int | None, batch_size: int | None
) -> TrainConfig:
    """The shipped config of ``stage`` for ``variant``: the recipe run's data and cache, its own run directory."""
    overrides = [
        f"output_dir={recipe / 'variants' / variant.name / stage}",
        f"model={model}",
        "progress=false",
        *variant.overrides,
    ]
    if stage not in NO_AUX_STAGES:
        overrides.append(f"perception_cache={recipe / 'cache'}")
    if stage in MOVED_ONTO:
        overrides.append(f"base_weights={recipe / MOVED_ONTO[stage] / 'final'}")
    if steps is not None:
        overrides.append(f"max_steps={steps}")
    if batch_size:
        overrides.append(f"batch_size={batch_size}")
    config = TrainConfig.load(CONFIGS / f"{stage}.yaml", overrides, root=recipe)
    # the config's warmup (step 2's later parts have none: they go on at their start model's learning rate),
    # never longer than the run
    return replace(config, warmup_steps=min(config.warmup_steps, config.max_steps))


def train_variants(
    recipe: Path,
    names: Sequence[str] = NAMES,
    step2_steps: int | None = None,
    batch_size: int | None = None,
    say: Callable[[str], None] = print,
    stage_steps: dict[str, int] | None = None,
    processes: int = 1,
) -> dict:
    """Train the ``names`` variants on the recipe run in ``recipe``; returns (and writes to
    ``RECIPE/variants/variants.json``) each variant's label, final model, stages and seconds.
    ``step2_steps`` sets the steps of step 2's last part (``step2``, ``step2_dropout``), ``stage_steps`` those of
    any other MoAI stage (``{"step2_blank": 10}``); the configs' otherwise. ``processes``: data-parallel
    processes of each stage (moai/recipes/launch.py)."""
    # heavy: torch, transformers
    from ..train.plot import plot_run

    chosen = [v for v in VARIANTS if v.name in names]
    needed = {v.start for v in chosen} | {MOVED_ONTO[s] for v in chosen for s in v.stages if s in MOVED_ONTO}
    for stage in sorted(needed):
        if not (recipe / stage / "final" / "config.json").is_file():
            raise ValueError(
                f"recipe run {recipe}: no {stage}/final model (run make shapesworld-model first)"
            )
    out = recipe / "variants"
    out.mkdir(parents=True, exist_ok=True)
    index = out / "variants.json"
    report: dict = json.loads(index.read_text()) if index.is_file() else {}
    for variant in VARIANTS:
        if variant.name not in names:
            continue
        model = str(recipe / variant.start / "final")
        stages: dict[str, dict] = {}
        for stage in variant.stages:
            if stage in EQUAL_COMPUTE_STAGES:
                steps = equal_compute_steps(recipe, stage)
            else:
                steps = step2_steps if stage in STEP2_STAGES else (stage_steps or {}).get(stage)
            config = stage_config(stage, variant, recipe, model, steps, batch_size)
            run = Path(config.output_dir)
            clock = time.perf_counter()
            if (run / "summary.json").is_file() and (run / "final" / "config.json").is_file():
                say(f"[variants] {variant.name} {stage}: already trained in {run}, reused")
                summary = json.loads((run / "summary.json").read_text())
            else:
                say(
                    f"[variants] {variant.name} {stage}: {config.max_steps} steps of batch {config.batch_size}"
                )
                summary = train_stage(config, processes, lambda m: say(f"  {m}"))
                plot_run(run)
            stages[stage] = {
                "steps": summary["steps"],
                "seconds": summary["seconds"],
                "final_loss": summary["final_loss"],
                "overrides": list(variant.overrides),
            }
            say(f"[variants] {variant.name} {stage}: done in {time.perf_counter() - clock:.0f} s")
            model = str(run / "final")
        step2 = [stages[s]["steps"] for s in variant.stages if s in STEP2_STAGES]
        report[variant.name] = {
            "label": f"{variant.label} ({step2[0]} step-2 steps)" if step2 else variant.label,
            "model": model,
            "start": variant.start,
            "stages": stages,
        }
        index.write_text(json.dumps(report, indent=2) + "\n")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m moai.recipes.variants", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--recipe", default="runs/shapesworld", help="a finished recipe run directory (default: %(default)s)"
    )
    parser.add_argument(
        "--step2-steps",
        type=int,
        default=None,
        help="optimizer steps of every variant's step 2 (default: the configs', as the recipe)",
    )
    parser.add_argument("--batch-size", type=int, default=None, help="override every stage's (default: none)")
    parser.add_argument(
        "--processes",
        type=int,
        metavar="N",
        help="data-parallel processes of each stage (default: 2 on a CPU machine with two or more cores, else 1)",
    )
    parser.add_argument(
        "--only", default=",".join(NAMES), help="comma-separated variants to train (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = sorted(set(names) - set(NAMES))
    if unknown:
        parser.error(f"--only: unknown variant(s) {', '.join(unknown)}; choose from {', '.join(NAMES)}")
    if args.processes is not None and args.processes < 1:
        parser.error(f"--processes must be >= 1, got {args.processes}")
    if args.step2_steps is not None and args.step2_steps < 1:
        parser.error(f"--step2-steps must be >= 1, got {args.step2_steps}")
    try:
        report = train_variants(
            Path(args.recipe).resolve(),
            names,
            args.step2_steps,
            args.batch_size,
            say=lambda m: print(m, flush=True),
            processes=args.processes or default_processes(),
        )
    except (ValueError, OSError) as err:
        print(f"python -m moai.recipes.variants: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # a stage on several processes failed; its own output said why
        print(f"python -m moai.recipes.variants: error: {err}", file=sys.stderr)
        return 1
    for name in names:
        print(f"[variants] {name}: {report[name]['model']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
