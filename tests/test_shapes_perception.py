"""ShapesWorld perception backends (moai/perception/shapes.py; docs/shapesworld.md, Perception).

Each backend on rendered scenes finds what the ground truth holds (PS classes and boxes, OWOD names and
boxes, SGG relations by the world's position rule, OCR words on signs), ``moai perceive --preset
shapesworld`` fills the perception cache, and the backends' source never touches the ground truth.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from moai.cli import main
from moai.perception import Perceiver, PerceptionCache, PerceptionConfig, build_backend, verbalize_perception
from moai.perception.shapes import find_items
from moai.worlds.shapes import POSITION_MIN_OFFSET, Scene, box_centre, generate_scene, render, write_world

SEED = 5
SCENES = [generate_scene(SEED, i) for i in range(8)]
SOURCE = Path(__file__).resolve().parent.parent / "moai" / "perception" / "shapes.py"


def canvas(scene: Scene) -> np.ndarray:
    return np.asarray(render(scene))


def truth_relations(scene: Scene) -> set[tuple[tuple, str, tuple]]:
    """(subject box, predicate, object box) of every relation the world's position rule allows."""
    out = set()
    for a in scene.shapes:
        for b in scene.shapes:
            if a is b:
                continue
            (ax, ay), (bx, by) = box_centre(a.box), box_centre(b.box)
            if abs(ax - bx) >= POSITION_MIN_OFFSET:
                out.add((a.box, "left of" if ax < bx else "right of", b.box))
            if abs(ay - by) >= POSITION_MIN_OFFSET:
                out.add((a.box, "above" if ay < by else "below", b.box))
    return out


def as_int_box(box) -> tuple[int, int, int, int]:
    return tuple(round(v) for v in box)


def test_the_scenes_cover_every_kind_and_signs():
    kinds = {s.kind for scene in SCENES for s in scene.shapes}
    assert kinds == {"circle", "square", "triangle"}
    assert any(scene.signs for scene in SCENES) and any(len(scene.shapes) >= 4 for scene in SCENES)


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.id)
def test_ps_one_segment_per_shape_and_sign_with_class_and_box(scene):
    [segments] = build_backend("ps", "shapes", {})([canvas(scene)])
    found = sorted((s.label, as_int_box(s.box)) for s in segments)
    truth = sorted([(s.kind, s.box) for s in scene.shapes] + [("sign", s.box) for s in scene.signs])
    assert found == truth
    for seg in segments:  # masks: the drawn shape (inside its box, touching it), the sign's whole box
        x0, y0, x1, y1 = as_int_box(seg.box)
        assert seg.mask.shape == (224, 224) and seg.mask[y0:y1, x0:x1].sum() == seg.mask.sum()
        fill = seg.mask.sum() / ((x1 - x0) * (y1 - y0))
        assert {"square": fill == 1, "sign": fill == 1, "circle": 0.7 < fill < 0.9, "triangle": fill < 0.65}[
            seg.label
        ]


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.id)
def test_owod_names_by_colour_and_kind_boxes_within_a_pixel(scene):
    [detections] = build_backend("owod", "shapes", {})([canvas(scene)])
    assert len(detections) == len(scene.shapes)  # shapes only, no sign
    for shape in scene.shapes:
        [det] = [d for d in detections if max(abs(a - b) for a, b in zip(d.box, shape.box)) <= 1]
        assert det.label == f"{shape.colour} {shape.kind}" and det.score == 1.0


@pytest.mark.parametrize("scene", SCENES, ids=lambda s: s.id)
def test_sgg_relations_follow_the_position_rule(scene):
    image = canvas(scene)
    [detections] = build_backend("owod", "shapes", {})([image])
    [graph] = build_backend("sgg", "shapes", {})([image], [[]], [detections])
    found = {
        (as_int_box(graph.objects[r.subject].box), r.predicate, as_int_box(graph.objects[r.object].box))
        for r in graph.relations
    }
    assert found == truth_relations(scene) and len(found) == len(graph.relations)
    assert all(0.9 <= r.score <= 1.0 for r in graph.relations)  # above the verbalizer's 0.8
    for r in graph.relations:
        assert r.subject_label == graph.objects[r.subject].label


