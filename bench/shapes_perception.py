"""Precision and recall of the ShapesWorld perception backends against the ground truth, and their speed.

Run with ``PYTHONPATH=. .venv/bin/python bench/shapes_perception.py --scenes 500 --seed 9001``
(docs/shapesworld.md, Perception, shows a real run). Scenes are generated and rendered in memory with
``moai.worlds.shapes`` (fresh seed, nothing read from disk); the backends of the ``shapesworld`` preset see
only the rendered pixels, and this script alone compares their output with the scene's ground truth:

* PS: a segment is correct when its class (circle / square / triangle / sign) equals an unmatched
  ground-truth item's and their boxes have IoU >= 0.5 (greedy, best IoU first);
* OWOD: the same with the name ``"{colour} {kind}"`` over the shapes; also the largest box-coordinate error
  (px) of the correct detections;
* SGG: every relation the world's position rule allows (ordered pairs of shapes whose box centres differ
  by >= 8 px in x: left of / right of; in y: above / below) is a ground-truth relation; a predicted one is
  correct when its subject and object detections match those shapes (IoU >= 0.5) and the predicate agrees;
* OCR: word accuracy = signs whose word is one of the recognised lines exactly; precision = recognised
  lines that are a word of the scene; for the preset's OCR ``shapes`` (the recogniser on each sign found)
  and for plain ``rapidocr`` (detector and recogniser on the whole canvas, unfiltered).

Times are per image and per backend (``time.perf_counter`` around each call, one image per call), plus the
whole ``Perceiver`` (all four roles, the image given as a PIL image) on the first 50 scenes.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moai.perception import Perceiver, PerceptionConfig
from moai.perception.ocr import RapidOcrReader
from moai.perception.types import box_iou
from moai.worlds.shapes import POSITION_MIN_OFFSET, Scene, box_centre, generate_scene, render

IOU = 0.5
#: Scenes on which the whole ``Perceiver`` is timed too (it repeats the OCR, the slow part).
TIMED_SCENES = 50


def match(pred: Sequence[tuple[str, tuple]], truth: Sequence[tuple[str, tuple]]) -> dict[int, int]:
    """Greedy one-to-one matching, best IoU first, same label and IoU >= 0.5: {pred index: truth index}."""
    pairs = sorted(
        (
            (box_iou(pb, tb), i, j)
            for i, (pl, pb) in enumerate(pred)
            for j, (tl, tb) in enumerate(truth)
            if pl == tl
        ),
        reverse=True,
    )
    out: dict[int, int] = {}
    used: set[int] = set()
    for iou, i, j in pairs:
        if iou >= IOU and i not in out and j not in used:
            out[i] = j
            used.add(j)
    return out


def truth_relations(scene: Scene) -> set[tuple[int, str, int]]:
    """The world's position rule over every ordered pair of shapes."""
    out = set()
    for i, a in enumerate(scene.shapes):
        for j, b in enumerate(scene.shapes):
            if i == j:
                continue
            (ax, ay), (bx, by) = box_centre(a.box), box_centre(b.box)
            if abs(ax - bx) >= POSITION_MIN_OFFSET:
                out.add((i, "left of" if ax < bx else "right of", j))
            if abs(ay - by) >= POSITION_MIN_OFFSET:
                out.add((i, "above" if ay < by else "below", j))
    return out


class Counter:
    def __init__(self) -> None:
        self.tp = self.pred = self.truth = self.tp_lines = 0

    def add(self, tp: int, pred: int, truth: int) -> None:
        self.tp, self.pred, self.truth = self.tp + tp, self.pred + pred, self.truth + truth

    def row(self) -> dict[str, float | int]:
        return {
            "correct": self.tp,
            "predicted": self.pred,
            "truth": self.truth,
            "precision": self.tp / self.pred if self.pred else 1.0,
            "recall": self.tp / self.truth if self.truth else 1.0,
        }


