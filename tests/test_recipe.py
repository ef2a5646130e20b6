"""The ShapesWorld recipe (moai/recipes/shapesworld.py): its baseline and checks, and a miniature run end to end."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from test_referent import SUM_ORDER_ATOL, SUM_ORDER_RTOL
from train_data import write_config, write_dataset
from transformers import AutoTokenizer

from moai.engine import Engine
from moai.recipes.launch import train_stage
from moai.recipes.shapesworld import (
    BASE_CHECKED,
    BASE_STAGES,
    COLUMNS,
    CONFIGS,
    MOAI_STAGES,
    READING_WINDOW,
    RECIPE_STAGES,
    SIGN_QUESTIONS,
    SIGN_WORDS,
    STAGES,
    TOWER,
    TOWER_POS,
    RecipeOptions,
    accuracy_by_category,
    answer_all,
    check_base,
    check_moai,
    check_reading,
    install,
    majority_answers,
    make_tower,
    run_recipe,
    stage_config,
    template_key,
    texts,
)
from moai.recipes.shapesworld import main as shapesworld_main
from moai.recipes.variants import main as variants_main
from moai.train.config import TrainConfig
from moai.worlds.positions import position_records
from moai.worlds.shapes import read_scenes, sign_word_question, write_world
from moai.worlds.signs import training_records


def test_template_key_hides_the_filled_words():
    assert template_key("Is there a red circle in the image?") == template_key(
        "Is there a blue square in the image?"
    )
    assert template_key("How many triangles are there?") == "How many {x} are there?"
    assert (
        template_key("Is the word QUAKE written in the image?") == "Is the word {WORD} written in the image?"
    )
    assert template_key("What color is the square?") != template_key("What shape is the red object?")


def test_majority_baseline_and_accuracy_by_hand():
    train = [
        {"text": "Is there a red circle in the image?", "answer": "no"},
        {"text": "Is there a blue square in the image?", "answer": "no"},
        {"text": "Is there a red square in the image?", "answer": "yes"},
        {"text": "What color is the circle?", "answer": "red"},
    ]
    majority = majority_answers(train)
    assert majority == {"Is there a {x} {x} in the image?": "no", "What color is the {x}?": "red"}
    check = [
        {"category": "existence", "answer": "no"},
        {"category": "existence", "answer": "yes"},
        {"category": "colour", "answer": "blue"},
    ]
    acc = accuracy_by_category(check, ["No.", "no", "Blue"])
    assert acc == {"existence": 50.0, "colour": 100.0, "overall": pytest.approx(200 / 3)}


def test_shipped_stage_configs_chain_base_step1_and_step2_in_four_parts(tmp_path):
    options = RecipeOptions(out=tmp_path)
    configs = {s: stage_config(s, options, f"{tmp_path}/prev") for s in STAGES}
    assert [c.step for c in configs.values()] == ["base", "base", "step1", *["step2"] * 4, "base", "step2"]
    # the base encodes the image in the user's turn as the shipped model's base was trained, the MoAI stages (the
    # variants' step-2 config too) in the template's slot, where the engine asks (docs/shapesworld.md, "The
    # image in the prompt"), so that the recipe remakes that model
    variant = TrainConfig.load(CONFIGS / "step2_dropout.yaml", root=tmp_path)
    assert {configs[s].image_slot for s in BASE_STAGES} == {"as_written"}
    assert {c.image_slot for c in (*(configs[s] for s in MOAI_STAGES), variant)} == {"template"}
    for stage in ("base", "base2"):  # the base in two runs, the second restarting the first's schedule
        assert (
            configs[stage].aux == "none"
            and configs[stage].trainable == "projector+llm"  # on the frozen pretrained tower
            and configs[stage].model.endswith("prev")
            and configs[stage].perception_cache is None
        )
    first, second = configs["base"], configs["base2"]
    assert (first.lr, first.min_lr, first.batch_size) == (second.lr, second.min_lr, second.batch_size)
    assert second.output_dir == str(tmp_path / "base2")
    for stage in MOAI_STAGES:  # the MoAI steps train the MoAI modules only, on the frozen base
        assert configs[stage].trainable == "moai" and configs[stage].aux == "cache"
        assert configs[stage].perception_cache == str(tmp_path / "cache")
        assert configs[stage].perception_preset == "shapesworld"
        assert configs[stage].verbalizer == "compact-text-first"
    # the sign word's letters go through the mixer from step2_words on (and in the dropout variant)
    assert [configs[s].mixer_scope for s in MOAI_STAGES] == [None, None, "causal", "causal", "causal"]
    assert variant.mixer_scope == "causal"
    step1 = configs["step1"]  # the MoAI modules of the bundled model (docs/shapesworld.md, The bundled model)
    assert step1.mixer_layers == [0, 1, 2, 3] and step1.moai_init == "fan_in"
    assert step1.compressor_query_scale == 4.0
    assert step1.compressor_passthrough is True and step1.expert_qk_init == "tied"
    # every data path lies in the run directory
    world = tmp_path / "world"
    train, signs, words = (str(world / name) for name in ("train.json", "signs.json", "sign-words.json"))
    for stage in (*BASE_STAGES, "step1"):
        assert [d.path for d in configs[stage].data] == [train]
    # step 2: the sign questions alone, images blanked and the OCR text alone ...
    (blank,) = configs["step2_blank"].data
    assert (blank.path, blank.image_root, blank.blank_images, blank.drop_modules) == (
        signs,
        str(world),
        True,
        ["ps", "owod", "sgg"],
    )
    # ... then the sign word alone the same way ...
    (blank_words,) = configs["step2_words"].data
    assert (blank_words.path, blank_words.blank_images, blank_words.drop_modules) == (
        words,
        True,
        ["ps", "owod", "sgg"],
    )
    # ... then both shown, half with the OCR text alone and half with the whole aux ...
    shown = configs["step2_shown"].data
    assert [(d.path, d.image_root, d.blank_images, d.drop_modules) for d in shown] == [
        (signs, str(world), False, ["ps", "owod", "sgg"]),
        (words, str(world), False, ["ps", "owod", "sgg"]),
        (signs, str(world), False, []),
        (words, str(world), False, []),
    ]
    # ... then every sign question beside the world's questions, each question a sample as the engine asks
    mixed = configs["step2"].data
    assert [(d.path, d.drop_modules, d.weight) for d in mixed] == [
        (train, [], 1.0),
        (signs, [], 0.5),
        (words, [], 0.5),
    ]
    assert configs["step2"].split_turns and variant.split_turns
    assert [(d.path, d.drop_modules, d.weight) for d in variant.data] == [
        (d.path, d.drop_modules, d.weight) for d in mixed
    ]
    # then the base trained on from base2's model, the world's two-shape position questions beside its
    # conversations, and step 2's last part again with step 2's modules moved onto that base
    base_pos, moved = configs["base_pos"], configs["step2_pos"]
    assert (
        base_pos.aux == "none" and base_pos.perception_cache is None and base_pos.image_slot == "as_written"
    )
    assert base_pos.trainable == "projector+llm" and base_pos.base_weights is None
    assert [d.path for d in base_pos.data] == [train, str(world / "positions2.json")]
    assert moved.base_weights == str(tmp_path / "base_pos" / "final")
    assert (moved.trainable, moved.mixer_scope, moved.split_turns, moved.verbalizer) == (
        "moai",
        "causal",
        True,
        "compact-text-first",
    )
    assert [(d.path, d.drop_modules, d.weight) for d in moved.data] == [
        (d.path, d.drop_modules, d.weight) for d in mixed
    ]
    assert (moved.lr, moved.min_lr, moved.max_steps) == (configs["step2"].lr, configs["step2"].min_lr, 500)
    assert all(configs[s].base_weights is None for s in STAGES if s != "step2_pos")
    assert all(isinstance(c, TrainConfig) for c in configs.values())


def test_stage_overrides_reach_their_stage_only(tmp_path, capsys):
    options = RecipeOptions(out=tmp_path, overrides={"step2": ["mixer_scope=causal", "lr=3e-3"]})
    configs = {s: stage_config(s, options, f"{tmp_path}/prev") for s in STAGES}
    assert configs["step2"].mixer_scope == "causal" and configs["step2"].lr == 3e-3
    assert configs["step2"].output_dir == str(tmp_path / "step2")  # the run's paths stay
    assert configs["step1"].mixer_scope is None and configs["step1"].lr == 1e-3
    bad_ones = ("step3.lr=1", "step2.lr", "step2.lrr=1", "step2.lr=abc", "tower.nope=1", "tower.steps=x")
    for bad in bad_ones:  # refused before anything runs
        with pytest.raises(SystemExit) as exit_info:
            shapesworld_main(["--out", str(tmp_path / "run"), "--override", bad])
        assert exit_info.value.code == 2
        error = capsys.readouterr().err.splitlines()[-1]
        assert "--override" in error and bad.split(".")[0] in error
    assert not (tmp_path / "run").exists()


def test_miniature_recipe_runs_end_to_end_and_installs(tmp_path, capsys):
    """Every stage for two steps on a handful of scenes: the driver, the checks' measurements, the card."""
    options = RecipeOptions(
        out=tmp_path / "run",
        scenes=13,  # the first two-shape scene of the training seed that asks a position question is its 13th
        check_scenes=3,
        steps={s: 2 for s in RECIPE_STAGES},
        batch_size=2,
        checks=False,
        overrides={TOWER: ["position_weight=1"]},
    )
    lines = []
    report = run_recipe(options, say=lines.append)
    assert [k for k in RECIPE_STAGES if k in report] == list(RECIPE_STAGES)
    assert (
        report[TOWER]["summary"]["steps"] == 2
        and (tmp_path / "run" / TOWER / "final" / "config.json").is_file()
    )
    assert report[TOWER]["summary"]["position_error_px"] > 0  # the tower's override reached it
    base = TrainConfig.load(
        tmp_path / "run" / "base" / "config.yaml"
    )  # the base starts from the pretrained tower
    assert base.model == str(tmp_path / "run" / TOWER / "final")
    tower = load_file(str(tmp_path / "run" / TOWER / "final" / "model.safetensors"))
    trained = load_file(str(tmp_path / "run" / "base" / "final" / "model.safetensors"))
    vision = [k for k in tower if ".vision_tower." in k]
    assert vision and all(torch.equal(tower[k], trained[k]) for k in vision)  # and keeps it frozen
    assert not torch.equal(tower["model.projector.0.weight"], trained["model.projector.0.weight"])
    assert "check" not in report["base"]  # the base is checked after its second run
    assert set(report["base2"]["check"]) >= {"baseline", "base", "failed"}
    assert TrainConfig.load(tmp_path / "run" / "base2" / "config.yaml").model == str(
        tmp_path / "run" / "base" / "final"
    )
    assert 0.0 <= report["step2_pos"]["check"]["changed_by_swapped_aux"] <= 1.0
    assert "check" not in report["step2"] and set(report["base_pos"]["check"]) >= {
        "baseline",
        "base",
        "failed",
    }
    # the base trained on starts from base2's model with its tower trained on with the position target ...
    run = tmp_path / "run"
    assert (
        report[TOWER_POS]["summary"]["steps"] == 2 and report[TOWER_POS]["summary"]["position_error_px"] > 0
    )
    assert TrainConfig.load(run / "base_pos" / "config.yaml").model == str(run / TOWER_POS / "final")
    base2, tower_pos = (load_file(str(run / s / "final" / "model.safetensors")) for s in ("base2", TOWER_POS))
    assert all(torch.equal(tower_pos[k], base2[k]) for k in base2 if ".vision_tower." not in k)
    assert any(not torch.equal(tower_pos[k], base2[k]) for k in base2 if ".vision_tower." in k)
    # ... on the world's two-shape position questions ...
    two = [s for s in read_scenes(run / "world") if len(s.shapes) == 2]
    written = json.loads((run / "world" / "positions2.json").read_text())
    assert two and written == position_records(two)
    # ... and the last stage puts step 2's MoAI modules on it, frozen, and trains them
    assert TrainConfig.load(run / "step2_pos" / "config.yaml").model == str(run / "step2" / "final")
    step2, base_pos, final = (
        load_file(str(run / s / "final" / "model.safetensors")) for s in ("step2", "base_pos", "step2_pos")
    )
    moai = [k for k in final if k.startswith("model.compressor.") or ".moai_mixer." in k]
    assert moai and len(final) - len(moai) > 100
    assert all(torch.equal(final[k], base_pos[k]) for k in final if k not in moai)
    assert any(not torch.equal(final[k], step2[k]) for k in moai)
    assert report["model"] == str(run / "step2_pos" / "final")
    assert report["step2_blank"]["check"]["failed"] == ["plateau"]  # two steps: one window, no fall to see
    for stage in STAGES:
        assert (tmp_path / "run" / stage / "training.png").is_file()
        assert report[stage]["summary"]["steps"] == 2
    assert json.loads((tmp_path / "run" / "recipe.json").read_text())["model"] == report["model"]
    assert any(line.startswith("[recipe] stage step2") for line in lines)
    # the sign questions step 2 starts on: the world's scenes with a sign, written as SIGN_QUESTIONS says
    written = json.loads((tmp_path / "run" / "world" / "signs.json").read_text())
    assert written and written == training_records(read_scenes(tmp_path / "run" / "world"), **SIGN_QUESTIONS)
    assert {r["conversations"][1]["value"] for r in written} == {"yes", "no"}
    words = json.loads((tmp_path / "run" / "world" / "sign-words.json").read_text())
    assert words == training_records(read_scenes(tmp_path / "run" / "world"), **SIGN_WORDS)
    assert all(r["conversations"][0]["value"].endswith(sign_word_question()) for r in words)
    # each part of step 2 goes on from the one before
    for stage, previous in zip(MOAI_STAGES[1:], MOAI_STAGES):
        assert TrainConfig.load(tmp_path / "run" / stage / "config.yaml").model == str(
            tmp_path / "run" / previous / "final"
        )
    installed = install(report, tmp_path / "model")
    card = (installed / "README.md").read_text()
    assert "## Scores" in card and "MoAI, no aux" in card and "reused" not in card
    assert "- step2_blank: step2_blank's loss never fell below" in card
    (run / "step2_blank" / "metrics.jsonl").unlink()  # a stage kept with its model and summary only
    again = run_recipe(options, say=lines.append)  # a rerun keeps every finished stage, and the card says so
    assert all(again[s]["reused"] for s in RECIPE_STAGES)
    assert (
        again["step2_blank"]["check"] == report["step2_blank"]["check"]
    )  # the check recorded when it trained
    assert any("step2_blank: no loss curve" in line for line in lines)
    assert f"reused the stages {', '.join(RECIPE_STAGES)}" in install(again, tmp_path / "model2").joinpath(
        "README.md"
    ).read_text().replace("\n", " ")
    engine = Engine.load(installed)
    assert engine.aux_settings.perception_preset == "shapesworld"
    # --check-model: step 2's check of any saved model on the run's check set, nothing trained
    assert shapesworld_main(["--out", str(tmp_path / "run"), "--check-model", str(installed)]) == 0
    printed = capsys.readouterr().out
    assert "MoAI, another scene's aux" in printed and "answers changed by another scene's aux" in printed
    assert shapesworld_main(["--out", str(tmp_path / "nothing"), "--check-model", str(installed)]) == 2
    assert "no check set" in capsys.readouterr().err
    # --check-base: the base's check of any saved base, next to the majority baseline of the run's world
    base2 = tmp_path / "run" / "base2" / "final"
    assert shapesworld_main(["--out", str(tmp_path / "run"), "--check-base", str(base2)]) == 0
    printed = capsys.readouterr().out.splitlines()
    want = report["base2"]["check"]["base"]
    row = next(line for line in printed if line.startswith("base "))
    expected = [round(want.get(c, math.nan), 1) for c in COLUMNS]
    assert [float(v) for v in row.split()[1:]] == pytest.approx(expected, abs=0.051, nan_ok=True)
    assert any(line.startswith("majority baseline") for line in printed)
    assert (
        len(
            engine.answer(
                [tmp_path / "run" / "check" / "images" / "2000-000000.png"], ["How many circles are there?"]
            )
        )
        == 1
    )


