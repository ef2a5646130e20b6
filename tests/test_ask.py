"""`Engine.stream`, `moai ask` and `moai chat`.

A randomly initialised `shapes` model makes long, varied answers (many tokens, so the streamed pieces and the
multi-turn history are exercised); `moai ask` is also run with its default, the bundled model.
"""

import io
import json
from pathlib import Path

import pytest
import torch
from conftest import save_shapes_model
from PIL import Image

from moai.ask import chat, gate_table
from moai.cli import main
from moai.engine import Engine
from moai.model.constants import EXPERT_NAMES
from moai.worlds.shapes import generate, render

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # non-zero expert outputs (randomize), so the aux and the gates matter to the answers
    return save_shapes_model(tmp_path_factory.mktemp("model"), seed=1, randomize=True)


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.load(model_dir, device="auto")  # as the CLI (--device auto), so the numbers match


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """Two rendered scenes (paths) and their questions."""
    root = tmp_path_factory.mktemp("scenes")
    out = []
    for index in range(2):
        scene, questions = generate(77, index)
        path = root / f"scene{index}.png"
        render(scene).save(path)
        out.append((path, [q.text for q in questions]))
    return out


def test_stream_yields_the_answer_piece_by_piece(engine, scenes):
    counts = []
    for path, questions in scenes:
        for question in questions[:3]:
            pieces = list(engine.stream(path, question, max_new_tokens=12))
            answer = engine.answer([path], [question], max_new_tokens=12)[0].text
            assert "".join(pieces).strip() == answer
            assert all(pieces)
            counts.append(len(pieces))
    assert max(counts) > 1  # the random model's long answers arrive in several pieces


def test_stream_with_history_matches_answer_with_history(engine, scenes):
    path, questions = scenes[0]
    first = engine.answer([path], [questions[0]], max_new_tokens=8)[0].text
    history = [(questions[0], first)]
    streamed = "".join(engine.stream(path, questions[1], history=history, max_new_tokens=8)).strip()
    assert streamed == engine.answer([path], [questions[1]], history=[history], max_new_tokens=8)[0].text


def test_stream_raises_the_generation_error(engine, scenes):
    with pytest.raises(ValueError):
        list(engine.stream(scenes[0][0], "what?", max_new_tokens=4, num_beams=0))


def test_gate_table_has_a_row_per_mixer_layer():
    weights = {"layer1": dict(zip(EXPERT_NAMES, [0.2, 0.3, 0.5, 0.1, 0.1, 0.8]))}
    table = gate_table(weights).splitlines()
    assert table[0].split() == ["layer", *EXPERT_NAMES]
    assert table[1].split() == ["layer1", "0.200", "0.300", "0.500", "0.100", "0.100", "0.800"]
    assert "no MoAI-Mixer" in gate_table({})


def test_ask_prints_the_engines_answer(model_dir, engine, scenes, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # --explain without --explain-out writes IMAGE-STEM-explain.png here
    path, questions = scenes[1]
    expected = engine.answer([path], [questions[0]], gates=True)[0]
    overlay = tmp_path / "o.png"
    code = main(
        ["ask", str(path), questions[0], "--model", str(model_dir), "--show-aux", "--explain"]
        + ["--explain-out", str(overlay)]
    )
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0] == f"aux: {expected.aux_text}"
    assert lines[1] == expected.text
    assert lines[2].split() == ["layer", *EXPERT_NAMES]
    for layer, row in zip(expected.gate_weights, lines[3:]):
        cells = row.split()
        assert cells[0] == layer
        image_w, lang_w = map(float, cells[1:4]), map(float, cells[4:7])
        assert sum(image_w) == pytest.approx(1, abs=2e-3) and sum(lang_w) == pytest.approx(1, abs=2e-3)
    assert lines[-1] == f"perception overlay: {overlay}"
    with Image.open(overlay) as img, Image.open(path) as src:
        assert img.size == src.size and img.tobytes() != src.convert("RGB").tobytes()

    code = main(
        ["ask", str(path), questions[0], "--model", str(model_dir), "--json", "--show-aux", "--explain"]
    )
    record = json.loads(capsys.readouterr().out)
    assert code == 0
    assert record["answer"] == expected.text and record["aux_text"] == expected.aux_text
    assert record["overlay"] == f"{path.stem}-explain.png" and (tmp_path / record["overlay"]).is_file()
    assert record["gate_weights"] == expected.gate_weights  # same process, same inputs: the same numbers


