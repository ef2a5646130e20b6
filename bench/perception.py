"""Perception speed on CPU: per-backend latency and images/s, the OWLv2 query-embedding cache, end to end.

Third line of ``make bench`` (writes bench/results/perception.json); ``--quick`` for a smoke run that prints
only; ``--full-owlv2`` adds OWLv2 at its real architecture size with random weights (minutes). What is
timed, and on what: bench/README.md.
"""

from __future__ import annotations

import os

# as `make` and `import moai` do: idle OpenMP threads sleep, so a busy CPU does not collapse the timings
# (bench/threads.py); set before torch loads, unless the environment says otherwise
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from timing import clock, interleave, machine, now, summary_ms, write

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


def timed(calls: dict[str, Callable[[], Any]], reps: int, batch: int = 1) -> dict[str, dict[str, Any]]:
    """Each of ``calls`` over ``reps`` interleaved rounds: median / min ms per call, ms and images/s per image."""
    out = {}
    for name, times in interleave(calls, reps).items():
        stats = summary_ms(times)
        ms = stats["median_ms"] / batch
        out[name] = {
            **stats,
            "batch": batch,
            "ms_per_image": round(ms, 2),
            "images_per_s": round(1e3 / ms, 2),
        }
    return out


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
    fill_s, _ = clock(detector.query_embeddings)  # the one-time cost of the cache
    calls = {
        "cached": lambda: detector(images, cache_queries=True),
        "plain_official": lambda: detector(images, cache_queries=False),
    }
    both = timed(calls, reps, batch)
    return {
        "queries": len(detector.queries),
        "cache_fill_ms": round(1e3 * fill_s, 1),
        **both,
        "speedup": round(both["plain_official"]["median_ms"] / both["cached"]["median_ms"], 2),
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


def run(reps: int, full_owlv2: bool) -> dict[str, Any]:
    versions = {k: package_version(k) for k in ("onnxruntime", "rapidocr-onnxruntime")}
    load = round(os.getloadavg()[0], 2)
    results: dict[str, Any] = {
        "date": now(),
        "machine": machine(**versions, load_average_1m=load),
    }
    backends: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        m2f = str(save_tiny_mask2former(Path(tmp) / "m2f"))
        owl = str(save_tiny_owlv2(Path(tmp) / "owl"))

        ocr = build_backend("ocr", "rapidocr", {})
        text, blank = [text_canvas(WORDS)], [np.full((CANVAS, CANVAS, 3), 255, np.uint8)]
        backends |= timed(
            {"rapidocr_10_words": lambda: ocr(text), "rapidocr_blank": lambda: ocr(blank)}, reps
        )

        sgg = build_backend("sgg", "geometric", {})
        segments, detections = scene_objects()
        graph_input = (canvases(1), [segments], [detections])
        backends |= timed({"geometric_50_objects": lambda: sgg(*graph_input)}, reps)

        ps = build_backend("ps", "mask2former", {"checkpoint": m2f}, device="cpu")
        od = build_backend("owod", "owlv2", {"checkpoint": owl}, device="cpu")
        for name, backend in (("mask2former_tiny", ps), ("owlv2_tiny_cached", od)):
            for batch in (1, 4):
                images = canvases(batch)
                backends |= timed({f"{name}_b{batch}": lambda b=backend, i=images: b(i)}, reps, batch)
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
        canvas = [text_canvas(WORDS)]
        calls = {"end_to_end": lambda: perceiver([str(photo)])}  # and each role alone, interleaved with it
        calls |= {role: lambda b=perceiver.backends[role]: b(canvas) for role in ("ps", "owod", "ocr")}
        t = timed(calls, reps)
        roles = {role: t[role]["median_ms"] for role in ("ps", "owod", "ocr")}
        results["end_to_end_default_tiny"] = {**t["end_to_end"], "role_median_ms": roles}
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
    print(json.dumps(results, indent=2))
    if not args.quick or args.out:
        write(args.out or RESULTS, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
