"""Perception backends: tiny random Mask2Former / OWLv2 (offline), geometric SGG, real rapidocr, missing extras."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from moai.perception import MissingExtraError, Perceiver, PerceptionConfig, build_backend
from moai.perception.detection import Owlv2Detector
from moai.perception.panoptic import Mask2FormerSegmenter, segments_from_panoptic
from moai.perception.scene_graph import geometric_predicates, geometric_relation
from moai.perception.tiny import save_tiny_mask2former, save_tiny_owlv2
from moai.perception.types import Detection, Segment, mask_box
from moai.perception.verbalize import official_parts
from moai.perception.vocab import coco_panoptic_classes, owlv2_queries
from moai.verbalize.official import strip_label_suffixes

CANVAS = 490


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {"m2f": save_tiny_mask2former(root / "m2f"), "owl": save_tiny_owlv2(root / "owl")}


def canvases(n: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (CANVAS, CANVAS, 3), dtype=np.uint8) for _ in range(n)]


# --- Mask2Former ---------------------------------------------------------------------------------------------------


def crafted_outputs(num_labels: int = 133):
    """Five queries: person and wall (kept), no-object, low class score, weak mask (dropped at mask threshold 0.95)."""
    from transformers.models.mask2former.modeling_mask2former import (
        Mask2FormerForUniversalSegmentationOutput,
    )

    coco = coco_panoptic_classes()
    classes = torch.full((1, 5, num_labels + 1), -10.0)
    classes[0, 0, coco.index("person")] = 10
    classes[0, 1, coco.index("wall-other-merged")] = 10
    classes[0, 2, num_labels] = 10  # the no-object column
    classes[0, 3] = 0  # flat: score 1/134 < 0.5
    classes[0, 4, coco.index("cat")] = 10
    masks = torch.full((1, 5, 98, 98), -12.0)  # 490 / 5
    masks[0, 1] = 12  # wall: everything but the person and the cat
    masks[0, 0, 20:60, 10:30] = 12  # person: rows 100..300, cols 50..150 at 490
    masks[0, 1, 20:60, 10:30] = -12
    masks[0, 4, 70:90, 40:60] = 2.0  # cat: probability 0.88 < 0.95, rows 350..450, cols 200..300
    masks[0, 1, 70:90, 40:60] = -12
    masks[0, 2, 70:90, 70:90] = 12  # removed before the masks compete (no-object, low score)
    masks[0, 3, 0:20, 10:30] = 12
    return Mask2FormerForUniversalSegmentationOutput(class_queries_logits=classes, masks_queries_logits=masks)


def test_mask2former_official_post_processing_on_crafted_outputs(tiny_dirs):
    backend = build_backend("ps", "mask2former", {"checkpoint": str(tiny_dirs["m2f"])})
    assert (backend.threshold, backend.mask_threshold, backend.label_ids_to_fuse) == (0.5, 0.95, set())
    backend.model.forward = lambda **kwargs: crafted_outputs()
    [segments] = backend(canvases(1))
    assert [s.label for s in segments] == ["person", "wall-other-merged"]  # cat: mask below 0.95
    assert [s.label_id for s in segments] == [0, coco_panoptic_classes().index("wall-other-merged")]
    person, wall = segments
    assert person.mask.shape == (CANVAS, CANVAS) and person.score == pytest.approx(1.0, abs=1e-6)
    assert person.box == mask_box(person.mask)  # x2 = last column + 1
    np.testing.assert_allclose(person.box, (50, 100, 150, 300), atol=3)
    assert wall.box == (0, 0, CANVAS, CANVAS)  # the last column is 489, so x2 = 490
    assert not (person.mask & wall.mask).any()
    assert not (person.mask | wall.mask)[360:440, 210:290].any()  # the dropped cat's pixels stay unlabelled
    backend.mask_threshold = 0.5  # the weak mask survives a lower threshold: the 0.95 above did the work
    segments = backend(canvases(1))[0]
    assert [s.label for s in segments] == ["person", "wall-other-merged", "cat"]
    np.testing.assert_allclose(segments[2].box, (200, 350, 300, 450), atol=3)


def test_mask2former_no_segment_output(tiny_dirs):
    backend = build_backend("ps", "mask2former", {"checkpoint": str(tiny_dirs["m2f"])})
    outputs = crafted_outputs()
    outputs.class_queries_logits[..., :] = -10
    outputs.class_queries_logits[..., -1] = 10  # every query is "no object"
    backend.model.forward = lambda **kwargs: outputs
    result = backend.processor.post_process_panoptic_segmentation(
        outputs, threshold=0.5, mask_threshold=0.95, label_ids_to_fuse=set(), target_sizes=[(CANVAS, CANVAS)]
    )[0]
    assert result["segmentation"].dtype == torch.float32 and (result["segmentation"] == -1).all()
    assert segments_from_panoptic(result, backend.id2label) == []
    assert backend(canvases(1)) == [[]]


def test_mask2former_tiny_random_model_end_to_end(tiny_dirs):
    backend = Mask2FormerSegmenter(
        checkpoint=str(tiny_dirs["m2f"]), threshold=0.0, mask_threshold=0.0, overlap_mask_area_threshold=0.0
    )
    results = backend(canvases(2))
    assert len(results) == 2 and all(results)
    for segments in results:
        union = np.zeros((CANVAS, CANVAS), dtype=int)
        for seg in segments:
            assert isinstance(seg, Segment) and seg.mask.shape == (CANVAS, CANVAS)
            assert seg.box == mask_box(seg.mask) and seg.mask.any()
            assert seg.label == coco_panoptic_classes()[seg.label_id]
            union += seg.mask
        assert union.max() == 1  # panoptic: no overlap


# --- OWLv2 ---------------------------------------------------------------------------------------------------------

QUERIES = ["cat", "dog", "screen", "screen", "traffic light", "Mexican hairless dog (xoloitzcuintli)"]


def test_owlv2_query_cache_gives_the_plain_forward_detections(tiny_dirs):
    detector = Owlv2Detector(checkpoint=str(tiny_dirs["owl"]), queries=QUERIES, threshold=0.0)
    images = canvases(2, seed=3)
    cached = detector(images, cache_queries=True)
    plain = detector(images, cache_queries=False)
    assert sum(len(d) for d in cached) == 2 * 16  # 64-px images, patch 16: 16 boxes each, all above 0
    for got, ref in zip(cached, plain):
        assert [(d.label, d.label_id) for d in got] == [(d.label, d.label_id) for d in ref]
        np.testing.assert_allclose([d.box for d in got], [d.box for d in ref], rtol=0, atol=1e-4)
        np.testing.assert_allclose([d.score for d in got], [d.score for d in ref], rtol=0, atol=1e-6)
    raw_cached = detector.raw_outputs(images, cache_queries=True)
    raw_plain = detector.raw_outputs(images, cache_queries=False)
    torch.testing.assert_close(raw_cached.logits, raw_plain.logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(raw_cached.pred_boxes, raw_plain.pred_boxes, rtol=0, atol=0)
    # repeated names are told apart by their index
    assert {d.label_id for d in cached[0] if d.label == "screen"} <= {2, 3}


def test_owlv2_queries_encoded_once_and_official_list(tiny_dirs):
    detector = Owlv2Detector(checkpoint=str(tiny_dirs["owl"]), threshold=0.0, query_batch_size=700)
    assert detector.queries == owlv2_queries() and len(detector.queries) == 1847
    calls = []
    original = detector.model.owlv2.get_text_features

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    detector.model.owlv2.get_text_features = counting
    first = detector(canvases(1))
    second = detector(canvases(1))
    assert calls == [700, 700, 447]  # 1847 queries encoded once, in chunks, for both calls
    assert [d.label for d in first[0]] == [d.label for d in second[0]]
    assert all(d.label == owlv2_queries()[d.label_id] for d in first[0])
    embeds, mask = detector.query_embeddings()
    assert embeds.shape == (1847, 32) and bool(mask.all())
    torch.testing.assert_close(embeds.norm(dim=-1), torch.ones(1847))


def test_owlv2_default_threshold_and_target_size(tiny_dirs):
    detector = Owlv2Detector(checkpoint=str(tiny_dirs["owl"]), queries=QUERIES)
    assert detector.threshold == 0.1
    wide = np.zeros((200, 300, 3), dtype=np.uint8)  # boxes are scaled back to the canvas (padded square)
    detector.threshold = 0.0
    [dets] = detector([wide])
    boxes = np.array([d.box for d in dets])
    assert boxes[:, 2].max() <= 300 * 1.5 and boxes[:, 3].max() <= 300 * 1.5


# --- geometric scene graph -------------------------------------------------------------------------------------------

RULES = {"contain_fraction": 0.9, "size_ratio": 2.0, "min_overlap": 0.3, "near_fraction": 0.5}


@pytest.mark.parametrize(
    "subject, obj, predicate",
    [
        ((200, 100, 220, 120), (0, 0, 490, 250), "in"),  # bird in sky
        ((100, 150, 140, 210), (50, 200, 300, 300), "on"),  # cup resting on table
        ((100, 10, 140, 50), (50, 200, 300, 300), "over"),  # lamp over table
        ((10, 100, 60, 200), (70, 110, 120, 210), "beside"),
        ((10, 100, 60, 200), (300, 110, 350, 210), "left of"),  # far apart: not beside
        ((300, 110, 350, 210), (10, 100, 60, 200), "right of"),
        ((50, 200, 300, 300), (100, 150, 140, 210), "below"),  # the table, seen from the cup
        ((0, 0, 490, 250), (200, 100, 220, 120), "enclosing"),  # the sky, seen from the bird
        ((0, 0, 50, 50), (60, 100, 110, 150), "above"),  # further apart vertically than horizontally
    ],
)
def test_geometric_rules(subject, obj, predicate):
    got, strength = geometric_relation(subject, obj, **RULES)
    assert got == predicate and 0 < strength <= 1


def test_geometric_scene_graph_objects_scores_and_top_k():
    seg_map = np.zeros((CANVAS, CANVAS), dtype=np.int32)
    seg_map[:200] = 1
    seg_map[300:450, 100:200] = 2
    segments = [
        Segment.from_mask("sky-other-merged", seg_map == 1, 0.99),
        Segment.from_mask("person", seg_map == 2, 0.9),
    ]
    detections = [
        Detection("man", (101, 300, 200, 449), 0.95),  # duplicate of the person segment
        Detection("bird", (50, 50, 70, 70), 0.85),
        Detection("kite", (300, 20, 320, 40), 0.3),  # below min_object_score
    ]
    backend = build_backend("sgg", "geometric", {})
    [graph] = backend(canvases(1), [segments], [detections])
    assert [o.label for o in graph.objects] == ["sky-other-merged", "person", "bird"]
    assert len(graph.relations) == 3 * 2  # every ordered pair once
    assert graph.predicates == geometric_predicates() and len(graph.predicates) == 60
    scores = [r.score for r in graph.relations]
    assert scores == sorted(scores, reverse=True)
    by_pair = {(r.subject, r.object): r for r in graph.relations}
    assert by_pair[(2, 0)].predicate == "in" and by_pair[(0, 2)].predicate == "enclosing"
    assert by_pair[(0, 1)].predicate == "over"
    assert by_pair[(2, 0)].score == pytest.approx(0.85)  # min(0.85, 0.99) x full containment
    small = build_backend("sgg", "geometric", {"top_k": 2, "use_detections": False})
    [graph2] = small(canvases(1), [segments], [detections])
    assert len(graph2.relations) == 2 and len(graph2.objects) == 2
    from moai.perception import Perception

    p = Perception(
        image_size=(CANVAS, CANVAS),
        objects=graph.objects,
        relations=graph.relations,
        predicates=graph.predicates,
    )
    sentence = official_parts(p)[2]  # official: top min(10, #objects) = 3 relations with score >= 0.8
    prefix = "The image includes relationships between objects: "
    assert sentence.startswith(prefix) and sentence.endswith(".")
    items = sentence[len(prefix) : -1].split(", and ")
    third = sorted((r.score for r in graph.relations), reverse=True)[2]
    top = {
        f"{strip_label_suffixes(r.subject_label)} is {r.predicate} {strip_label_suffixes(r.object_label)}"
        for r in graph.relations
        if r.score >= third
    }
    assert len(items) == 3 and set(items) <= top


# --- OCR -------------------------------------------------------------------------------------------------------------

WORDS = """coffee station Market garden window yellow bridge Museum river ticket
kitchen Library orange mountain Street school planet candle Harbor forest
bottle summer Winter castle pocket silver dragon Hotel island rocket
pencil jacket Bakery anchor circle thunder valley Airport meadow button
violin Pharmacy tunnel lemon parade Bicycle harvest Exit 2024 parking""".split()


def render_words(words: list[str], font_size: int = 26) -> np.ndarray:
    img = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=font_size)
    for i, word in enumerate(words):
        draw.text((30 + (i % 2) * 230, 20 + (i // 2) * 95), word, fill="black", font=font)
    return np.asarray(img)


def test_rapidocr_reads_rendered_words():
    assert len(WORDS) == 50
    reader = build_backend("ocr", "rapidocr", {})
    assert reader.min_score == 0.85
    images = [render_words(WORDS[k : k + 10]) for k in range(0, 50, 10)]
    results = reader(images)
    correct = sum(
        word in {line.text for line in lines}
        for k, lines in enumerate(results)
        for word in WORDS[k * 10 : k * 10 + 10]
    )
    assert correct / len(WORDS) >= 0.95, correct
    for k, lines in enumerate(results):
        assert all(line.score >= 0.85 for line in lines)
        chunk = WORDS[k * 10 : k * 10 + 10]
        read = [line.text for line in lines if line.text in chunk]
        assert read == [word for word in chunk if word in read]  # reading order: rows, then left to right
    assert reader([np.full((CANVAS, CANVAS, 3), 255, np.uint8)]) == [[]]  # no text: no line


# --- extras and presets ----------------------------------------------------------------------------------------------


def test_missing_extras_fail_with_one_clear_line():
    with pytest.raises(MissingExtraError) as info:
        build_backend("sgg", "psgtr", {})
    message = str(info.value)
    assert "\n" not in message and "moai-vlm[psgtr]" in message and "--preset default" in message
    with pytest.raises(MissingExtraError, match=r"moai-vlm\[paddleocr\].*--preset default"):
        build_backend("ocr", "paddleocr", {})
    # the official preset stops before loading any model (no download attempted, no checkpoint needed)
    with pytest.raises(MissingExtraError, match="psgtr"):
        Perceiver(PerceptionConfig.from_preset("official", device="cpu"))
    with pytest.raises(ValueError, match="unknown sgg backend 'psgtrr'"):
        build_backend("sgg", "psgtrr", {})


def test_missing_checkpoint_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load checkpoint .*nowhere"):
        build_backend("ps", "mask2former", {"checkpoint": str(tmp_path / "nowhere")})
