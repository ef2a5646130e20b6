"""`--model PATH`: a saved MoAI directory as it is, an official checkpoint converted once into the cache."""

import os
from pathlib import Path

import pytest
import torch

from moai.cli import main
from moai.compat.official import convert_checkpoint
from moai.compat.resolve import CACHE_ENV, resolve_model
from moai.engine import DEFAULT_MODEL
from moai.model.modeling import MoAIForConditionalGeneration

OFFICIAL = Path(__file__).resolve().parent / "fixtures" / "official_tiny"
EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "scene-1.png"


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_saved_directories_and_none_are_used_as_they_are(cache):
    assert resolve_model(None) is None
    assert resolve_model(DEFAULT_MODEL) == DEFAULT_MODEL
    assert not cache.exists()


def test_an_official_checkpoint_is_converted_once(cache, tmp_path):
    said = []
    first = resolve_model(OFFICIAL, log=said.append)
    assert first.parent == cache / "converted" and len(said) == 1
    assert (
        said[0]
        == f"converted the official checkpoint {OFFICIAL} into {first} (first use; later runs reuse it)"
    )
    assert resolve_model(OFFICIAL, log=said.append) == first and len(said) == 1  # reused, nothing said

    direct = tmp_path / "direct"
    convert_checkpoint(OFFICIAL, direct, log=lambda _: None)
    a = MoAIForConditionalGeneration.from_pretrained(first).state_dict()
    b = MoAIForConditionalGeneration.from_pretrained(direct).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_changed_checkpoint_is_converted_again(cache, tmp_path):
    copy = tmp_path / "official"
    copy.mkdir()
    for f in OFFICIAL.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    first = resolve_model(copy, log=lambda _: None)
    shard = copy / "state_dict.safetensors"
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10**9))
    assert resolve_model(copy, log=lambda _: None) != first


def test_a_directory_that_is_no_model_is_a_one_line_error(cache, tmp_path):
    (tmp_path / "config.json").write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an official MoAI config"):
        resolve_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        resolve_model(tmp_path / "missing")


def test_moai_ask_converts_then_says_what_is_missing(cache, capsys):
    # the tiny official fixture has no tokenizer.model, so the converted copy has no processor to load
    assert main(["ask", str(EXAMPLE), "What?", "--model", str(OFFICIAL)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(f"converted the official checkpoint {OFFICIAL} into {cache / 'converted'}")
    assert (
        len(err) == 2
        and err[1].startswith("moai ask: error: ")
        and "processor_config.json not found" in err[1]
    )