def test_a_world_of_another_size_is_made_again_not_reused(tmp_path):
    write_world(tmp_path / "world", 12, seed=1000)  # an earlier run's world, smaller than asked
    options = RecipeOptions(
        out=tmp_path,
        scenes=13,  # the first with a two-shape position question
        check_scenes=2,
        steps={s: 1 for s in RECIPE_STAGES},
        batch_size=2,
        checks=False,
    )
    lines = []
    run_recipe(options, say=lines.append)
    assert len((tmp_path / "world" / "scenes.jsonl").read_text().splitlines()) == 13
    assert any("world: 12 scenes" in line and "13 asked: made again" in line for line in lines)


def test_equal_compute_steps_read_the_recipe_record_where_a_stage_directory_is_gone(tmp_path):
    """The base-equal-compute variant's steps come from each stage's summary.json, else from recipe.json."""
    from moai.recipes import variants

    seconds = {"base": 100.0, "base2": 100.0, **{s: 30.0 for s in MOAI_STAGES}}
    steps = {"base": 300, "base2": 100}
    report = {s: {"summary": {"steps": steps.get(s, 10), "seconds": t}} for s, t in seconds.items()}
    (tmp_path / "recipe.json").write_text(json.dumps(report))
    moai = 30.0 * len(MOAI_STAGES)
    assert variants.equal_compute_steps(tmp_path) == round(400 * moai / 200)
    (tmp_path / "base").mkdir()  # a stage's own summary comes first
    (tmp_path / "base" / "summary.json").write_text(json.dumps({"steps": 300, "seconds": 300.0}))
    assert variants.equal_compute_steps(tmp_path) == round(400 * moai / 400)
    report["step2_pos"] = {"summary": {"steps": 10, "seconds": 60.0}}  # a run with the moved modules' stage
    (tmp_path / "recipe.json").write_text(json.dumps(report))
    assert variants.equal_compute_steps(tmp_path) == round(400 * (moai + 60.0) / 400)
    # base_pos: its own time, and the MoAI stages' after it
    report["base_pos"] = {"summary": {"steps": 300, "seconds": 150.0}}
    (tmp_path / "recipe.json").write_text(json.dumps(report))
    assert variants.equal_compute_steps(tmp_path, "base_pos") == round(300 * (moai + 60.0) / 150)
    with pytest.raises(ValueError, match="no equal-compute schedule for stage step1"):
        variants.equal_compute_steps(tmp_path, "step1")
    del report["step2"]
    (tmp_path / "recipe.json").write_text(json.dumps(report))
    with pytest.raises(ValueError, match="no summary of stage step2"):
        variants.equal_compute_steps(tmp_path)
    # only the selected variants' start models are required
    with pytest.raises(ValueError, match="no base2/final model"):
        variants.train_variants(tmp_path, ["base-equal-compute"], say=lambda _m: None)