def test_ask_defaults_to_the_bundled_model(capsys):
    image, question = str(EXAMPLES / "scene-2.png"), "What color is the square?"
    code = main(["ask", image, question, "--json"])
    record = json.loads(capsys.readouterr().out)
    assert code == 0
    expected = Engine.load(device="auto").answer([image], [question])[0].text
    assert record == {"image": image, "question": question, "answer": expected}


def test_ask_device_auto_is_the_cpu_here_and_cpu_answers_the_same(capsys):
    """``--device auto`` (the default) is CUDA only where torch sees a device; ``--device cpu`` is the same run."""
    image, question = str(EXAMPLES / "scene-2.png"), "How many circles are there?"
    auto = Engine.load(device="auto")
    assert auto.model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert main(["ask", image, question, "--json", "--device", "cpu"]) == 0
    on_cpu = json.loads(capsys.readouterr().out)
    assert on_cpu["answer"] == Engine.load(device="cpu").answer([image], [question])[0].text
    # threads="auto" picks one CPU thread for a small forward and leaves an accelerator's setting alone
    small = torch.zeros(1, 8, dtype=torch.long)
    assert auto.threads == "auto" and auto.threads_for(small) == 1
    assert auto.threads_for(small.to("meta")) == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.png", "What?"], "missing.png: file not found"),
        (["{dir}", "What?"], "is a directory"),
        (["{bad}", "What?"], "bad.png:"),
        (["{good}", "   "], "question: empty"),
    ],
)
def test_ask_and_chat_bad_input_is_one_line_and_exit_2(args, message, tmp_path, scenes, capsys):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    subs = {"{dir}": str(tmp_path), "{bad}": str(tmp_path / "bad.png"), "{good}": str(scenes[0][0])}
    args = [subs.get(a, a) for a in args]
    assert main(["ask", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    if args[1].strip():  # chat takes the image only
        assert main(["chat", args[0]]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1


def test_chat_streams_keeps_history_and_runs_its_commands(engine, scenes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (first, first_qs), (second, second_qs) = scenes
    script = "\n".join(
        [
            first_qs[0],
            first_qs[1],
            "/aux",
            "/explain",
            "/bogus",
            "/image missing.png",
            f"/image {second}",
            second_qs[0],
            "/quit",
            "never read",
        ]
    )
    out = io.StringIO()
    assert chat(engine, str(first), io.StringIO(script), out, max_new_tokens=8) == 0
    lines = out.getvalue().splitlines()

    a1 = engine.answer([first], [first_qs[0]], max_new_tokens=8)[0]
    a2 = engine.answer([first], [first_qs[1]], history=[[(first_qs[0], a1.text)]], max_new_tokens=8)[0]
    a3 = engine.answer([second], [second_qs[0]], max_new_tokens=8)[0]  # a new image starts a new conversation
    answers = [line.removeprefix("moai> ").strip() for line in lines if line.startswith("moai> ")]
    assert answers == [a1.text, a2.text, a3.text]
    assert f"aux: {a1.aux_text}" in lines
    assert any(line.split() == ["layer", *EXPERT_NAMES] for line in lines)
    assert (
        f"perception overlay: {first.stem}-explain.png" in lines
        and (tmp_path / f"{first.stem}-explain.png").is_file()
    )
    assert any(line.startswith("unknown command /bogus") for line in lines)
    assert any(line.startswith("error: missing.png: file not found") for line in lines)
    assert f"now chatting about {second} (new conversation)" in lines
