"""``moai perceive`` (single image and ``--data``), the cache, resumability, data parallelism, bad images.

Deterministic test backends are registered below through the registry (no model download); the real
backends run through the CLI once at the end (tiny random Mask2Former / OWLv2, real rapidocr).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from moai.cli import main
from moai.perception import (
    CacheMismatchError,
    Detection,
    Perception,
    PerceptionCache,
    PerceptionConfig,
    Segment,
    TextLine,
    perceive,
    precompute,
    register_backend,
    verbalize_perception,
)
from moai.perception.cache import config_versions
from moai.perception.vocab import owlv2_queries

REPO = Path(__file__).resolve().parent.parent
OCR_TEXT = "日本語 テキスト"


@register_backend("ps", "test-dark")
class DarkSegmenter:
    """One ``person`` segment = the pixels darker than ``level`` (when any)."""

    instances = 0

    def __init__(self, *, device: str = "cpu", level: int = 100) -> None:
        DarkSegmenter.instances += 1
        self.level = level

    def __call__(self, images):
        out = []
        for image in images:
            if image.max() == 0:
                raise RuntimeError("all-black image breaks this backend")
            mask = image.mean(axis=-1) < self.level
            out.append([Segment.from_mask("person", mask, 0.9, 0)] if mask.any() else [])
        return out


@register_backend("owod", "test-bright")
class BrightDetector:
    """One ``lamp`` box around the pixels brighter than 200."""

    def __init__(self, *, device: str = "cpu") -> None:
        pass

    def __call__(self, images):
        out = []
        for image in images:
            ys, xs = np.nonzero(image.mean(axis=-1) > 200)
            box = (
                (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
                if len(xs)
                else None
            )
            out.append([Detection("lamp", box, 0.8, 7)] if box else [])
        return out


@register_backend("ocr", "test-text")
class FixedText:
    def __init__(self, *, device: str = "cpu", delay: float = 0.0) -> None:
        self.delay = delay

    def __call__(self, images):
        time.sleep(self.delay * len(images))
        return [[TextLine(OCR_TEXT, ((10, 10), (90, 10), (90, 30), (10, 30)), 0.97)] for _ in images]


def make_config(**ocr_options) -> PerceptionConfig:
    return PerceptionConfig(
        ps={"name": "test-dark"},
        owod={"name": "test-bright"},
        sgg={"name": "geometric"},
        ocr={"name": "test-text", "options": ocr_options},
        device="cpu",
        batch_size=2,
    )


def write_config(path: Path, config: PerceptionConfig) -> str:
    path.write_text(json.dumps(config.to_dict()))
    return str(path)


def scene(path: Path, seed: int, size: tuple[int, int] = (320, 240)) -> Path:
    """A mid-grey image with a dark rectangle (person) above a bright one (lamp)."""
    rng = np.random.default_rng(seed)
    arr = np.full((size[1], size[0], 3), 150, dtype=np.uint8)
    x, y = int(rng.integers(10, size[0] // 2)), int(rng.integers(10, size[1] // 3))
    arr[y : y + 40, x : x + 30] = 20
    arr[y + 60 : y + 90, x : x + 80] = 240
    Image.fromarray(arr).save(path)
    return path


def dataset(root: Path, n: int = 5) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    return [scene(root / f"img{i:02d}.png", i) for i in range(n)]


# --- single image ----------------------------------------------------------------------------------------------------


def test_single_image_aux_json_show_and_only(tmp_path, capsys):
    image = scene(tmp_path / "scene.png", 0)
    cfg = write_config(tmp_path / "cfg.json", make_config())
    assert main(["perceive", str(image), "--config", cfg]) == 0
    aux = capsys.readouterr().out.rstrip("\n")
    [expected] = perceive([str(image)], make_config())
    assert aux == verbalize_perception(expected)
    assert aux.startswith("The image includes bounding box coordinates and their objects: [")
    assert " person" in aux and " lamp" in aux and "person is over lamp" in aux
    assert aux.endswith(f"The image includes text descriptions: {OCR_TEXT}.")

    assert main(["perceive", str(image), "--config", cfg, "--json"]) == 0
    out = capsys.readouterr().out
    assert OCR_TEXT in out and "\\u" not in out  # verbatim JSON strings
    assert Perception.from_json(out) == expected
    assert expected.image_size == (490, 490) and expected.source_size == (320, 240)

    picture = tmp_path / "out.png"
    assert main(["perceive", str(image), "--config", cfg, "--show", str(picture)]) == 0
    assert "wrote" in capsys.readouterr().err
    drawn = np.asarray(Image.open(picture))
    plain = np.asarray(Image.open(image).convert("RGB").resize((490, 490), Image.Resampling.BILINEAR))
    assert drawn.shape == (490, 490, 3) and (drawn != plain).mean() > 0.01

    assert main(["perceive", str(image), "--config", cfg, "--only", "seg,od"]) == 0
    only = capsys.readouterr().out.rstrip("\n")
    seg_od = verbalize_perception(expected).split(" The image includes relationships", 1)[0]
    assert only == seg_od + "  "  # the empty SGG and OCR parts keep their separating spaces
    assert main(["perceive", str(image), "--config", cfg, "--style", "v2"]) == 0
    assert capsys.readouterr().out.startswith(
        "The image includes objects and their bounding box coordinates: "
    )


def test_single_image_errors(tmp_path, capsys):
    cfg = write_config(tmp_path / "cfg.json", make_config())
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"")
    assert main(["perceive", str(bad), "--config", cfg]) == 2
    assert f"moai perceive: error: {bad}: empty file (0 bytes)" in capsys.readouterr().err
    assert main(["perceive", "--config", cfg]) == 2
    assert "give either IMAGE or --data" in capsys.readouterr().err
    assert main(["perceive", str(bad), "--only", "depth"]) == 2
    assert "unknown perception role 'depth'" in capsys.readouterr().err
    assert main(["perceive", str(bad), "--preset", "official", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "moai-vlm[psgtr]" in err and "--preset default" in err and err.count("\n") == 1
    out = tmp_path / "never"
    assert main(["perceive", "--data", str(tmp_path), "--out", str(out), "--preset", "official"]) == 2
    assert "moai-vlm[psgtr]" in capsys.readouterr().err and not out.exists()  # stopped before creating it
    lonely = write_config(tmp_path / "lonely.json", PerceptionConfig(sgg={"name": "geometric"}, device="cpu"))
    assert main(["perceive", str(bad), "--config", lonely]) == 2
    assert (
        "sgg backend 'geometric' reads the ps / owod outputs; configure at least one"
        in capsys.readouterr().err
    )


# --- data sets, cache ------------------------------------------------------------------------------------------------


def test_data_dir_with_bad_images_is_resumable(tmp_path, capsys):
    images = dataset(tmp_path / "data")
    (tmp_path / "data" / "zero.png").write_bytes(b"")
    (tmp_path / "data" / "text.jpg").write_text("not an image")
    (tmp_path / "data" / "notes.txt").write_text("ignored: not an image extension")
    truncated = (tmp_path / "data" / "img00.png").read_bytes()
    (tmp_path / "data" / "sub").mkdir()
    (tmp_path / "data" / "sub" / "cut.png").write_bytes(truncated[: len(truncated) // 3])
    out = tmp_path / "cache"
    cfg = write_config(tmp_path / "cfg.json", make_config())
    DarkSegmenter.instances = 0
    assert main(["perceive", "--data", str(tmp_path / "data"), "--out", str(out), "--config", cfg]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "perceived 8 images: 5 new, 0 already cached, 3 failed"
    assert f"skipped {tmp_path / 'data' / 'zero.png'}: empty file (0 bytes)" in captured.err
    assert f"skipped {tmp_path / 'data' / 'text.jpg'}: not a recognised image format" in captured.err
    assert "cut.png: cannot decode image" in captured.err
    assert DarkSegmenter.instances == 1

    cache = PerceptionCache(out)
    assert len(cache) == 5
    for path in images:
        got = cache.get(path)
        assert got == perceive([str(path)], make_config())[0]
        assert cache.get(path.read_bytes()) == got
    assert cache.get(tmp_path / "cfg.json") is None
    assert cache.config.resolved() == make_config().resolved()
    statuses = sorted(r["status"] for r in cache.read_index())
    assert statuses == ["error"] * 3 + ["ok"] * 5

    DarkSegmenter.instances = 0  # a finished run reruns without loading any model
    assert main(["perceive", "--data", str(tmp_path / "data"), "--out", str(out), "--config", cfg]) == 0
    assert capsys.readouterr().out.strip() == "perceived 8 images: 0 new, 5 already cached, 3 failed"
    assert DarkSegmenter.instances == 0 and len(cache) == 5


def test_llava_json_and_cache_of_another_config_refused(tmp_path, capsys):
    images = dataset(tmp_path / "imgs", 3)
    records = [
        {"id": "a", "image": "imgs/img00.png", "conversations": []},
        {"id": "b", "conversations": []},  # text-only
        {"id": "c", "image": ["imgs/img01.png", "imgs/img02.png"]},
        {"id": "d", "image": "imgs/img00.png"},  # the same image again
        {"id": "e", "image": "imgs/missing.png"},
    ]
    data = tmp_path / "llava.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "cache"
    cfg = write_config(tmp_path / "cfg.json", make_config())
    assert main(["perceive", "--data", str(data), "--out", str(out), "--config", cfg, "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == "perceived 4 images: 3 new, 0 already cached, 1 failed"
    assert "missing.png: cannot read file" in captured.err
    assert all(PerceptionCache(out).get(p) is not None for p in images)

    other = write_config(tmp_path / "other.json", make_config(delay=0.5))
    assert main(["perceive", "--data", str(data), "--out", str(out), "--config", other]) == 2
    err = capsys.readouterr().err
    assert "cache was written by another perception config" in err
    assert "config.ocr.options.delay: cache has 0.0, this run 0.5" in err and "another --out" in err
    with pytest.raises(CacheMismatchError, match="another perception config"):
        PerceptionCache(out, config=make_config(delay=0.5))
    versions = {**config_versions(make_config()), "numpy": "0.0"}
    with pytest.raises(CacheMismatchError, match="other backend/package versions.*numpy"):
        PerceptionCache(out, config=make_config(), versions=versions)
    with pytest.raises(FileNotFoundError, match="not a perception cache"):
        PerceptionCache(tmp_path / "imgs")
    # the manifest's config reproduces the run
    assert main(["perceive", str(images[0]), "--config", str(out / "manifest.json")]) == 0
    assert capsys.readouterr().out.rstrip("\n") == verbalize_perception(PerceptionCache(out).get(images[0]))


def test_data_bad_records_reported_by_file_and_line_and_skipped(tmp_path, capsys):
    dataset(tmp_path / "imgs", 2)
    data = tmp_path / "llava.jsonl"
    lines = [
        json.dumps({"id": "a", "image": "imgs/img00.png"}),
        '{"id": "b", "image": ',  # cut short
        "[1, 2]",
        json.dumps({"id": "c", "image": 7}),
        "",
        json.dumps({"id": "d", "image": "imgs/img01.png"}),
    ]
    data.write_text("\n".join(lines) + "\n")
    cfg = write_config(tmp_path / "cfg.json", make_config())
    argv = ["perceive", "--data", str(data), "--config", cfg, "--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == (
        "perceived 2 images: 2 new, 0 already cached, 0 failed, 3 bad records skipped"
    )
    assert captured.err.splitlines() == [
        f"skipped {data}:2: malformed JSON line: Expecting value (column 22)",
        f"skipped {data}:3: not a JSON object: list",
        f"skipped {data}:4: 'image' must be a path or a list of paths, got 7",
    ]
    assert len(PerceptionCache(tmp_path / "cache")) == 2
    # --strict stops at the first bad record, before the cache directory is created
    assert main([*argv, str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert (
        err
        == f"moai perceive: error: {data}:2: malformed JSON line: Expecting value (column 22) (--strict)\n"
    )
    assert not (tmp_path / "strict").exists()
    # in a JSON list, records are named by their number
    listing = tmp_path / "llava.json"
    listing.write_text(json.dumps([{"image": "imgs/img00.png"}, 5]))
    argv = ["perceive", "--data", str(listing), "--config", cfg, "--no-progress", "--out"]
    assert main([*argv, str(tmp_path / "cache")]) == 0
    captured = capsys.readouterr()
    assert captured.err == f"skipped {listing}: record 2: not a JSON object: int\n"
    assert captured.out.strip().endswith("1 already cached, 0 failed, 1 bad records skipped")


def test_strict_aborts_on_first_bad_image(tmp_path, capsys):
    dataset(tmp_path / "data", 4)
    (tmp_path / "data" / "img01.png").write_bytes(b"")
    cfg = write_config(tmp_path / "cfg.json", make_config())
    out = tmp_path / "cache"
    assert (
        main(["perceive", "--data", str(tmp_path / "data"), "--out", str(out), "--config", cfg, "--strict"])
        == 2
    )
    assert "img01.png: empty file (0 bytes) (--strict)" in capsys.readouterr().err
    assert len(PerceptionCache(out)) < 3


def test_backend_failure_isolated_to_its_image(tmp_path, capsys):
    dataset(tmp_path / "data", 3)
    Image.new("RGB", (50, 50)).save(tmp_path / "data" / "img01b.png")  # all black: the backend raises
    summary = precompute(tmp_path / "data", tmp_path / "cache", make_config(), progress=False)
    assert (summary.new, summary.cached, len(summary.failed)) == (3, 0, 1)
    assert summary.failed[0][0].endswith("img01b.png")
    assert "perception failed (RuntimeError: all-black image breaks this backend)" in summary.failed[0][1]


def test_data_parallel_shards(tmp_path, monkeypatch, capsys):
    images = dataset(tmp_path / "data", 7)
    out = tmp_path / "cache"
    cfg = write_config(tmp_path / "cfg.json", make_config())
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (1, 0):
        monkeypatch.setenv("RANK", str(rank))
        assert main(["perceive", "--data", str(tmp_path / "data"), "--out", str(out), "--config", cfg]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines == [
        "perceived 3 images (rank 1 of 2): 3 new, 0 already cached, 0 failed",
        "perceived 4 images (rank 0 of 2): 4 new, 0 already cached, 0 failed",
    ]
    cache = PerceptionCache(out)
    index = {
        p.name: [json.loads(line)["source"] for line in p.read_text().splitlines()]
        for p in (out / "index").iterdir()
    }
    assert sorted(index) == ["rank-00000-of-00002.jsonl", "rank-00001-of-00002.jsonl"]
    assert set(index["rank-00000-of-00002.jsonl"]).isdisjoint(index["rank-00001-of-00002.jsonl"])
    assert len(cache) == 7 and all(cache.get(p) is not None for p in images)


RUN_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import test_perception_cli  # registers the test backends
{prelude}
from moai.cli import main
sys.exit(main(["perceive", "--data", {data!r}, "--out", {out!r}, "--config", {cfg!r}, "--batch-size", "1"]))
"""