def test_variant_stage_keeps_its_configs_warmup_when_its_steps_are_set(tmp_path):
    """A variant's step count changes the run's length only: step 2's later parts keep their config's warmup of
    0 (they go on at their start model's learning rate), and no warmup outlasts the run."""
    from moai.recipes import variants

    by_name = {v.name: v for v in variants.VARIANTS}
    shipped = {
        s: TrainConfig.load(CONFIGS / f"{s}.yaml", root=tmp_path)
        for s in ("step1", "step2", "step2_dropout", "step2_pos")
    }
    assert shipped["step2"].warmup_steps == 0 and shipped["step1"].warmup_steps > 2
    for stage in ("step2", "step2_dropout", "step2_pos"):
        config = variants.stage_config(stage, by_name["module-dropout"], tmp_path, "m", 500, None)
        assert (config.max_steps, config.warmup_steps) == (500, shipped[stage].warmup_steps)
    assert variants.stage_config(
        "step1", by_name["v2-verbalizer"], tmp_path, "m", None, None
    ).warmup_steps == (shipped["step1"].warmup_steps)
    short = variants.stage_config("step1", by_name["v2-verbalizer"], tmp_path, "m", 2, None)
    assert (short.max_steps, short.warmup_steps) == (2, 2)
    base = variants.stage_config("base", by_name["base-equal-compute"], tmp_path, "m", 7000, None)
    assert (base.max_steps, base.warmup_steps) == (7000, 30)  # base2.yaml's restarted schedule