@pytest.mark.parametrize("crops", [True, False])
def test_ocr_reads_the_sign_and_not_a_square(crops):
    """Real rapidocr, two images: a one-sign scene, and a scene whose filled square rapidocr reads as '■';
    the recogniser on each sign's box (default) and the whole canvas filtered to the signs."""
    reader = build_backend("ocr", "shapes", {"crops": crops})
    sign_scene = next(s for s in SCENES if len(s.signs) == 1)
    square_scene = generate_scene(9001, 25)  # no sign; plain rapidocr reads its square as '■'
    assert not square_scene.signs and any(s.kind == "square" for s in square_scene.shapes)
    signed, squared = reader([canvas(sign_scene), canvas(square_scene)])
    assert [line.text for line in signed] == [sign_scene.signs[0].word]
    x0, y0, x1, y1 = sign_scene.signs[0].box
    assert (
        x0 - 2 <= box_centre(signed[0].box)[0] <= x1 + 2 and y0 - 2 <= box_centre(signed[0].box)[1] <= y1 + 2
    )
    assert squared == []


def test_ocr_reads_words_next_to_the_sign_frame():
    """Words starting or ending in I, which the recogniser read as a bracket when the crop held the sign's
    frame (``[QNE`` for ``IQNE``, seed 9001); ``crop_inset`` cuts the frame off."""
    reader = build_backend("ocr", "shapes", {})
    scenes = [generate_scene(9001, i) for i in (100, 105, 148, 188)]
    for scene, lines in zip(scenes, reader([canvas(s) for s in scenes])):
        assert sorted(line.text for line in lines) == sorted(sign.word for sign in scene.signs)


def test_ocr_reads_every_sign_of_a_scene_with_several():
    reader = build_backend("ocr", "shapes", {})
    scene = next(s for s in (generate_scene(4242, i) for i in range(200)) if len(s.signs) >= 2)
    [lines] = reader([canvas(scene)])
    assert sorted(line.text for line in lines) == sorted(sign.word for sign in scene.signs)


def test_find_items_on_blank_and_noise_images():
    assert find_items(np.full((224, 224, 3), 240, dtype=np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    for item in find_items(noise):  # a photo that is not a scene still gives well-formed items
        assert item.kind in ("circle", "square", "triangle", "sign") and item.mask.shape == (64, 80)


def test_preset_runs_on_the_world_canvas_and_verbalizes():
    config = PerceptionConfig.from_preset("shapesworld")
    assert config.canvas == (224, 224)
    assert [getattr(config, r).name for r in ("ps", "owod", "sgg", "ocr")] == ["shapes"] * 4
    scene = max(SCENES, key=lambda s: len(s.shapes))
    [p] = Perceiver(config.only(["ps", "owod", "sgg"]))([render(scene)])
    text = verbalize_perception(p)
    for shape in scene.shapes:
        assert f"{shape.colour} {shape.kind}" in text
    assert "is left of" in text or "is right of" in text or "is above" in text or "is below" in text


def test_moai_perceive_fills_the_cache(tmp_path, capsys):
    write_world(tmp_path / "world", 3, SEED)
    out = tmp_path / "cache"
    argv = ["perceive", "--data", str(tmp_path / "world" / "train.json"), "--out", str(out)]
    assert main([*argv, "--preset", "shapesworld", "--no-progress"]) == 0
    cache = PerceptionCache(out, config=PerceptionConfig.from_preset("shapesworld"))
    for index in range(3):
        scene = generate_scene(SEED, index)
        p = cache.get(tmp_path / "world" / "images" / f"{scene.id}.png")
        assert p is not None and p.image_size == (224, 224)
        assert sorted(d.label for d in p.detections) == sorted(f"{s.colour} {s.kind}" for s in scene.shapes)
        assert sorted(t.text for t in p.text_lines) == sorted(s.word for s in scene.signs)


# --- the backends read pixels only ----------------------------------------------------------------------------

#: What the backends may take from moai.worlds: the world's vocabulary and rules, nothing that makes or reads
#: a scene.
ALLOWED_WORLD_NAMES = {"COLOURS", "KINDS", "POSITION_MIN_OFFSET"}
FORBIDDEN = r"scenes\.jsonl|SCENES_FILE|\bScene\b|from_dict|\bgenerate|\brender\b|\bopen\(|read_(text|json)"


def test_backends_never_import_or_open_the_ground_truth():
    source = SOURCE.read_text(encoding="utf-8")
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("#"))
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and "worlds" in (node.module or ""):
            assert {alias.name for alias in node.names} <= ALLOWED_WORLD_NAMES, ast.dump(node)
        if isinstance(node, ast.Import):
            assert not any("worlds" in alias.name for alias in node.names)
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            assert name not in ("open", "Scene", "generate", "generate_scene", "render", "read_text", "loads")
    body = code.split('"""', 2)[2]  # the code after the module docstring
    assert re.search(FORBIDDEN, body) is None, re.search(FORBIDDEN, body)
