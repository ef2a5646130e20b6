"""Perception -> aux text: the official goldens through ``Perception`` (and the PSGTR converter), and ``v2``."""

from __future__ import annotations

import dataclasses
import json
import random

import numpy as np
import pytest
from conftest import FIXTURES

from moai.perception import (
    Detection,
    Perception,
    Relation,
    Segment,
    TextLine,
    panoptic_map,
    verbalize_perception,
)
from moai.perception.scene_graph import scene_graph_from_psgtr
from moai.perception.verbalize import official_parts
from moai.perception.verbalize_compact import compact_objects, verbalize_compact
from moai.perception.verbalize_v2 import (
    V2Options,
    v2_objects,
    verbalize_objects_v2,
    verbalize_relations_v2,
    verbalize_v2,
)
from moai.perception.vocab import coco_panoptic_classes, owlv2_queries
from moai.verbalize.colormap import corrected_panoptic_map, official_panoptic_map
from moai.verbalize.official import psg_predicates

GOLDEN = [json.loads(line) for line in (FIXTURES / "verbalize_public.jsonl").read_text().splitlines() if line]


# --- neutral golden inputs (tests/fixtures/README.md) -> Perception ------------------------------------------------


def seg_fields(inp: dict) -> dict:
    width, height = inp["canvas"]
    seg_map = np.zeros((height, width), dtype=np.int32)
    for i, segment in enumerate(inp["segments"]):
        for x1, y1, x2, y2 in segment["rects"]:
            seg_map[y1:y2, x1:x2] = i + 1  # later segments overwrite earlier pixels
    segments = tuple(
        Segment.from_mask(s["label"], seg_map == i + 1, 0.9, coco_panoptic_classes().index(s["label"]))
        for i, s in enumerate(inp["segments"])
    )
    return {"image_size": (width, height), "segments": segments}


def od_fields(inp: dict) -> dict:
    queries = owlv2_queries()
    detections = tuple(
        Detection(queries[d["label_index"]], d["box"], d["score"], d["label_index"])
        for d in inp["detections"]
    )
    return {"image_size": tuple(inp["canvas"]), "detections": detections}


def sgg_arrays(inp: dict) -> tuple[list[str], np.ndarray, np.ndarray]:
    predicates = psg_predicates()
    pairs = np.array([(r["subject"], r["object"]) for r in inp["relations"]], dtype=np.int64).reshape(-1, 2)
    dists = np.zeros((len(inp["relations"]), 57), dtype=np.float32)
    for k, rel in enumerate(inp["relations"]):
        dists[k, 0] = rel.get("background_score", 0.0)
        for name, score in rel.get("other_predicates", {}).items():
            dists[k, 1 + predicates.index(name)] = score
        dists[k, 1 + predicates.index(rel["predicate"])] = rel["score"]
    return list(inp["objects"]), pairs, dists


def sgg_fields(inp: dict) -> dict:
    labels, pairs, dists = sgg_arrays(inp)
    objects = tuple(Detection(name, (0, 0, 0, 0), 1.0) for name in labels)
    relations = tuple(
        Relation.from_distribution(int(s), int(o), labels, row, psg_predicates())
        for (s, o), row in zip(pairs, dists)
    )
    return {"objects": objects, "relations": relations, "predicates": psg_predicates()}


def ocr_fields(inp: dict) -> dict:
    lines = inp["ocr_result"] or []
    return {"text_lines": tuple(TextLine(text, quad, conf) for quad, (text, conf) in lines)}


def perception_of(case: dict) -> Perception:
    kind, inp = case["kind"], case["input"]
    fields: dict = {"image_size": (490, 490)}
    if kind == "aux":
        for part, convert in (
            ("seg", seg_fields),
            ("od", od_fields),
            ("sgg", sgg_fields),
            ("ocr", ocr_fields),
        ):
            fields.update(convert(inp[part]))
    else:
        fields.update({"seg": seg_fields, "od": od_fields, "sgg": sgg_fields, "ocr": ocr_fields}[kind](inp))
    return Perception(**fields)


PART = {"seg": 0, "od": 1, "sgg": 2, "ocr": 3}


@pytest.mark.parametrize("case", GOLDEN, ids=[c["case"] for c in GOLDEN])
def test_official_goldens_through_perception(case):
    p = perception_of(case)
    p = Perception.from_json(p.to_json())  # and through the cache format
    if case["kind"] == "aux":
        assert verbalize_perception(p) == case["expected"]
        return
    got = official_parts(p)[PART[case["kind"]]]
    if "expected_error" in case:  # official make_ocr_prompt(None) raises; here: no text, empty sentence
        assert case["case"] == "ocr_none_no_text_found" and got == ""
    else:
        assert got == case["expected"]