def test_miniature_variants_train_on_a_recipe_run_and_enter_the_ablation(tmp_path):
    """Every trained variant of the ablation for two steps on a miniature recipe run, then the ablation with them."""
    from moai.perception.settings import AuxSettings
    from moai.recipes import ablation, variants

    run = tmp_path / "run"
    options = RecipeOptions(
        out=run, scenes=13, check_scenes=3, steps={s: 2 for s in RECIPE_STAGES}, batch_size=2
    )
    run_recipe(RecipeOptions(**{**options.__dict__, "checks": False}), say=lambda _m: None)
    with pytest.raises(ValueError, match="no base2/final model"):
        variants.train_variants(tmp_path / "elsewhere", say=lambda _m: None)
    lines: list[str] = []
    few = {s: 2 for s in MOAI_STAGES}
    report = variants.train_variants(run, step2_steps=2, batch_size=2, say=lines.append, stage_steps=few)
    assert list(report) == list(variants.NAMES)
    for name, entry in report.items():
        assert (run / "variants" / name).is_dir() and entry["model"].startswith(str(run / "variants" / name))
        assert Engine.load(entry["model"]).model is not None
    official = json.loads(
        (run / "variants" / "official-mode" / "step2" / "final" / "config.json").read_text()
    )
    assert official["compat"] == "official" and official["mixer_config"]["scope"] == "prompt"
    for name, verbalizer in (
        ("v2-verbalizer", "v2"),
        ("official-verbalizer", "official"),
        ("reference", "compact-text-first"),
    ):
        assert AuxSettings.load(report[name]["model"]).verbalizer == verbalizer
    for stage in MOAI_STAGES:  # the variants that retrain the MoAI modules run every MoAI stage
        assert report["official-mode"]["stages"][stage]["steps"] == 2
    assert list(report["reference"]["stages"]) == [
        "step2",
        "step2_pos",
    ]  # from the recipe's step2_shown model
    # every MoAI variant ends as the recipe: its modules moved onto the recipe's base_pos and trained there
    for name in ("reference", "module-dropout", "official-mode", "v2-verbalizer", "official-verbalizer"):
        moved = TrainConfig.load(run / "variants" / name / "step2_pos" / "config.yaml")
        assert moved.base_weights == str(run / "base_pos" / "final") and report[name]["stages"]["step2_pos"]
        assert moved.model == str(run / "variants" / name / list(report[name]["stages"])[-2] / "final")
        final = load_file(str(run / "variants" / name / "step2_pos" / "final" / "model.safetensors"))
        base = load_file(str(run / "base_pos" / "final" / "model.safetensors"))
        llm = [k for k in final if ".language_model.layers.0.mlp." in k]
        assert llm and all(torch.equal(final[k], base[k]) for k in llm)
    assert (
        TrainConfig.load(run / "variants" / "module-dropout" / "step2_pos" / "config.yaml").module_dropout
        == 0.3
    )
    dropout = TrainConfig.load(run / "variants" / "module-dropout" / "step2_dropout" / "config.yaml")
    assert dropout.model == str(run / "step2_shown" / "final") and len(dropout.data) == 3
    assert dropout.module_dropout == 0.3 and report["module-dropout"]["stages"]["step2_dropout"]["steps"] == 2
    assert report["base-equal-compute"]["stages"]["base"]["steps"] == variants.equal_compute_steps(run)
    # the base the MoAI modules end on, trained on by its own config from its own model
    on = TrainConfig.load(run / "variants" / "base-pos-equal-compute" / "base_pos" / "config.yaml")
    assert on.model == str(run / "base_pos" / "final") and on.aux == "none" and on.perception_cache is None
    assert [Path(d.path).name for d in on.data] == [
        "train.json",
        "positions2.json",
    ] and on.referent_weight > 0
    assert report["base-pos-equal-compute"]["stages"]["base_pos"]["steps"] == variants.equal_compute_steps(
        run, "base_pos"
    )
    assert report["reference"]["label"] == "MoAI-tiny, step 2 retrained (2 step-2 steps)"
    # a rerun reuses every stage
    lines.clear()
    variants.train_variants(
        run, ["reference"], step2_steps=2, batch_size=2, say=lines.append, stage_steps=few
    )
    assert any("already trained" in line for line in lines)

    out = tmp_path / "ablation"
    argv = [
        "--model",
        report["reference"]["model"],
        "--base",
        str(run / "base2" / "final"),
        "--out",
        str(out),
    ]
    argv += ["--world", str(tmp_path / "heldout"), "--scenes", "12", "--per-category", "1"]
    assert ablation.main([*argv, "--variants", str(run / "variants" / "variants.json")]) == 0
    rows = json.loads((out / "results.json").read_text())["accuracy"]
    for entry in report.values():
        assert entry["label"] in rows
    assert "MoAI-tiny + module dropout (2 step-2 steps), OCR aux removed" in rows
    assert (out / "ablation.png").is_file() and (out / "gates.png").is_file()


