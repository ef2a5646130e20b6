import json

from moai.cli import main


def test_info_json_tiny(capsys):
    assert main(["info", "--preset", "tiny", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_params"] == sum(report["components"].values())
    assert report["trainable_params"] == report["components"]["compressor"] + report["components"]["mixers"]


def test_info_json_moai_7b(capsys):
    assert main(["info", "--preset", "moai-7b", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["total_params"] == 8_868_637_720
    assert report["components"]["compressor"] + report["components"]["mixers"] == 201_793_560


def test_demo_runs_and_says_random(capsys):
    assert main(["demo", "--max-new-tokens", "3"]) == 0
    out = capsys.readouterr().out
    assert "RANDOM weights" in out and "answer" in out


def test_unknown_preset_is_a_clean_error(capsys):
    assert main(["info", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
