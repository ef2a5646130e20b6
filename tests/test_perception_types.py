"""Perception types: JSON round trip, RLE masks, official box semantics, relations from distributions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from moai.perception import Detection, Perception, PerceptionConfig, Relation, Segment, TextLine
from moai.perception.config import BackendConfig
from moai.perception.types import canonical_role, mask_box, mask_to_rle, rle_to_mask
from moai.verbalize.official import mask_bounding_boxes, psg_predicates


@pytest.mark.parametrize("seed", range(6))
def test_rle_round_trip_random_masks(seed):
    rng = np.random.default_rng(seed)
    shape = tuple(int(v) for v in rng.integers(1, 40, 2))
    mask = rng.random(shape) < rng.random()
    rle = mask_to_rle(mask)
    assert sum(rle["counts"]) == mask.size
    np.testing.assert_array_equal(rle_to_mask(rle), mask)
    json.dumps(rle)  # plain ints


def test_rle_edge_cases_and_coco_convention():
    full = np.ones((3, 4), dtype=bool)
    assert mask_to_rle(full)["counts"] == [0, 12]  # counts start with a (here empty) run of zeros
    assert mask_to_rle(~full)["counts"] == [12]
    column_major = np.zeros((2, 3), dtype=bool)
    column_major[:, 1] = True  # pixels 2 and 3 in Fortran order
    assert mask_to_rle(column_major)["counts"] == [2, 2, 2]
    with pytest.raises(ValueError, match="sum to"):
        rle_to_mask({"size": [2, 2], "counts": [1, 1]})


def test_mask_box_matches_official_bitmasks_semantics():
    seg = np.zeros((20, 30), dtype=np.int32)
    seg[3:9, 5:17] = 1
    seg[10, 29] = 2  # single pixel in the last column
    _, official = mask_bounding_boxes(seg)
    assert mask_box(seg == 1) == (5.0, 3.0, 17.0, 9.0)  # x2 = last column + 1
    assert mask_box(seg == 2) == (29.0, 10.0, 30.0, 11.0)
    np.testing.assert_array_equal(official, [mask_box(seg == 1), mask_box(seg == 2)])
    assert mask_box(seg == 3) == (0.0, 0.0, 0.0, 0.0)


def sample_perception() -> Perception:
    rng = np.random.default_rng(0)
    seg_map = np.zeros((12, 16), dtype=np.int32)
    seg_map[:6] = 1
    seg_map[6:, 4:10] = 2
    segments = (
        Segment.from_mask("wall-other-merged", seg_map == 1, 0.93, label_id=131),
        Segment.from_mask("person", seg_map == 2, 0.871234, label_id=0),
    )
    objects = (Detection("person", (4, 6, 10, 12), 0.87), Detection("cup", (1.5, 2, 3.25, 4), 0.6, 41))
    dist = rng.random(57).astype(np.float32)
    return Perception(
        image_size=(16, 12),
        segments=segments,
        detections=(Detection("cup", (1.5, 2.0, 3.25, 4.0), 0.61, label_id=1013),),
        objects=objects,
        relations=(
            Relation.from_distribution(1, 0, [o.label for o in objects], dist, psg_predicates()),
            Relation(0, "person", "left of", 1, "cup", 0.5),
        ),
        predicates=psg_predicates() + ("left of",),
        text_lines=(TextLine('日本語 and ASCII "quoted"', ((0, 0), (5, 0), (5, 2), (0, 2)), 0.99),),
        source_size=(640, 480),
    )


def test_perception_json_round_trip_is_exact():
    p = sample_perception()
    text = p.to_json()
    assert "日本語" in text  # verbatim, not \\u escapes
    back = Perception.from_json(text)
    assert back == p
    assert back.to_json() == text
    np.testing.assert_array_equal(back.segment_id_map(), p.segment_id_map())
    assert back.relations[0].distribution == p.relations[0].distribution


def test_segment_id_map_and_no_segment_map():
    p = sample_perception()
    seg_map = p.segment_id_map()
    assert seg_map.shape == (12, 16) and set(np.unique(seg_map)) == {1, 2, 0}
    empty = Perception(image_size=(5, 4))
    assert (empty.segment_id_map() == -1).all()  # the HF "no segment" map


def test_relation_from_distribution_ignores_background():
    predicates = psg_predicates()
    dist = np.zeros(57, dtype=np.float32)
    dist[0] = 0.99  # background is the largest column but never chosen
    dist[1 + predicates.index("on")] = 0.7
    dist[1 + predicates.index("over")] = 0.2
    rel = Relation.from_distribution(0, 1, ["cup", "table"], dist, predicates)
    assert (rel.predicate, rel.score, rel.subject_label, rel.object_label) == (
        "on",
        pytest.approx(0.7),
        "cup",
        "table",
    )
    np.testing.assert_array_equal(rel.distribution_row(predicates), dist)
    synthetic = Relation(0, "cup", "beside", 1, "table", 0.9).distribution_row(predicates)
    assert synthetic[0] == 0 and synthetic[1 + predicates.index("beside")] == np.float32(0.9)
    assert np.count_nonzero(synthetic) == 1
    with pytest.raises(ValueError, match="not in the predicate vocabulary"):
        Relation(0, "cup", "left of", 1, "table", 0.9).distribution_row(predicates)
    with pytest.raises(ValueError, match="columns"):
        Relation.from_distribution(0, 1, ["a", "b"], np.zeros(5), predicates)


def test_perception_validates_shapes_and_indices():
    with pytest.raises(ValueError, match="canvas"):
        Perception(image_size=(4, 4), segments=(Segment.from_mask("person", np.ones((3, 4), bool), 1.0),))
    with pytest.raises(ValueError, match="outside"):
        Perception(image_size=(4, 4), relations=(Relation(0, "a", "on", 1, "b", 0.9),))


def test_roles_and_aliases():
    assert canonical_role("seg") == "ps" and canonical_role("OD") == "owod"
    with pytest.raises(ValueError, match="unknown perception role 'depth'"):
        canonical_role("depth")
    config = PerceptionConfig.from_preset("default").only(["seg", "od"])
    assert config.roles == ("ps", "owod")


def test_config_presets_fingerprint_and_dict_round_trip():
    default = PerceptionConfig.from_preset("default")
    official = PerceptionConfig.from_preset("official")
    assert (default.sgg.name, default.ocr.name) == ("geometric", "rapidocr")
    assert (official.sgg.name, official.ocr.name) == ("psgtr", "paddleocr")
    assert default.canvas == official.canvas == (490, 490)
    resolved = default.resolved()
    assert resolved["ps"]["options"]["threshold"] == 0.5
    assert resolved["ps"]["options"]["mask_threshold"] == 0.95
    assert resolved["ps"]["options"]["label_ids_to_fuse"] == []
    assert resolved["owod"]["options"]["threshold"] == 0.1
    assert resolved["ocr"]["options"]["min_score"] == 0.85
    assert PerceptionConfig.from_dict(json.loads(json.dumps(default.to_dict()))) == default
    # the fingerprint follows what is computed, not where
    fp = default.fingerprint()
    assert PerceptionConfig.from_preset("default", device="cuda:3", batch_size=32).fingerprint() == fp
    explicit = PerceptionConfig.from_preset("default", ps=BackendConfig("mask2former", {"threshold": 0.5}))
    assert explicit.fingerprint() == fp  # an explicit default is the same config
    changed = PerceptionConfig.from_preset("default", ps=BackendConfig("mask2former", {"threshold": 0.4}))
    assert changed.fingerprint() != fp
    with pytest.raises(ValueError, match="unknown option.*thresold.*mask2former"):
        PerceptionConfig.from_preset(
            "default", ps=BackendConfig("mask2former", {"thresold": 0.4})
        ).fingerprint()
    with pytest.raises(ValueError, match="unknown perception preset 'fast'"):
        PerceptionConfig.from_preset("fast")
    with pytest.raises(ValueError, match="unknown PerceptionConfig key"):
        PerceptionConfig.from_dict({"ps": "mask2former", "treshold": 1})