def test_ablation_question_set_is_balanced_and_refuses_a_short_world(tmp_path):
    from moai.recipes.ablation import balanced_questions
    from moai.recipes.shapesworld import markdown_table
    from moai.worlds.shapes import CATEGORIES, write_world

    write_world(tmp_path, scenes=20, seed=77)
    questions = balanced_questions(tmp_path, per_category=5)
    assert [q["category"] for q in questions] == [c for c in CATEGORIES for _ in range(5)]
    assert len({q["question_id"] for q in questions}) == len(questions)
    with pytest.raises(ValueError, match="fewer than 500"):
        balanced_questions(tmp_path, per_category=500)
    table = markdown_table({"MoAI": {c: 50.0 for c in (*CATEGORIES, "overall")}})
    assert table.splitlines()[2] == "| MoAI | " + " | ".join(["50.0"] * (len(CATEGORIES) + 1)) + " |"


class ScriptedEngine:
    """Answers from a function of (image, question, perception, drop): the checks' arithmetic, no model."""

    def __init__(self, rule):
        self.rule = rule
        self.perceiver = self

    def load(self, path):
        return path

    def perceive(self, images):
        return [f"perception of {p.name}" for p in images]

    def answer(self, images, questions, perceptions=None, drop=()):
        perceptions = perceptions or self.perceive(images)
        return [
            SimpleNamespace(text=self.rule(i, q, p, drop)) for i, q, p in zip(images, questions, perceptions)
        ]


