"""Every subcommand but ``train`` fed a catalogue of bad inputs: exit code 2, one line, no traceback.

A bad input (missing, empty, a directory, random bytes, corrupt or truncated, the wrong JSON type, out of
range, an unknown name, a device this machine lacks) must give exit code 2 and on stderr either exactly one
line ``moai SUBCOMMAND: error: ...`` naming the input, or argparse's usage message ending in such a line;
never a traceback. ``moai convert official`` must also leave nothing behind. Most cases run ``main``
in-process; a few run the real command in a subprocess to prove that no traceback reaches the terminal.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FIXTURES
from PIL import Image

import moai.cli
from moai.cli import build_parser, main, walk_parsers
from moai.perception import register_backend

REPO = Path(__file__).resolve().parent.parent
TINY = FIXTURES / "official_tiny"
GOLDEN = FIXTURES / "verbalize_public.jsonl"


# --- the catalogue's files ---------------------------------------------------------------------------------------


def random_bytes(n: int = 4096, seed: int = 0) -> bytes:
    data = np.random.default_rng(seed).bytes(n)
    return b"\xff\xfe" + data  # never valid UTF-8, never a valid safetensors header


def truncated_safetensors(source: Path, keep_data: int = 100) -> bytes:
    """A safetensors file cut inside its data: the header is intact, the tensors are not."""
    data = source.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    return data[: 8 + header + keep_data]


def png_bytes() -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> Path:
    """A directory of bad inputs, shared by the cases of this module (none of them writes into it)."""
    root = tmp_path_factory.mktemp("bad")
    (root / "empty").write_bytes(b"")
    (root / "random.bin").write_bytes(random_bytes())
    (root / "text.png").write_text("not an image\n")
    (root / "malformed.json").write_text('{"keys": {"a": [1, 2]\n')
    (root / "list.json").write_text("[1, 2, 3]\n")
    (root / "string.json").write_text('"hello"\n')
    (root / "keys_int.json").write_text('{"keys": 3}\n')
    (root / "keys_bad_shape.json").write_text('{"keys": {"output.weight": "128x64"}}\n')
    (root / "keys_unknown.json").write_text('{"keys": {"model.layers.0.attention.extra.weight": [4]}}\n')
    (root / "keys_wqkv_unsplittable.json").write_text(
        '{"keys": {"model.layers.0.attention.wqkv.Plora_main.weight": [7, 4096]}}\n'
    )
    (root / "keys_empty.json").write_text('{"keys": {}}\n')
    (root / "deep.json").write_text("[" * 200_000 + "]" * 200_000)
    (root / "lines_not_objects.jsonl").write_text("[1, 2]\n3\n")
    (root / "blank_lines.jsonl").write_text("\n  \n\n")
    (root / "adir").mkdir()
    png = png_bytes()
    (root / "image.png").write_bytes(png)
    (root / "truncated.png").write_bytes(png[: len(png) // 2])
    # perception configs
    (root / "config_unknown_key.json").write_text('{"ps": "mask2former", "depth": "midas"}\n')
    (root / "config_bad_canvas.json").write_text('{"ps": "mask2former", "canvas": "big"}\n')
    (root / "config_bad_backend.json").write_text('{"ps": {"name": "mask2former", "colour": 1}}\n')
    (root / "config_no_role.json").write_text('{"ps": null, "owod": null, "sgg": null, "ocr": null}\n')
    (root / "config_unknown_backend.json").write_text('{"ps": "segment-anything"}\n')
    # LLaVA data files
    (root / "data_object.json").write_text('{"image": "image.png"}\n')
    (root / "data_malformed.json").write_text('[{"image": "image.png"},\n')
    (root / "data_bad_line.jsonl").write_text('{"image": "image.png"}\n{"image": \n')
    # a cache whose manifest is corrupt
    (root / "cache_corrupt").mkdir()
    (root / "cache_corrupt" / "manifest.json").write_bytes(random_bytes(64))
    # official checkpoint directories
    config = (TINY / "config.json").read_text()
    state = TINY / "state_dict.safetensors"

    def checkpoint(name: str, files: dict[str, bytes | str]) -> None:
        folder = root / name
        folder.mkdir()
        for file, content in files.items():
            if isinstance(content, str):
                (folder / file).write_text(content)
            else:
                (folder / file).write_bytes(content)

    checkpoint("ck_empty_state", {"config.json": config, "state_dict.safetensors": b""})
    checkpoint("ck_random_state", {"config.json": config, "state_dict.safetensors": random_bytes()})
    checkpoint("ck_header_cut", {"config.json": config, "state_dict.safetensors": state.read_bytes()[:1000]})
    checkpoint("ck_data_cut", {"config.json": config, "state_dict.safetensors": truncated_safetensors(state)})
    checkpoint("ck_no_config", {"state_dict.safetensors": b""})
    checkpoint("ck_config_malformed", {"config.json": config[:-40], "state_dict.safetensors": b""})
    checkpoint("ck_config_list", {"config.json": "[]", "state_dict.safetensors": b""})
    checkpoint("ck_config_incomplete", {"config.json": '{"hidden_size": 64}', "state_dict.safetensors": b""})
    checkpoint("ck_config_random", {"config.json": random_bytes(), "state_dict.safetensors": b""})
    checkpoint("ck_no_weights", {"config.json": config})
    checkpoint(
        "ck_index_malformed", {"config.json": config, "model.safetensors.index.json": '{"weight_map": '}
    )
    checkpoint("ck_index_no_map", {"config.json": config, "model.safetensors.index.json": '{"metadata": {}}'})
    index = {"weight_map": {"output.weight": "model-00001-of-00002.safetensors"}}
    checkpoint(
        "ck_index_missing_shard", {"config.json": config, "model.safetensors.index.json": json.dumps(index)}
    )
    two = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    checkpoint(
        "ck_shard_random",
        {
            "config.json": config,
            "model.safetensors.index.json": json.dumps(two),
            "model-00001-of-00002.safetensors": state.read_bytes(),
            "model-00002-of-00002.safetensors": random_bytes(),
        },
    )
    checkpoint(
        "ck_shard_truncated",
        {
            "config.json": config,
            "model.safetensors.index.json": json.dumps(two),
            "model-00001-of-00002.safetensors": state.read_bytes(),
            "model-00002-of-00002.safetensors": truncated_safetensors(state),
        },
    )
    # every header valid, but the second shard repeats the first's keys: fails after one shard was written
    checkpoint(
        "ck_shard_duplicate",
        {
            "config.json": config,
            "model.safetensors.index.json": json.dumps(two),
            "model-00001-of-00002.safetensors": state.read_bytes(),
            "model-00002-of-00002.safetensors": state.read_bytes(),
        },
    )
    tokenizer = {"config.json": config, "state_dict.safetensors": state.read_bytes()}
    checkpoint("ck_tokenizer_empty", {**tokenizer, "tokenizer.model": b""})
    checkpoint("ck_tokenizer_random", {**tokenizer, "tokenizer.model": random_bytes()})
    # a parity fixture whose tensors are corrupt
    checkpoint(
        "fixture_corrupt",
        {
            "config.json": config,
            "state_dict.safetensors": state.read_bytes(),
            "inputs.safetensors": truncated_safetensors(TINY / "inputs.safetensors"),
            "expected.safetensors": (TINY / "expected.safetensors").read_bytes(),
        },
    )
    checkpoint("fixture_no_expected", {"config.json": config, "state_dict.safetensors": state.read_bytes()})
    return root


# --- the checks ----------------------------------------------------------------------------------------------------


def assert_one_line_error(code: int, err: str, prog: str, names: str | None = None) -> str:
    """Exit code 2; stderr one line ``PROG: error: ...`` (or argparse's usage + that line); no traceback."""
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.rstrip("\n").split("\n")
    if lines[0].startswith("usage: "):  # argparse's own usage error
        assert lines[-1].startswith(f"{prog}: error: "), err
        assert all(line.startswith(" ") for line in lines[1:-1]), err  # only the wrapped usage between
    else:
        assert len(lines) == 1, err
        assert lines[0].startswith(f"{prog}: error: "), err
    if names is not None:
        assert names in lines[-1], f"{names!r} not named in {lines[-1]!r}"
    return lines[-1]


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def nothing_left(out: Path) -> None:
    """No OUT, no temporary sibling of it, no parent created for it."""
    assert not out.exists()
    if out.parent.exists():
        assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


# --- moai info / demo / top level ----------------------------------------------------------------------------------

ARGUMENT_CASES = [
    (["info", "--preset", "nope"], "moai info", "'nope'"),
    (["info", "--preset", ""], "moai info", "unknown preset"),
    (["info", "--json", "yes"], "moai", "yes"),
    (["demo", "--seed", "abc"], "moai demo", "abc"),
    (["demo", "--seed", "-1"], "moai demo", "-1"),
    (["demo", "--seed", "1.5"], "moai demo", "1.5"),
    (["demo", "--seed", str(2**64)], "moai demo", str(2**64)),
    (["demo", "--max-new-tokens", "-1"], "moai demo", "-1"),
    (["demo", "--max-new-tokens", "0"], "moai demo", "0"),
    (["demo", "--max-new-tokens", "many"], "moai demo", "many"),
    (["demo", "--max-new-tokens"], "moai demo", "--max-new-tokens"),
    ([], "moai", "COMMAND"),
    (["frobnicate"], "moai", "frobnicate"),
    (["convert"], "moai convert", "SOURCE"),
    (["convert", "huggingface", "a", "b"], "moai convert", "huggingface"),
    (["compat"], "moai compat", "CHECK"),
    (["compat", "keys"], "moai compat keys", "shapes"),
    (["compat", "verbalize", "x.jsonl", "--selection", "random"], "moai compat verbalize", "random"),
    (["compat", "check", "x", "--dtype", "int8"], "moai compat check", "int8"),
    (["compat", "check", "x", "--device", "tpu"], "moai compat check", "tpu"),
    (["compat", "check", "x", "--device", "cuda:7"], "moai compat check", "cuda:7"),
    (["compat", "check", "x", "--device", "cuda:-1"], "moai compat check", "cuda:-1"),
    (["compat", "check", "x", "--device", "meta"], "moai compat check", "meta"),
    (["compat", "check", "x", "--device", "cuda"], "moai compat check", "cuda"),
    (["compat", "check", "x", "--device", "mps"], "moai compat check", "mps"),
    (["compat", "check", "x", "--device", ""], "moai compat check", "''"),
    (["convert", "official", "a", "b", "--gate-dtype", "float64"], "moai convert official", "float64"),
    (["perceive", "x.png", "--device", "tpu"], "moai perceive", "tpu"),
    (["perceive", "x.png", "--device", "cuda:7"], "moai perceive", "cuda:7"),
    (["perceive", "x.png", "--batch-size", "0"], "moai perceive", "0"),
    (["perceive", "x.png", "--batch-size", "two"], "moai perceive", "two"),
    (["perceive", "x.png", "--max-pixels", "-5"], "moai perceive", "-5"),
    (["perceive", "x.png", "--preset", "fast"], "moai perceive", "fast"),
    (["perceive", "x.png", "--style", "v3"], "moai perceive", "v3"),
    (["perceive", "x.png", "--checkpoint", "mask2former"], "moai perceive", "ROLE=PATH"),
    (["perceive", "x.png", "--checkpoint", "depth=./midas"], "moai perceive", "depth"),
    (["perceive", "x.png", "--show", "out.xyz"], "moai perceive", "out.xyz"),
    (["perceive", "x.png", "--only", "depth"], "moai perceive", "depth"),
    (["perceive"], "moai perceive", "give either IMAGE or --data"),
    (["perceive", "x.png", "--data", "d.json", "--out", "c"], "moai perceive", "give either IMAGE or --data"),
    (["perceive", "--data", "d.json"], "moai perceive", "--out"),
    (["serve", "--threads", "-1"], "moai serve", "-1"),
    (["serve", "--device", "cuda:7"], "moai serve", "cuda:7"),
    (["ask", "x.png", "What?", "--device", "tpu"], "moai ask", "tpu"),
    (["ask", "x.png", "What?", "--device", "cuda"], "moai ask", "cuda"),
    (["chat", "x.png", "--device", "meta"], "moai chat", "meta"),
    (["predict", "--questions", "q", "--out", "a", "--device", "cuda:7"], "moai predict", "cuda:7"),
    (["web", "--device", "cuda"], "moai web", "cuda"),
    (["serve", "--threads", "many"], "moai serve", "many"),
]


@pytest.mark.parametrize(
    ("argv", "prog", "names"), ARGUMENT_CASES, ids=[" ".join(c[0]) or "-" for c in ARGUMENT_CASES]
)
def test_bad_arguments(argv, prog, names, capsys):
    if "cuda:7" in argv and torch.cuda.device_count() > 7 or "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has that CUDA device")
    if "mps" in argv and torch.backends.mps.is_available():
        pytest.skip("this machine has an MPS device")
    code, out, err = run_main(argv, capsys)
    assert_one_line_error(code, err, prog, names)
    assert out == ""


