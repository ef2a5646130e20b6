"""The referent target (moai/train/referent.py): its ground truth, where it stands in a batch, and the loop."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from train_data import write_config

from moai.model.constants import IGNORE_INDEX
from moai.recipes.launch import launch_command
from moai.train.build import build_model
from moai.train.config import TrainConfig
from moai.train.data import Collator, DataReport, Example, load_examples
from moai.train.loop import train
from moai.train.referent import scene_referents
from moai.worlds.shapes import CANVAS, Scene, Shape, read_scenes, write_world

QUIET = dict(log=lambda _msg: None)
ROOT = Path(__file__).resolve().parent.parent
SUM_ORDER_RTOL = 1e-5
"""Two processes against one: the losses and gradient norms differed by <= 2e-7 (relative) under
ATEN_CPU_CAPABILITY=default, avx2 and avx512; 50 times that."""
SUM_ORDER_ATOL = 1e-4
"""... and the final weights by <= 1e-5 (Adam's normalised steps make the gradients' last-bit differences
visible in weights whose gradients are near zero); ten times that."""


def _shape(kind: str, colour: str, box: tuple[int, int, int, int]) -> Shape:
    return Shape(kind, colour, (0, 0, 0), box)


def test_scene_referents_are_the_uniquely_named_shapes_with_centres_in_unit_range():
    scene = Scene(
        id="s",
        seed=0,
        index=0,
        background=(255, 255, 255),
        shapes=(
            _shape("circle", "red", (0, 0, 20, 20)),
            _shape("square", "blue", (100, 50, 140, 90)),
            _shape(
                "square", "blue", (10, 150, 40, 180)
            ),  # a second blue square: neither is "the blue square"
            _shape("triangle", "blue", (CANVAS - 30, CANVAS - 30, CANVAS, CANVAS)),
        ),
        signs=(),
    )
    got = dict(scene_referents(scene))
    assert sorted(got) == ["the blue triangle", "the red circle"]
    assert got["the red circle"] == pytest.approx((2 * 10 / CANVAS - 1, 2 * 10 / CANVAS - 1))
    assert got["the blue triangle"] == pytest.approx((2 * (CANVAS - 15) / CANVAS - 1,) * 2)


def _examples(world: Path) -> list[Example]:
    return [
        Example(
            id="a",
            image=world / "a.png",
            turns=(
                ("Is the red circle to the left of the blue square?", "no"),
                ("What is the red circle?", "x"),
            ),
            aux_text="",
            aux_map=None,
            source="",
            line=0,
            referents=(("the red circle", (0.5, -0.5)), ("the blue square", (-0.25, 0.75))),
        ),
        Example(  # shorter: left-padded in the batch; its answer names a referent, which is no target
            id="b",
            image=world / "b.png",
            turns=(("What is it?", "the green square"),),
            aux_text="",
            aux_map=None,
            source="",
            line=0,
            referents=(("the green square", (0.0, 0.0)),),
        ),
    ]


def test_referent_targets_stand_at_each_phrase_of_the_prompts_and_never_in_an_answer(tmp_path):
    from PIL import Image

    for name in ("a", "b"):
        Image.new("RGB", (CANVAS, CANVAS), (255, 255, 255)).save(tmp_path / f"{name}.png")
    processor = build_model(TrainConfig.from_dict({"model": "tiny"}))[1]
    examples = _examples(tmp_path)
    batch = Collator(processor, 512, False, referents=True)(examples)
    rows, cols, xy = batch["referent_rows"], batch["referent_cols"], batch["referent_xy"]
    # sample a: "the red circle" in both questions, "the blue square" once; sample b: its answer only
    assert rows.tolist() == [0, 0, 0]
    centres = sorted(map(tuple, xy.tolist()))
    assert centres == sorted([(0.5, -0.5), (0.5, -0.5), (-0.25, 0.75)])
    tokenizer = processor.tokenizer
    for col, (x, y) in zip(cols.tolist(), xy.tolist()):
        phrase = "the red circle" if (x, y) == (0.5, -0.5) else "the blue square"
        assert tokenizer.decode(batch["input_ids"][0, : col + 1]).endswith(phrase)  # at its last token
        assert batch["labels"][0, col] == IGNORE_INDEX
    plain = Collator(processor, 512, False)(examples)
    assert "referent_rows" not in plain
    assert all(torch.equal(plain[k], batch[k]) for k in plain)


def _world_config(tmp_path: Path, **fields) -> Path:
    world = tmp_path / "world"
    if not world.is_dir():
        write_world(world, scenes=8, seed=3)
    fields = {"step": "base", "trainable": "projector+llm", "batch_size": 4, **fields}
    path = write_config(tmp_path, world / "train.json", **fields)
    config = yaml.safe_load(path.read_text())
    config["data"][0]["scenes"] = str(world)
    path.write_text(yaml.safe_dump(config))
    return path


def test_training_with_the_referent_target_logs_it_saves_no_head_and_resumes_exactly(tmp_path):
    fields = dict(referent_weight=1.0, referent_layer=1, max_steps=6, save_every=3, keep_checkpoints=3)
    whole = TrainConfig.load(_world_config(tmp_path, **fields, output_dir=str(tmp_path / "whole")))
    train(whole, **QUIET)
    rows = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(r["referent_loss"] > 0 for r in rows)
    final = load_file(str(tmp_path / "whole" / "final" / "model.safetensors"))
    assert not any("referent" in name for name in final)  # the head is for training only
    state = torch.load(tmp_path / "whole" / "checkpoints" / "step-0000003" / "state.pt", weights_only=False)
    assert set(state["referent_head"]) == {"proj.weight", "proj.bias"}

    # resumed from the step-3 checkpoint (model, optimizer and head): the weights of the run that never stopped
    half = TrainConfig.load(_world_config(tmp_path, **fields, output_dir=str(tmp_path / "half")))
    (tmp_path / "half" / "checkpoints").mkdir(parents=True)
    shutil.copytree(
        tmp_path / "whole" / "checkpoints" / "step-0000003",
        tmp_path / "half" / "checkpoints" / "step-0000003",
    )
    summary = train(half, resume=True, **QUIET)
    assert summary["start_step"] == 3
    got = load_file(str(tmp_path / "half" / "final" / "model.safetensors"))
    for name, value in final.items():
        torch.testing.assert_close(got[name], value, atol=1e-6, rtol=0)

    # the target changes the training (the same run without it ends elsewhere), and is not logged there
    off = TrainConfig.load(_world_config(tmp_path, max_steps=6, output_dir=str(tmp_path / "off")))
    train(off, **QUIET)
    other = load_file(str(tmp_path / "off" / "final" / "model.safetensors"))
    assert any(not torch.equal(other[n], final[n]) for n in final if n.startswith("model.language_model"))
    assert "referent_loss" not in (tmp_path / "off" / "metrics.jsonl").read_text()

    # resuming with another referent_weight is refused in one line
    changed = TrainConfig.load(_world_config(tmp_path, **{**fields, "referent_weight": 0.0}))
    changed.output_dir = str(tmp_path / "whole")
    with pytest.raises(ValueError, match="referent target"):
        train(changed, resume=True, **QUIET)


def test_referent_config_errors_and_records_without_a_scene(tmp_path):
    config = TrainConfig.load(_world_config(tmp_path, referent_weight=1.0, referent_layer=99))
    with pytest.raises(ValueError, match="referent_layer 99: the LLM has"):
        train(config, **QUIET)
    config.data[0].scenes = None
    config.referent_layer = 1
    with pytest.raises(ValueError, match="needs the ground truth"):
        train(config, **QUIET)
    with pytest.raises(ValueError, match="referent_weight"):
        TrainConfig.from_dict({"referent_weight": -1})

    # a record whose image has no scene in the ground truth is reported and skipped, the others kept
    world = tmp_path / "world"
    scenes = (world / "scenes.jsonl").read_text().splitlines()
    (world / "scenes.jsonl").write_text("\n".join(scenes[1:]) + "\n")
    missing = json.loads(scenes[0])["id"]
    config.data[0].scenes = str(world)
    report = DataReport()
    examples = load_examples(config.data[0], report=report, log=lambda _msg: None)
    assert len(examples) == len(scenes) - 1 and all(e.image.stem != missing for e in examples)
    assert len(report.problems) == 1 and f"no scene {missing} in scenes" in report.problems[0].reason
    assert all(e.referents == scene_referents(s) for e, s in zip(examples, read_scenes(world)))


def test_the_referent_target_in_a_moai_step_trains_the_moai_modules_and_leaves_the_base_frozen(tmp_path):
    # the `tiny` preset has one mixer, in layer 2: hidden state 3 is the first one it shapes
    fields = dict(step="step2", trainable="moai", referent_layer=3, max_steps=3, save_every=0)
    runs = {}
    for name, weight in (("on", 1.0), ("off", 0.0)):
        out = tmp_path / name
        config = TrainConfig.load(
            _world_config(tmp_path, **fields, referent_weight=weight, output_dir=str(out))
        )
        train(config, **QUIET)
        runs[name] = load_file(str(out / "final" / "model.safetensors"))
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert all(("referent_loss" in r) == (weight > 0) for r in rows)
    start, _ = build_model(TrainConfig.load(_world_config(tmp_path, **fields)))
    before = start.state_dict()
    moai = set(start.moai_parameter_names())
    on, off = runs["on"], runs["off"]
    assert not any("referent" in name for name in on)
    frozen = [name for name in on if name not in moai]
    assert len(frozen) > len(on) // 2 and set(frozen) <= set(before)
    for name in frozen:  # the base frozen, with or without the target
        assert torch.equal(on[name], before[name]) and torch.equal(off[name], before[name]), name
    assert any(not torch.equal(on[n], off[n]) for n in moai)  # the target's loss reached the MoAI modules

    # a hidden state before the first mixer: nothing trainable under its loss, refused in one line
    early = TrainConfig.load(_world_config(tmp_path, **{**fields, "referent_layer": 2}, referent_weight=1.0))
    with pytest.raises(
        ValueError, match=r"referent_layer 2: reads the LLM's state before its first mixer \(layer 2\)"
    ):
        train(early, **QUIET)


def test_two_processes_train_the_referent_target_as_one_process_does(tmp_path):
    """Data parallel (two gloo processes under torchrun, two samples each) equals one process with all four:
    the answer's and the referent's loss normalised by the global counts, the referent head's gradients
    averaged over the processes (it is not in the DDP-wrapped model): the same losses and final weights, up to
    the order of the float sums."""
    fields = dict(referent_weight=1.0, referent_layer=1, max_steps=4, save_every=0, seed=1)
    one = TrainConfig.load(_world_config(tmp_path, **fields, output_dir=str(tmp_path / "one")))
    train(one, **QUIET)
    path = _world_config(tmp_path, **fields, batch_size=2, output_dir=str(tmp_path / "two"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        launch_command(path, 2), env=env, capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert result.returncode == 0, result.stderr[-3000:]

    rows = {
        name: [json.loads(line) for line in (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
        for name in ("one", "two")
    }
    assert len(rows["one"]) == len(rows["two"]) == 4
    for a, b in zip(rows["one"], rows["two"]):
        assert a["label_tokens"] == b["label_tokens"]  # the same four samples a step
        assert a["referent_loss"] > 0
        for key in ("loss", "referent_loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=SUM_ORDER_RTOL), key
    single, parallel = (load_file(str(tmp_path / n / "final" / "model.safetensors")) for n in ("one", "two"))
    for name, value in single.items():
        torch.testing.assert_close(parallel[name], value, rtol=0, atol=SUM_ORDER_ATOL)