def test_answer_all_slices_the_perceptions_and_gives_drop_to_every_batch(tmp_path):
    """``drop`` as a list reaches every batch whole (a list used to be sliced like the perceptions, so only the
    first batch lost the modules); ``perceptions`` follow their questions."""
    write_world(tmp_path, scenes=12, seed=5)
    questions = [json.loads(x) for x in (tmp_path / "questions.jsonl").read_text().splitlines()]
    assert len(questions) > 2 * 4
    engine = ScriptedEngine(lambda i, q, p, d: f"{p}|{','.join(d)}")
    perceptions = [f"p{k}" for k in range(len(questions))]
    said = texts(
        answer_all(engine, tmp_path, questions, batch_size=4, perceptions=perceptions, drop=["ps", "sgg"])
    )
    assert said == [f"p{k}|ps,sgg" for k in range(len(questions))]
    assert texts(answer_all(engine, tmp_path, questions, batch_size=4, drop=("ocr",)))[-1].endswith("|ocr")


def test_checks_pass_and_fail_on_scripted_answers(tmp_path):
    write_world(tmp_path / "check", scenes=12, seed=5)
    write_world(tmp_path / "train", scenes=40, seed=6)
    train = [json.loads(x) for x in (tmp_path / "train" / "questions.jsonl").read_text().splitlines()]
    check = [json.loads(x) for x in (tmp_path / "check" / "questions.jsonl").read_text().splitlines()]
    truth = {(q["image"].split("/")[-1], q["text"]): q["answer"] for q in check}
    majority = majority_answers(train)
    say = []
    prior = ScriptedEngine(lambda i, q, p, d: majority.get(template_key(q), "no"))
    result = check_base(prior, tmp_path / "check", train, say.append)
    assert result["failed"] == list(BASE_CHECKED) and "does not beat" in result["message"]
    assert result["base"] == result["baseline"]  # the same answers score the same
    oracle = ScriptedEngine(lambda i, q, p, d: truth[(i.name, q)])
    assert check_base(oracle, tmp_path / "check", train, say.append)["failed"] == []

    # answers that follow the perception they are given pass the swap check; answers that ignore it fail
    follows = ScriptedEngine(lambda i, q, p, d: "no aux" if d else p)
    result = check_moai(follows, tmp_path / "check", say.append)
    assert result["failed"] == [] and result["changed_by_swapped_aux"] == 1.0
    ignores = ScriptedEngine(lambda i, q, p, d: "yes")
    result = check_moai(ignores, tmp_path / "check", say.append)
    assert result["failed"] == ["swap"] and result["changed_by_swapped_aux"] == 0.0
    assert "does not read the aux" in result["message"]