# --- moai convert official -----------------------------------------------------------------------------------------

CONVERT_CASES = [
    ("missing", "missing"),
    ("random.bin", "random.bin"),
    ("adir", "adir/config.json"),
    ("ck_empty_state", "state_dict.safetensors: empty file"),
    ("ck_random_state", "ck_random_state/state_dict.safetensors: not a valid safetensors file"),
    ("ck_header_cut", "ck_header_cut/state_dict.safetensors: not a valid safetensors file"),
    ("ck_data_cut", "ck_data_cut/state_dict.safetensors: not a valid safetensors file"),
    ("ck_no_config", "ck_no_config/config.json"),
    ("ck_config_malformed", "ck_config_malformed/config.json: not valid JSON"),
    ("ck_config_list", "ck_config_list/config.json: not an official MoAI config"),
    ("ck_config_incomplete", "ck_config_incomplete/config.json: not an official MoAI config"),
    ("ck_config_random", "ck_config_random/config.json: not a UTF-8 text file"),
    ("ck_no_weights", "ck_no_weights: no safetensors"),
    ("ck_index_malformed", "model.safetensors.index.json: not valid JSON"),
    ("ck_index_no_map", "model.safetensors.index.json: not a safetensors index"),
    ("ck_index_missing_shard", "model-00001-of-00002.safetensors"),
    ("ck_shard_random", "model-00002-of-00002.safetensors: not a valid safetensors file"),
    ("ck_shard_truncated", "model-00002-of-00002.safetensors: not a valid safetensors file"),
    ("ck_shard_duplicate", "appears in both"),
]