#: Kills the run with SIGKILL inside the cache's entry writer, at the CRASH_AT-th entry (no timing involved).
#: ``mid-write``: after half of the entry's bytes reached its file; ``before-replace``: after the whole entry
#: was written and flushed, before it is moved into place.
CRASH_PRELUDE = """
import builtins, os, signal
CRASH_AT, STAGE = {crash_at}, {stage!r}
entry_writes = 0

def die():
    os.kill(os.getpid(), signal.SIGKILL)

class HalfThenDie:
    def __init__(self, fh):
        self.fh = fh
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        self.fh.close()
    def write(self, text):
        self.fh.write(text[: len(text) // 2])
        self.fh.flush()
        os.fsync(self.fh.fileno())
        die()
    def __getattr__(self, name):
        return getattr(self.fh, name)

real_open, real_replace = builtins.open, os.replace

def is_entry(path):
    return os.sep + "entries" + os.sep in os.fspath(path)

def crashing_open(path, mode="r", *args, **kwargs):
    global entry_writes
    fh = real_open(path, mode, *args, **kwargs)
    if "w" in mode and is_entry(path):
        entry_writes += 1
        if entry_writes == CRASH_AT and STAGE == "mid-write":
            return HalfThenDie(fh)
    return fh

def crashing_replace(src, dst):
    if is_entry(dst) and entry_writes == CRASH_AT and STAGE == "before-replace":
        die()
    real_replace(src, dst)

builtins.open, os.replace = crashing_open, crashing_replace
"""