def test_reading_check_passes_when_the_loss_left_its_plateau_and_fails_when_it_stayed(tmp_path):
    """step2_blank's check (`check_reading`): a loss that falls below PLATEAU_BELOW of its first window's median
    passes, one that stays at chance (as on a base that does not start the reading) fails, naming the stage, also
    after a first logged loss far above chance."""

    def run(name: str, losses: list[float]) -> Path:
        (tmp_path / name).mkdir()
        rows = [{"step": 10 * (i + 1), "loss": loss} for i, loss in enumerate(losses)]
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        return tmp_path / name

    chance = [0.233, 0.229, 0.236, 0.231, 0.230] * 2  # steps 10-100: two windows at chance
    say = []
    started = check_reading(run("started", chance + [0.20, 0.16, 0.12, 0.10, 0.09]), say.append)
    assert started["failed"] == [] and started["left_plateau_at"] == READING_WINDOW * 3
    assert started["means"][0] == pytest.approx(sum(chance[:5]) / 5, abs=1e-4)
    assert any("left its plateau by step 150" in line for line in say)
    stuck = check_reading(run("step2_blank", chance * 4), say.append)
    assert stuck["failed"] == ["plateau"] and stuck["left_plateau_at"] is None
    assert (
        stuck["message"].startswith("step2_blank's loss never fell below") and "(0.231)" in stuck["message"]
    )
    assert stuck["level"] == pytest.approx(0.231)  # the median of the first window's losses
    late = check_reading(run("late", [2.29, 0.259] + chance[2:] + chance * 3), say.append)
    assert late["failed"] == ["plateau"] and late["means"][0] > 0.6  # the chance loss after it is no fall
    empty = check_reading(run("empty", []), say.append)  # a run that logged nothing did not start either
    assert empty["failed"] == ["plateau"] and "none logged" in empty["message"]