SGG_CASES = [c for c in GOLDEN if c["kind"] == "sgg"]


@pytest.mark.parametrize("case", SGG_CASES, ids=[c["case"] for c in SGG_CASES])
def test_psgtr_conversion_feeds_the_official_verbalizer(case):
    labels, pairs, dists = sgg_arrays(case["input"])
    coco = coco_panoptic_classes()
    graph = scene_graph_from_psgtr([coco.index(name) + 1 for name in labels], pairs, dists)  # 1-based labels
    p = Perception(
        image_size=(490, 490), objects=graph.objects, relations=graph.relations, predicates=graph.predicates
    )
    assert official_parts(p)[2] == case["expected"]
    assert [r.distribution for r in graph.relations] == [tuple(row.tolist()) for row in dists]


def test_psgtr_conversion_boxes_from_masks():
    masks = np.zeros((2, 10, 12), dtype=bool)
    masks[0, 2:5, 3:9] = True
    chair = coco_panoptic_classes().index("chair") + 1  # PSGTR labels are 1-based
    graph = scene_graph_from_psgtr([1, chair], [[0, 1]], np.eye(57, dtype=np.float32)[[4]], masks=masks)
    assert [o.label for o in graph.objects] == ["person", "chair"]
    assert graph.objects[0].box == (3.0, 2.0, 9.0, 5.0) and graph.objects[1].box == (0.0, 0.0, 0.0, 0.0)
    assert graph.relations[0].predicate == psg_predicates()[3] == "on"


def test_panoptic_maps_from_perception():
    case = next(c for c in GOLDEN if c["case"] == "seg_overwrite_and_disjoint_rects_repeated_labels")
    p = perception_of(case)
    seg_map = p.segment_id_map()
    np.testing.assert_array_equal(panoptic_map(p), official_panoptic_map(seg_map))
    np.testing.assert_array_equal(panoptic_map(p, "corrected"), corrected_panoptic_map(seg_map))
    assert panoptic_map(p).max() <= 1.0 and panoptic_map(p, "corrected").dtype == np.uint8
    empty = Perception(image_size=(490, 490))
    assert (panoptic_map(empty) == 0).all()  # the -1 "no segment" map is black
    with pytest.raises(ValueError, match="unknown panoptic map style"):
        panoptic_map(p, "v3")
    with pytest.raises(ValueError, match="unknown verbalization style"):
        verbalize_perception(p, "v3")


def test_geometric_relations_verbalize_officially():
    """Non-PSG predicates reach the official sentence through the backend's extended vocabulary."""
    objects = (Detection("cup", (10, 10, 20, 20), 0.9), Detection("person", (100, 10, 140, 90), 0.95))
    p = Perception(
        image_size=(490, 490),
        objects=objects,
        relations=(
            Relation(0, "cup", "left of", 1, "person", 0.9),
            Relation(1, "person", "right of", 0, "cup", 0.85),
        ),
        predicates=psg_predicates() + ("left of", "right of", "above", "below"),
    )
    assert official_parts(p)[2] in (
        "The image includes relationships between objects: cup is left of person, and person is right of cup.",
        "The image includes relationships between objects: person is right of cup, and cup is left of person.",
    )


# --- v2 ------------------------------------------------------------------------------------------------------------


def v2_perception(order: list[int] | None = None) -> Perception:
    seg_map = np.zeros((100, 200), dtype=np.int32)
    seg_map[:30] = 1
    seg_map[50:90, 10:40] = 2
    seg_map[50:90, 120:150] = 3
    segments = [
        Segment.from_mask("wall-other-merged", seg_map == 1, 0.9),
        Segment.from_mask("person", seg_map == 2, 0.95),
        Segment.from_mask("person", seg_map == 3, 0.92),
    ]
    detections = [
        Detection("man", (11, 50, 40, 89), 0.8),  # duplicates person #1 (IoU > 0.5)
        Detection("dog", (60, 70, 90, 90), 0.7),
        Detection("cat", (160, 70, 180, 90), 0.3),  # below the OD threshold
        Detection("dog", (40, 10, 50, 20), 0.6),
    ]
    if order is not None:
        detections = [detections[i] for i in order]
    objects = (Detection("person", (10, 50, 40, 90), 0.95), Detection("person", (120, 50, 150, 90), 0.92))
    relations = (
        Relation(0, "person", "left of", 1, "person", 0.81),
        Relation(1, "person", "right of", 0, "person", 0.95),
        Relation(0, "person", "beside", 1, "person", 0.5),
    )
    return Perception(
        image_size=(200, 100),
        segments=tuple(segments),
        detections=tuple(detections),
        objects=objects,
        relations=relations,
        text_lines=(
            TextLine("EXIT", ((0, 0), (9, 0), (9, 5), (0, 5)), 0.97),
            TextLine("x", ((0, 0),) * 4, 0.2),
        ),
    )


