"""Perception speed on CPU: per-backend latency and images/s, the OWLv2 query-embedding cache, end to end.

Run with ``.venv/bin/python bench/perception.py`` (writes ``bench/results/perception.json``); ``--quick``
for a smoke run that prints only; ``--full-owlv2`` adds OWLv2 at its real architecture size
(``google/owlv2-base-patch16-ensemble``: ViT-B/16 at 960 px, 12-layer text tower; random weights, since
nothing can be downloaded here — the arithmetic, hence the time, is that of the real model).

What is timed (every backend on 490 × 490 canvases, the official input; medians over repetitions):

* ``rapidocr``: the real PP-OCRv4 models, on canvases with 10 rendered words each, and on a blank canvas;
* ``geometric``: the geometric scene graph on 20 segments + 30 detections (50 objects, 2,450 pairs);
* ``mask2former`` / ``owlv2``: tiny random models (``moai.perception.tiny``): plumbing + post-processing
  cost, not the real models' compute;
* OWLv2 with and without the query cache, both with the 1,847 official queries: without it (the official
  code) every image re-encodes all queries; with it only the image tower and the heads run per image;
* end to end: ``Perceiver`` with the ``default`` preset's backends (tiny Mask2Former / OWLv2, geometric,
  rapidocr) from an encoded image file (decode, resize, four roles).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from moai.perception import Perceiver, PerceptionConfig, build_backend
from moai.perception.registry import package_version
from moai.perception.tiny import save_tiny_mask2former, save_tiny_owlv2
from moai.perception.types import Detection, Segment
from moai.perception.vocab import owlv2_queries

RESULTS = Path(__file__).resolve().parent / "results" / "perception.json"
CANVAS = 490
#: The full-size stand-in tokenizer is character-level: 14 characters + start + end tokens = 16 positions.
FULL_QUERY_CHARS = 14
WORDS = "coffee station Market garden window yellow bridge Museum river ticket".split()


def timed(fn: Callable[[], Any], reps: int, warmup: int = 1) -> dict[str, float]:
    """Median / min wall time in ms of ``fn`` over ``reps`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return {"median_ms": round(statistics.median(times), 2), "min_ms": round(min(times), 2), "reps": reps}


def per_image(stats: dict[str, float], batch: int) -> dict[str, float]:
    ms = stats["median_ms"] / batch
    return {**stats, "batch": batch, "ms_per_image": round(ms, 2), "images_per_s": round(1e3 / ms, 2)}


def canvases(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (CANVAS, CANVAS, 3), dtype=np.uint8) for _ in range(n)]


def text_canvas(words: list[str]) -> np.ndarray:
    img = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default(size=26)
    for i, word in enumerate(words):
        draw.text((30 + (i % 2) * 230, 20 + (i // 2) * 95), word, fill="black", font=font)
    return np.asarray(img)


def scene_objects(seed: int = 0) -> tuple[list[Segment], list[Detection]]:
    rng = np.random.default_rng(seed)
    seg_map = np.zeros((CANVAS, CANVAS), dtype=np.int32)
    for i in range(20):  # 20 rectangles painted in order (later ones overwrite)
        x, y = rng.integers(0, CANVAS - 60, 2)
        w, h = rng.integers(30, 200, 2)
        seg_map[y : y + h, x : x + w] = i + 1
    segments = [
        Segment.from_mask("person", seg_map == i + 1, 0.9) for i in range(20) if (seg_map == i + 1).any()
    ]
    detections = []
    for _ in range(30):
        x, y = rng.uniform(0, CANVAS - 80, 2)
        w, h = rng.uniform(20, 150, 2)
        detections.append(Detection("lamp", (x, y, x + w, y + h), float(rng.uniform(0.5, 1.0))))
    return segments, detections


def owlv2_cache_speedup(
    checkpoint: str, reps: int, batch: int = 1, query_chars: int | None = None
) -> dict[str, Any]:
    """OWLv2 with the official 1,847 queries, cached vs re-encoded per image (the official way).

    ``query_chars`` cuts every query to that many characters, so that the character-level stand-in tokenizer
    stays within a 16-token text tower; the tower always runs on 16 padded positions per query
    (``padding="max_length"``), so the compute equals that of the real CLIP BPE tokenization.
    """
    options: dict[str, Any] = {"checkpoint": checkpoint}
    if query_chars is not None:
        options["queries"] = [q[:query_chars] for q in owlv2_queries()]
    detector = build_backend("owod", "owlv2", options, device="cpu")
    images = canvases(batch, seed=1)
    start = time.perf_counter()
    detector.query_embeddings()  # the one-time cost of the cache
    fill_ms = (time.perf_counter() - start) * 1e3
    cached = per_image(timed(lambda: detector(images, cache_queries=True), reps), batch)
    plain = per_image(timed(lambda: detector(images, cache_queries=False), reps), batch)
    return {
        "queries": len(detector.queries),
        "cache_fill_ms": round(fill_ms, 1),
        "cached": cached,
        "plain_official": plain,
        "speedup": round(plain["median_ms"] / cached["median_ms"], 2),
    }


def full_size_owlv2(directory: Path) -> str:
    """An OWLv2 with the architecture of google/owlv2-base-patch16-ensemble and random weights."""
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2Processor
    from transformers.models.owlv2.image_processing_pil_owlv2 import Owlv2ImageProcessorPil

    from moai.perception.tiny import tiny_clip_tokenizer

    # base-patch16-ensemble: text 512 wide x 12 layers (8 heads), vision 768 x 12 (12 heads), 960 px, patch 16,
    # projection 512. The tokenizer is the character-level test one with the real 16-token limit.
    tokenizer = tiny_clip_tokenizer(max_length=16)
    config = Owlv2Config(
        text_config={
            "vocab_size": 49408,
            "hidden_size": 512,
            "intermediate_size": 2048,
            "num_hidden_layers": 12,
            "num_attention_heads": 8,
            "max_position_embeddings": 16,
            "pad_token_id": 0,
            "bos_token_id": 1,
            "eos_token_id": 2,
        },
        vision_config={
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 960,
            "patch_size": 16,
        },
        projection_dim=512,
    )
    torch.manual_seed(0)
    model = Owlv2ForObjectDetection(config).eval()
    image_processor = Owlv2ImageProcessorPil(size={"height": 960, "width": 960})
    processor = Owlv2Processor(image_processor=image_processor, tokenizer=tokenizer)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return str(directory)


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "onnxruntime": package_version("onnxruntime"),
        "rapidocr-onnxruntime": package_version("rapidocr-onnxruntime"),
        "load_average_1m": round(os.getloadavg()[0], 2),
    }


def run(reps: int, full_owlv2: bool) -> dict[str, Any]:
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    }
    backends: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        m2f = str(save_tiny_mask2former(Path(tmp) / "m2f"))
        owl = str(save_tiny_owlv2(Path(tmp) / "owl"))

        ocr = build_backend("ocr", "rapidocr", {})
        text = [text_canvas(WORDS)]
        backends["rapidocr_10_words"] = per_image(timed(lambda: ocr(text), reps), 1)
        blank = [np.full((CANVAS, CANVAS, 3), 255, np.uint8)]
        backends["rapidocr_blank"] = per_image(timed(lambda: ocr(blank), reps), 1)

        sgg = build_backend("sgg", "geometric", {})
        segments, detections = scene_objects()
        graph_input = (canvases(1), [segments], [detections])
        backends["geometric_50_objects"] = per_image(timed(lambda: sgg(*graph_input), reps), 1)

        ps = build_backend("ps", "mask2former", {"checkpoint": m2f}, device="cpu")
        for batch in (1, 4):
            images = canvases(batch)
            backends[f"mask2former_tiny_b{batch}"] = per_image(
                timed(lambda images=images: ps(images), reps), batch
            )
        od = build_backend("owod", "owlv2", {"checkpoint": owl}, device="cpu")
        for batch in (1, 4):
            images = canvases(batch)
            backends[f"owlv2_tiny_cached_b{batch}"] = per_image(
                timed(lambda images=images: od(images), reps), batch
            )
        results["backends"] = backends
        results["owlv2_query_cache"] = {"tiny": owlv2_cache_speedup(owl, reps)}
        if full_owlv2:
            results["owlv2_query_cache"]["full_size_random"] = owlv2_cache_speedup(
                full_size_owlv2(Path(tmp) / "owl_full"), reps=max(1, reps // 5), query_chars=FULL_QUERY_CHARS
            )

        config = PerceptionConfig.from_preset(
            "default",
            device="cpu",
            ps={"name": "mask2former", "options": {"checkpoint": m2f}},
            owod={"name": "owlv2", "options": {"checkpoint": owl}},
        )
        perceiver = Perceiver(config)
        photo = Path(tmp) / "photo.jpg"
        Image.fromarray(text_canvas(WORDS)).resize((640, 480)).save(photo, quality=90)
        end_to_end = per_image(timed(lambda: perceiver([str(photo)]), reps), 1)
        roles = {}
        canvas = [text_canvas(WORDS)]
        for role in ("ps", "owod", "ocr"):
            backend = perceiver.backends[role]
            roles[role] = timed(lambda backend=backend: backend(canvas), reps)["median_ms"]
        results["end_to_end_default_tiny"] = {**end_to_end, "role_median_ms": roles}
    results["notes"] = (
        "Tiny Mask2Former/OWLv2 are random toy-width models: their times are plumbing + post-processing, not the "
        "real models. rapidocr is the real PP-OCRv4. full_size_random is OWLv2 at the real base-patch16 size "
        "with random weights (same arithmetic as the checkpoint). CPU only; medians."
    )
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per measurement")
    parser.add_argument("--quick", action="store_true", help="3 repetitions, print only")
    parser.add_argument(
        "--full-owlv2", action="store_true", help="also time OWLv2 at its real size (minutes)"
    )
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    args = parser.parse_args(argv)
    results = run(reps=3 if args.quick else args.reps, full_owlv2=args.full_owlv2)
    text = json.dumps(results, indent=2) + "\n"
    print(text, end="")
    if not args.quick or args.out:
        out = args.out or RESULTS
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