def test_phrases_option_makes_object_names_one_token_and_refuses_a_tower_without(tmp_path, capsys):
    """``--phrases``: the tower stage saves the phrase tokenizer the later stages load; a tower of the other
    kind is refused, not silently reused."""
    write_world(tmp_path / "world", 13, seed=1000)  # 13: one two-shape position question
    options = RecipeOptions(out=tmp_path, scenes=13, steps={TOWER: 1}, batch_size=2, phrases=True)
    final = make_tower(options, {}, say=lambda m: None)
    tok = AutoTokenizer.from_pretrained(final)
    assert tok.tokenize("Is there a red circle?") == ["is", "there", "a", "red circle", "?"]
    with pytest.raises(ValueError, match="phrases"):
        make_tower(RecipeOptions(out=tmp_path, scenes=13, phrases=False), {}, say=lambda m: None)
    assert make_tower(options, {}, say=lambda m: None) == final  # the same kind: reused
    assert shapesworld_main(["--out", str(tmp_path), "--scenes", "13"]) == 2  # the CLI: one line, exit 2
    assert "a tower made with the object-name phrases" in capsys.readouterr().err


def test_a_stage_on_two_processes_trains_the_one_process_model_and_keeps_the_global_batch(tmp_path):
    """`train_stage` on two torchrun processes (moai/recipes/launch.py): each gets half the batch, the run is
    the one-process run up to the order of the float sums, and its config.yaml says the global batch."""
    data = write_dataset(tmp_path, n=8)
    runs = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        config = TrainConfig.load(
            write_config(tmp_path, data, batch_size=4, output_dir=str(out), max_steps=3)
        )
        lines = []
        summary = train_stage(config, processes, say=lines.append)
        assert summary["steps"] == 3
        assert any(line.startswith("done: 3 steps") for line in lines)  # the processes' output reaches say
        runs[processes] = (out, summary["final_loss"])
    assert TrainConfig.load(tmp_path / "p2" / "launch.yaml").batch_size == 2  # a process's half
    assert TrainConfig.load(tmp_path / "p2" / "config.yaml").batch_size == 4  # what `moai train` reruns
    assert runs[2][1] == pytest.approx(runs[1][1], rel=SUM_ORDER_RTOL)
    one, two = (load_file(str(runs[p][0] / "final" / "model.safetensors")) for p in (1, 2))
    for name, value in one.items():  # the tolerance of tests/test_referent.py's two-process test
        torch.testing.assert_close(two[name], value, rtol=0, atol=SUM_ORDER_ATOL)

    # a batch that does not split is refused before anything runs, by the stage and by the recipe
    with pytest.raises(ValueError, match="batch_size 4 does not split over 3 processes"):
        train_stage(config, 3)
    options = RecipeOptions(out=tmp_path / "run", batch_size=3, processes=2)
    with pytest.raises(ValueError, match="batch_size 3 does not split over 2 processes"):
        run_recipe(options, say=lambda _m: None)
    assert not (tmp_path / "run").exists()
    for main in (shapesworld_main, variants_main):  # and a process count under one, by both commands
        with pytest.raises(SystemExit) as exit_info:
            main(["--processes", "0"])
        assert exit_info.value.code == 2