def test_v2_dedupes_counts_and_orders():
    p = v2_perception()
    labels = [label for label, _ in v2_objects(p)]
    assert labels == ["wall", "person", "person", "dog", "dog"]  # "man" deduped, "cat" below threshold
    assert verbalize_objects_v2(p) == (
        "The image includes objects and their bounding box coordinates: "
        "dog (2): [0.20, 0.10, 0.25, 0.20], [0.30, 0.70, 0.45, 0.90]; "
        "person (2): [0.05, 0.50, 0.20, 0.90], [0.60, 0.50, 0.75, 0.90]; "
        "wall (1): [0.00, 0.00, 1.00, 0.30]."
    )
    assert verbalize_relations_v2(p) == (
        "The image includes relationships between objects: "
        "person (#2) is right of person (#1), and person (#1) is left of person (#2)."
    )
    aux = verbalize_v2(p)
    assert aux.endswith("The image includes text descriptions: EXIT.") and "  " not in aux
    assert verbalize_v2(Perception(image_size=(10, 10))) == ""  # no padding spaces, unlike the official
    stricter = V2Options(dedupe_iou=0.99, sgg_top_k=1)
    assert [label for label, _ in v2_objects(p, stricter)].count("man") == 1
    assert verbalize_relations_v2(p, stricter).count(" is ") == 1


def test_compact_names_each_object_once_in_reading_order_without_coordinates():
    p = v2_perception()
    # the segment person #1 takes the name of the detection that matches it ("man"); the unmatched confident
    # detections (two dogs) join; "cat" is below the threshold; order: top, then left
    assert [name for name, _ in compact_objects(p)] == ["wall", "dog", "man", "person", "dog"]
    assert verbalize_compact(p) == (
        "objects: wall, dog, man, person, dog. "
        "relations: person (#2) is right of person (#1), person (#1) is left of person (#2). "
        "text: EXIT."
    )
    assert verbalize_perception(p, "compact") == verbalize_compact(p)
    assert verbalize_compact(Perception(image_size=(10, 10))) == ""
    only_text = Perception(image_size=(10, 10), text_lines=p.text_lines)
    assert verbalize_compact(only_text) == "text: EXIT."
    assert len(verbalize_compact(p)) < len(verbalize_v2(p))
    rng = random.Random(0)
    for _ in range(5):  # the order of the detections does not matter
        order = list(range(4))
        rng.shuffle(order)
        assert verbalize_compact(v2_perception(order)) == verbalize_compact(p)


def test_compact_text_first_moves_the_ocr_words_to_the_start_and_keeps_everything_else():
    p = v2_perception()
    first = verbalize_perception(p, "compact-text-first")
    assert first == (
        "text: EXIT. objects: wall, dog, man, person, dog. "
        "relations: person (#2) is right of person (#1), person (#1) is left of person (#2)."
    )
    assert sorted(first.split()) == sorted(verbalize_compact(p).split())
    only_text = Perception(image_size=(10, 10), text_lines=p.text_lines)
    assert verbalize_perception(only_text, "compact-text-first") == verbalize_compact(only_text)
    no_text = dataclasses.replace(p, text_lines=())
    assert verbalize_perception(no_text, "compact-text-first") == verbalize_compact(no_text)


def test_compact_all_keeps_every_relation_above_the_threshold_where_compact_keeps_ten():
    boxes = [
        (10 + 30 * i, 10 + 25 * i, 30 + 30 * i, 30 + 25 * i) for i in range(6)
    ]  # a diagonal: x and y differ
    objects = tuple(Detection("red circle", box, 0.9) for box in boxes)
    relations = tuple(
        Relation(i, "red circle", predicate, j, "red circle", 0.9 + 0.001 * (6 * i + j))
        for i in range(6)
        for j in range(6)
        if i != j
        for predicate in (("left of", "above") if i < j else ("right of", "below"))
    )
    weak = Relation(0, "red circle", "beside", 1, "red circle", 0.5)  # under the 0.8 threshold
    p = Perception(image_size=(224, 224), objects=objects, relations=relations + (weak,))
    every = verbalize_perception(p, "compact-all")
    assert every.count(" is ") == len(relations) == 60 and "beside" not in every
    ten = verbalize_perception(p, "compact")
    assert ten.count(" is ") == 10
    assert every.startswith(ten.removesuffix(".") + ", ")  # the 10 best first, in the same order


def test_v2_is_deterministic_under_input_order():
    expected = verbalize_v2(v2_perception())
    rng = random.Random(0)
    for _ in range(5):
        order = list(range(4))
        rng.shuffle(order)
        assert verbalize_v2(v2_perception(order)) == expected