@pytest.mark.parametrize(("source", "names"), CONVERT_CASES, ids=[c[0] for c in CONVERT_CASES])
def test_convert_official_bad_source_leaves_nothing(bad, tmp_path, source, names, capsys):
    out = tmp_path / "new" / "deeper" / "converted"
    code, _, err = run_main(["convert", "official", str(bad / source), str(out)], capsys)
    assert_one_line_error(code, err, "moai convert official", names)
    nothing_left(out)
    assert not (tmp_path / "new").exists()  # the parents it created are gone too


@pytest.mark.parametrize("source", ["ck_tokenizer_empty", "ck_tokenizer_random"])
def test_convert_official_bad_tokenizer_leaves_nothing(bad, tmp_path, source, capsys):
    pytest.importorskip("sentencepiece")
    out = tmp_path / "converted"
    code, stdout, err = run_main(["convert", "official", str(bad / source), str(out)], capsys)
    assert_one_line_error(code, err, "moai convert official", f"{source}/tokenizer.model: ")
    assert "not a SentencePiece tokenizer model" in err and stdout == ""  # refused before any shard
    nothing_left(out)


def test_convert_official_keeps_a_users_directory(bad, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = run_main(["convert", "official", str(TINY), str(mine)], capsys)
    assert_one_line_error(code, err, "moai convert official", f"{mine}: exists and is not empty")
    assert [p.name for p in mine.iterdir()] == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"
    afile = tmp_path / "afile"
    afile.write_text("x")
    code, _, err = run_main(["convert", "official", str(TINY), str(afile)], capsys)
    assert_one_line_error(code, err, "moai convert official", f"{afile}: exists and is not a directory")
    assert afile.read_text() == "x"
    empty = tmp_path / "empty_dir"  # an empty directory the user made is kept as it was after a failure
    empty.mkdir()
    code, _, err = run_main(["convert", "official", str(bad / "ck_shard_duplicate"), str(empty)], capsys)
    assert_one_line_error(code, err, "moai convert official", "appears in both")
    assert empty.is_dir() and not list(empty.iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "empty_dir", "mine"]


def test_convert_official_interrupted_leaves_nothing(tmp_path, monkeypatch, capsys):
    from moai.compat import official

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(official, "check_coverage", interrupted)  # after the shard was written
    out = tmp_path / "converted"
    code, _, err = run_main(["convert", "official", str(TINY), str(out)], capsys)
    assert code == 130 and err == "moai convert official: interrupted\n"
    nothing_left(out)


# --- moai compat keys / check / verbalize --------------------------------------------------------------------------

KEYS_CASES = [
    ("missing.json", "missing.json: not found"),
    ("empty", "empty: empty file"),
    ("adir", "adir: is a directory"),
    ("random.bin", "random.bin: not a UTF-8 text file"),
    ("malformed.json", "malformed.json: not valid JSON"),
    ("list.json", "list.json: not a key/shape listing"),
    ("string.json", "string.json: not a key/shape listing"),
    ("keys_int.json", "keys_int.json: not a key/shape listing"),
    ("keys_bad_shape.json", "keys_bad_shape.json: entry 'output.weight'"),
    ("keys_empty.json", "keys_empty.json: the listing has no keys"),
    ("deep.json", "deep.json: JSON nested too deeply"),
    ("keys_unknown.json", "model.layers.0.attention.extra.weight"),
    ("keys_wqkv_unsplittable.json", "cannot be split into q, k, v"),
]


@pytest.mark.parametrize(("name", "names"), KEYS_CASES, ids=[c[0] for c in KEYS_CASES])
def test_compat_keys_bad_listing(bad, name, names, capsys):
    code, out, err = run_main(["compat", "keys", str(bad / name)], capsys)
    assert_one_line_error(code, err, "moai compat keys", names)
    assert out == ""


def test_compat_keys_unknown_preset(capsys):
    code, _, err = run_main(
        ["compat", "keys", str(FIXTURES / "moai7b_state_dict_shapes.json"), "--preset", "x"], capsys
    )
    assert_one_line_error(code, err, "moai compat keys", "unknown preset 'x'")


CHECK_CASES = [
    ("missing", "missing: not a directory"),
    ("random.bin", "random.bin: not a directory"),
    ("adir", "adir/config.json: not found"),
    ("ck_no_weights", "ck_no_weights/state_dict.safetensors: not found"),
    ("ck_config_malformed", "ck_config_malformed/config.json: not valid JSON"),
    ("ck_random_state", "ck_random_state/state_dict.safetensors: not a valid safetensors file"),
    ("fixture_corrupt", "fixture_corrupt/inputs.safetensors: not a valid safetensors file"),
    ("fixture_no_expected", "fixture_no_expected/inputs.safetensors: not found"),
]


@pytest.mark.parametrize(("name", "names"), CHECK_CASES, ids=[c[0] for c in CHECK_CASES])
def test_compat_check_bad_fixture(bad, name, names, capsys):
    code, _, err = run_main(["compat", "check", str(bad / name)], capsys)
    assert_one_line_error(code, err, "moai compat check", names)


VERBALIZE_CASES = [
    ("missing.jsonl", "missing.jsonl: not found"),
    ("empty", "empty: empty file"),
    ("blank_lines.jsonl", "blank_lines.jsonl: empty file"),
    ("adir", "adir: is a directory"),
    ("random.bin", "random.bin: not a UTF-8 text file"),
    ("text.png", "text.png: not a golden JSONL file"),
    ("malformed.json", "malformed.json: not a golden JSONL file"),
    ("lines_not_objects.jsonl", "line 1 is not a JSON object"),
    ("deep.json", "line 1: JSON nested too deeply"),
]


@pytest.mark.parametrize(("name", "names"), VERBALIZE_CASES, ids=[c[0] for c in VERBALIZE_CASES])
def test_compat_verbalize_bad_file(bad, name, names, capsys):
    code, out, err = run_main(["compat", "verbalize", str(bad / name)], capsys)
    assert_one_line_error(code, err, "moai compat verbalize", names)
    assert out == ""


def test_compat_verbalize_names_the_file_of_a_malformed_line(tmp_path, capsys):
    path = tmp_path / "golden.jsonl"
    path.write_text(GOLDEN.read_text(encoding="utf-8").split("\n")[0] + "\n{broken\n", encoding="utf-8")
    code, out, err = run_main(["compat", "verbalize", str(path)], capsys)
    assert code == 1 and err == ""  # a failed check, not a bad input: the good case still ran
    assert f"MALFORMED line 2: bad JSON ({path}:2 column 2:" in out
    assert out.rstrip("\n").split("\n")[-1] == "1/2 exact"


# --- moai perceive ------------------------------------------------------------------------------------------------

PERCEIVE_IMAGE_CASES = [
    ("missing.png", "missing.png: file not found"),
    ("empty", "empty: empty file (0 bytes)"),
    ("adir", "adir: is a directory"),
    ("random.bin", "random.bin: not a recognised image format"),
    ("text.png", "text.png: not a recognised image format"),
    ("truncated.png", "truncated.png: cannot decode image"),
]


@pytest.mark.parametrize(("name", "names"), PERCEIVE_IMAGE_CASES, ids=[c[0] for c in PERCEIVE_IMAGE_CASES])
def test_perceive_bad_image(bad, name, names, capsys):
    # the image is read before any model loads, so the (offline, absent) Mask2Former is never needed
    code, out, err = run_main(["perceive", str(bad / name), "--only", "ps", "--device", "cpu"], capsys)
    assert_one_line_error(code, err, "moai perceive", names)
    assert out == ""


PERCEIVE_CONFIG_CASES = [
    ("missing.json", "missing.json: config file not found"),
    ("empty", "empty: empty file"),
    ("adir", "adir: is a directory"),
    ("random.bin", "random.bin: not a UTF-8 text file"),
    ("malformed.json", "malformed.json: not valid JSON"),
    ("list.json", "list.json: not a PerceptionConfig"),
    ("deep.json", "deep.json: JSON nested too deeply"),
    (
        "config_unknown_key.json",
        "config_unknown_key.json: not a valid PerceptionConfig (unknown PerceptionConfig",
    ),
    ("config_bad_canvas.json", "config_bad_canvas.json: not a valid PerceptionConfig"),
    ("config_bad_backend.json", "config_bad_backend.json: not a valid PerceptionConfig"),
    ("config_no_role.json", "no role to run"),
    ("config_unknown_backend.json", "unknown ps backend 'segment-anything'"),
]


@pytest.mark.parametrize(("name", "names"), PERCEIVE_CONFIG_CASES, ids=[c[0] for c in PERCEIVE_CONFIG_CASES])
def test_perceive_bad_config(bad, name, names, capsys):
    code, out, err = run_main(["perceive", str(bad / "image.png"), "--config", str(bad / name)], capsys)
    assert_one_line_error(code, err, "moai perceive", names)
    assert out == ""


@register_backend("ocr", "bad-inputs-blank")
class BlankText:
    """An OCR backend that loads nothing and reads no text."""

    def __init__(self, *, device: str = "cpu") -> None:
        pass

    def __call__(self, images):
        return [[] for _ in images]


def test_perceive_hints_name_flags_that_exist(bad, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    image = str(bad / "image.png")
    missing = tmp_path / "no-such-model"
    argv = ["perceive", image, "--only", "ps", "--device", "cpu", "--checkpoint", f"ps={missing}"]
    code, _, err = run_main(argv, capsys)
    line = assert_one_line_error(code, err, "moai perceive", str(missing))
    assert "--checkpoint ps=DIR" in line
    code, _, err = run_main(["perceive", image, "--only", "ps,sgg", "--checkpoint", "sgg=x"], capsys)
    assert_one_line_error(
        code, err, "moai perceive", "unknown option(s) checkpoint for sgg backend 'geometric'"
    )
    code, _, err = run_main(["perceive", image, "--only", "ocr", "--checkpoint", "ps=x"], capsys)
    assert_one_line_error(code, err, "moai perceive", "no ps backend in this config")
    # the decompression-bomb refusal names --max-pixels, and --max-pixels moves the limit
    blank = tmp_path / "blank.json"
    blank.write_text(json.dumps({"ocr": "bad-inputs-blank", "device": "cpu"}))
    code, _, err = run_main(["perceive", image, "--config", str(blank), "--max-pixels", "3071"], capsys)
    line = assert_one_line_error(code, err, "moai perceive", "image.png: image has 64x48 = 3,072 pixels")
    assert "--max-pixels N" in line
    assert main(["perceive", image, "--config", str(blank), "--max-pixels", "3072"]) == 0


PERCEIVE_DATA_CASES = [
    ("missing.json", [], "missing.json: data set not found"),
    ("empty", [], "empty: empty file"),
    ("random.bin", [], "random.bin: not a UTF-8 text file"),
    ("malformed.json", [], "malformed.json: not valid JSON"),
    ("data_malformed.json", [], "data_malformed.json: not valid JSON"),
    ("data_object.json", [], "data_object.json: expected a JSON list"),
    ("deep.json", [], "deep.json: JSON nested too deeply"),
    ("data_bad_line.jsonl", ["--strict"], "data_bad_line.jsonl:2: malformed JSON line"),
    ("data_bad_line.jsonl", ["--image-root", "nowhere"], "nowhere: --image-root is not a directory"),
]


@pytest.mark.parametrize(
    ("name", "extra", "names"),
    PERCEIVE_DATA_CASES,
    ids=[f"{c[0]} {' '.join(c[1])}" for c in PERCEIVE_DATA_CASES],
)
def test_perceive_bad_data(bad, tmp_path, name, extra, names, capsys):
    out = tmp_path / "cache"
    argv = ["perceive", "--data", str(bad / name), "--out", str(out), "--only", "sgg,ps", "--device", "cpu"]
    code, stdout, err = run_main([*argv, *extra], capsys)
    assert_one_line_error(code, err, "moai perceive", names)
    assert stdout == "" and not out.exists()  # stopped before the cache directory was created


def test_perceive_bad_cache_directory(bad, tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text('{"image": "image.png"}\n')
    argv = ["perceive", "--data", str(data), "--only", "sgg,ps", "--device", "cpu", "--out"]
    code, _, err = run_main([*argv, str(bad / "cache_corrupt")], capsys)
    assert_one_line_error(
        code, err, "moai perceive", "cache_corrupt/manifest.json: unreadable cache manifest"
    )
    code, _, err = run_main([*argv, str(bad / "image.png")], capsys)
    assert_one_line_error(code, err, "moai perceive", "image.png")


# --- the error path itself -----------------------------------------------------------------------------------------


def test_ctrl_c_is_one_line_and_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(moai.cli, "cmd_info", interrupted)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "moai info: interrupted\n"


def test_a_bug_is_one_line_exit_1_and_its_traceback_on_request(monkeypatch, capsys):
    def broken(args):
        raise TypeError("unsupported operand\nsecond line")

    monkeypatch.setattr(moai.cli, "cmd_info", broken)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(
        "moai info: internal error: TypeError: unsupported operand"
    )
    monkeypatch.setenv("MOAI_TRACEBACK", "1")
    with pytest.raises(TypeError):
        main(["info"])


# --- in a real terminal: no traceback ------------------------------------------------------------------------------

SUBPROCESS_CASES = [
    (["convert", "official", "{bad}/ck_data_cut", "{tmp}/out"], "moai convert official"),
    (["compat", "verbalize", "{bad}/random.bin"], "moai compat verbalize"),
    (
        ["perceive", "--data", "{bad}/data_bad_line.jsonl", "--out", "{tmp}/c", "--strict", "--only", "ps"],
        "moai perceive",
    ),
    (["demo", "--seed", "abc"], "moai demo"),
]


@pytest.mark.parametrize(("argv", "prog"), SUBPROCESS_CASES, ids=[c[1] for c in SUBPROCESS_CASES])
def test_no_traceback_reaches_the_terminal(bad, tmp_path, argv, prog):
    argv = [a.format(bad=bad, tmp=tmp_path) for a in argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop(moai.cli.TRACEBACK_ENV, None)
    result = subprocess.run(
        [sys.executable, "-m", "moai.cli", *argv], env=env, capture_output=True, text=True, timeout=1800
    )
    assert "Traceback" not in result.stdout
    assert_one_line_error(result.returncode, result.stderr, prog)
    if argv[0] == "convert":
        nothing_left(tmp_path / "out")


# --- help ----------------------------------------------------------------------------------------------------------


def test_every_option_has_help_without_rest_markup():
    parser = build_parser()
    for sub in walk_parsers(parser):
        text = sub.format_help()
        assert "``" not in text, sub.prog
        for action in sub._actions:
            if isinstance(
                action, argparse._HelpAction | argparse._VersionAction | argparse._SubParsersAction
            ):
                continue
            assert action.help and action.help.strip(), f"{sub.prog} {action.dest}: no help"
            if action.option_strings:
                assert "default" in action.help, f"{sub.prog} {action.option_strings[0]}: no default in help"


def test_help_of_every_subcommand_exits_0(capsys):
    for sub in walk_parsers(build_parser()):
        assert main([*sub.prog.split()[1:], "--help"]) == 0, sub.prog
        assert capsys.readouterr().out.startswith(f"usage: {sub.prog}")


def test_shipped_fixture_still_works(capsys):
    """The catalogue's checks do not refuse the good inputs they were cut from."""
    assert main(["compat", "keys", str(FIXTURES / "moai7b_state_dict_shapes.json")]) == 0
    assert capsys.readouterr().out == "1197/1197 keys mapped\n"
    assert main(["compat", "verbalize", str(GOLDEN)]) == 0
    assert capsys.readouterr().out.endswith("exact (1 documented deviations: ocr_none_no_text_found)\n")