def run_script(tmp_path: Path, data: Path, out: Path, cfg: str, prelude: str = "") -> Path:
    script = tmp_path / "run.py"
    script.write_text(
        RUN_SCRIPT.format(tests=str(REPO / "tests"), prelude=prelude, data=str(data), out=str(out), cfg=cfg)
    )
    return script


@pytest.mark.parametrize("stage", ["mid-write", "before-replace"])
def test_run_killed_inside_an_entry_write_is_repaired_by_the_rerun(tmp_path, stage):
    crash_at = 3  # two entries complete, the third one being written
    images = dataset(tmp_path / "data", 6)
    out = tmp_path / "cache"
    cfg = write_config(tmp_path / "cfg.json", make_config())
    script = run_script(
        tmp_path, tmp_path / "data", out, cfg, CRASH_PRELUDE.format(crash_at=crash_at, stage=stage)
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    killed = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=1800
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    complete = sorted((out / "entries").glob("*/*.json"))
    [partial] = (out / "entries").glob("*/.*.tmp")  # the entry being written when the process died
    assert len(complete) == crash_at - 1
    if stage == "mid-write":
        with pytest.raises(ValueError):
            json.loads(partial.read_text(encoding="utf-8"))

    summary = precompute(tmp_path / "data", out, make_config(), progress=False)
    assert (summary.cached, summary.new, summary.failed) == (crash_at - 1, 6 - (crash_at - 1), [])
    assert not list((out / "entries").glob("*/.*.tmp"))
    cache = PerceptionCache(out)
    assert len(cache) == 6
    for path in images:  # every entry complete and equal to a fresh perception: nothing corrupt is read
        assert cache.get(path) == perceive([str(path)], make_config())[0]
    keys = [json.loads(p.read_text())["content_hash"] for p in sorted((out / "entries").glob("*/*.json"))]
    assert len(set(keys)) == 6


# --- the real backends through the CLI ---------------------------------------------------------------------------


def test_real_backends_through_cli(tmp_path, capsys):
    from moai.perception.tiny import save_tiny_mask2former, save_tiny_owlv2

    config = PerceptionConfig.from_preset(
        "default",
        device="cpu",
        ps={"name": "mask2former", "options": {"checkpoint": str(save_tiny_mask2former(tmp_path / "m2f"))}},
        owod={
            "name": "owlv2",
            "options": {"checkpoint": str(save_tiny_owlv2(tmp_path / "owl")), "threshold": 0.0},
        },
    )
    img = Image.new("RGB", (640, 480), "white")
    ImageDraw.Draw(img).text((60, 200), "Bakery", fill="black", font=ImageFont.load_default(size=60))
    img.save(tmp_path / "sign.jpg", quality=95)
    cfg = write_config(tmp_path / "cfg.json", config)
    assert main(["perceive", str(tmp_path / "sign.jpg"), "--config", cfg, "--json"]) == 0
    p = Perception.from_json(capsys.readouterr().out)
    assert [t.text for t in p.text_lines] == ["Bakery"]
    assert len(p.detections) == 16  # tiny OWLv2 (64 px, patch 16) at threshold 0: one box per patch
    assert all(d.label == owlv2_queries()[d.label_id] for d in p.detections)
    assert all(s.mask.shape == (490, 490) for s in p.segments)
    assert p.predicates[-4:] == ("left of", "right of", "above", "below")
    n = len(p.objects)
    assert len(p.relations) == min(100, n * (n - 1))
    aux = verbalize_perception(p)
    assert aux.endswith("The image includes text descriptions: Bakery.")


def test_two_processes_under_torch_distributed(tmp_path):
    """Two real processes with the environment ``accelerate launch`` / ``torchrun`` give each worker; ranks
    come from accelerate's ``PartialState`` (gloo on CPU).

    The launcher's part is played by this test, so nothing depends on timing or on a free port: the
    rendezvous store listens on a port the OS assigns to it here (port 0, already bound, so a concurrent run
    cannot take it) and the workers join it as clients (``TORCHELASTIC_USE_AGENT_STORE``, as under
    torchrun); no elastic agent, no rendezvous round, no heartbeat or join timeout.
    """
    pytest.importorskip("accelerate")
    from torch.distributed import TCPStore

    images = dataset(tmp_path / "data", 5)
    out = tmp_path / "cache"
    cfg = write_config(tmp_path / "cfg.json", make_config())
    script = run_script(tmp_path, tmp_path / "data", out, cfg)
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    launcher_env = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(store.port),
        "TORCHELASTIC_USE_AGENT_STORE": "True",
        "TORCHELASTIC_RESTART_COUNT": "0",
        "TORCHELASTIC_RUN_ID": f"test-{os.getpid()}",
        "WORLD_SIZE": "2",
        "LOCAL_WORLD_SIZE": "2",
        "GROUP_RANK": "0",
    }
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
        "OMP_NUM_THREADS": "1",
        **launcher_env,
    }
    workers = [
        subprocess.Popen(
            [sys.executable, str(script)],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    results = [worker.communicate(timeout=1800) for worker in workers]  # a hang guard, not a wait
    for worker, (_, err) in zip(workers, results):
        assert worker.returncode == 0, err[-2000:]
    assert "perceived 3 images (rank 0 of 2): 3 new" in results[0][0]
    assert "perceived 2 images (rank 1 of 2): 2 new" in results[1][0]
    assert sorted(p.name for p in (out / "index").iterdir()) == [
        "rank-00000-of-00002.jsonl",
        "rank-00001-of-00002.jsonl",
    ]
    cache = PerceptionCache(out)
    assert len(cache) == 5 and all(cache.get(p) is not None for p in images)
    del store


def test_draw_many_segments_relations_and_text():
    from moai.perception.draw import draw_perception
    from moai.perception.types import Relation

    seg_map = np.arange(150).repeat(4)[:600].reshape(20, 30) % 150 + 1  # 150 segments, more than 134 colours
    segments = tuple(Segment.from_mask("person", seg_map == i + 1, 0.9) for i in range(150))
    objects = (Detection("cup", (1, 1, 5, 5), 0.9), Detection("table", (0, 10, 30, 20), 0.9))
    p = Perception(
        image_size=(30, 20),
        segments=segments,
        detections=(Detection("lamp", (-5, -5, 40, 8), 0.7),),  # boxes may leave the canvas (not clipped)
        objects=objects,
        relations=(Relation(0, "cup", "over", 1, "table", 0.9),),
        text_lines=(TextLine(OCR_TEXT, ((2, 2), (20, 2), (20, 8), (2, 8)), 0.9),),
    )
    canvas = np.full((20, 30, 3), 128, np.uint8)
    picture = np.asarray(draw_perception(canvas, p))
    assert picture.shape == (20, 30, 3) and (picture != canvas).any()
    with pytest.raises(ValueError, match="canvas is 30x20 but the perception is for 10x10"):
        draw_perception(canvas, Perception(image_size=(10, 10)))