def evaluate(scenes: int, seed: int) -> dict:
    config = PerceptionConfig.from_preset("shapesworld", device="cpu")
    perceiver = Perceiver(config)
    backends = perceiver.backends
    counts = {role: Counter() for role in ("ps", "owod", "sgg", "rapidocr", "ocr")}
    times: dict[str, list[float]] = {role: [] for role in (*counts, "rapidocr", "all")}
    timed = min(scenes, TIMED_SCENES)
    worst_box_error = 0.0
    for index in range(scenes):
        scene = generate_scene(seed, index)
        image = render(scene)
        canvas = np.asarray(image)

        start = time.perf_counter()
        [segments] = backends["ps"]([canvas])
        times["ps"].append(time.perf_counter() - start)
        start = time.perf_counter()
        [detections] = backends["owod"]([canvas])
        times["owod"].append(time.perf_counter() - start)
        start = time.perf_counter()
        [graph] = backends["sgg"]([canvas], [segments], [detections])
        times["sgg"].append(time.perf_counter() - start)
        start = time.perf_counter()
        raw_lines = RapidOcrReader.read(backends["ocr"], canvas)  # plain rapidocr on the whole canvas
        times["rapidocr"].append(time.perf_counter() - start)
        start = time.perf_counter()
        [lines] = backends["ocr"]([canvas])  # the OCR ``shapes`` backend: the recogniser on each sign
        times["ocr"].append(time.perf_counter() - start)
        if index < timed:
            start = time.perf_counter()
            perceiver.perceive_loaded([image])
            times["all"].append(time.perf_counter() - start)

        ps_truth = [(s.kind, s.box) for s in scene.shapes] + [("sign", s.box) for s in scene.signs]
        ps_match = match([(s.label, s.box) for s in segments], ps_truth)
        counts["ps"].add(len(ps_match), len(segments), len(ps_truth))

        od_truth = [(f"{s.colour} {s.kind}", s.box) for s in scene.shapes]
        od_match = match([(d.label, d.box) for d in detections], od_truth)
        counts["owod"].add(len(od_match), len(detections), len(od_truth))
        for i, j in od_match.items():
            error = max(abs(a - b) for a, b in zip(detections[i].box, od_truth[j][1]))
            worst_box_error = max(worst_box_error, error)

        # objects -> shapes by box alone (the relation is judged, not the name)
        obj_match = match([("", o.box) for o in graph.objects], [("", s.box) for s in scene.shapes])
        rel_truth = truth_relations(scene)
        rel_pred = {
            (obj_match.get(r.subject, -1), r.predicate, obj_match.get(r.object, -2)) for r in graph.relations
        }
        counts["sgg"].add(len(rel_pred & rel_truth), len(graph.relations), len(rel_truth))

        words = [s.word for s in scene.signs]
        for role, found in (("rapidocr", raw_lines), ("ocr", lines)):
            texts = [line.text for line in found]
            counts[role].add(sum(w in texts for w in words), len(texts), len(words))
            counts[role].tp_lines += sum(t in words for t in texts)

    report = {role: counter.row() for role, counter in counts.items()}
    for role in ("rapidocr", "ocr"):
        ocr = counts[role]
        report[role] = {
            "signs": ocr.truth,
            "words read": ocr.tp,
            "word accuracy": ocr.tp / ocr.truth if ocr.truth else 1.0,
            "lines": ocr.pred,
            "precision": ocr.tp_lines / ocr.pred if ocr.pred else 1.0,
        }
    report["owod"]["worst box error px"] = worst_box_error
    report["ms per image"] = {role: 1000 * float(np.mean(t)) for role, t in times.items()}
    report["scenes"], report["seed"], report["timed scenes"] = scenes, seed, timed
    return report


def print_report(report: dict) -> None:
    ms = report["ms per image"]
    print(f"ShapesWorld perception, {report['scenes']} scenes of seed {report['seed']} (preset shapesworld)")
    print(
        f"{'role':8} {'correct':>8} {'predicted':>9} {'truth':>6} {'precision':>9} {'recall':>7} {'ms/image':>9}"
    )
    for role in ("ps", "owod", "sgg"):
        r = report[role]
        print(
            f"{role:8} {r['correct']:8d} {r['predicted']:9d} {r['truth']:6d} {100 * r['precision']:8.2f}%"
            f" {100 * r['recall']:6.2f}% {ms[role]:9.1f}"
        )
    for role, note in (
        ("ocr", "shapes: rapidocr recogniser on each sign"),
        ("rapidocr", "whole canvas, unfiltered"),
    ):
        o = report[role]
        print(
            f"{role:8} {o['words read']:8d} {o['lines']:9d} {o['signs']:6d} {100 * o['precision']:8.2f}%"
            f" {100 * o['word accuracy']:6.2f}% {ms[role]:9.1f}   ({note}; recall = word accuracy)"
        )
    print(
        f"OWOD worst box-coordinate error of a correct detection: {report['owod']['worst box error px']:.1f} px"
    )
    print(
        f"all four roles through Perceiver (first {report['timed scenes']} scenes): {ms['all']:.1f} ms per image"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=500, help="scenes to generate (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=9001, help="world seed (default: %(default)s)")
    parser.add_argument("--json", type=Path, help="also write the report as JSON here (default: none)")
    args = parser.parse_args(argv)
    report = evaluate(args.scenes, args.seed)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
