"""``moai eval run``, ``moai eval score`` and ``moai eval report`` (docs/eval.md) on a tiny ShapesWorld set.

The runs use a random `shapes` model (conftest `save_shapes_model`: varied nonsense answers, so a changed batch
or shard would show) and once the bundled model (short answers, some right). Expected scores of hand-written
files are worked out in the comments.
"""

import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch
from conftest import save_shapes_model
from PIL import Image

from moai.cli import main
from moai.eval import BENCHMARKS, shapesworld
from moai.eval.common import Example, Examples
from moai.eval.report import BAR_WIDTH, CHART_DPI, CHART_HEIGHT, CHART_MIN_WIDTH
from moai.eval.run import ocr_token_policy
from moai.worlds.shapes import write_world

ROOT = Path(__file__).resolve().parent.parent
RUN_KEYS = {
    "data",
    "model",
    "model_id",
    "precision",
    "device",
    "decoding",
    "max_new_tokens",
    "batch_size",
    "processes",
    "perception_preset",
    "verbalizer",
    "map_style",
    "limit",
    "questions",
    "versions",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models gain nothing from a second torch thread, and on a busy 2-core machine an OpenMP team
    waiting for a descheduled thread made this file's in-process runs ten times slower (83 s against 7 s);
    the old count is restored."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Two fresh scenes (seed 5): 11 questions in six categories."""
    out = tmp_path_factory.mktemp("world")
    write_world(out, 2, 5)
    return out


@pytest.fixture(scope="module")
def questions(world):
    return [json.loads(line) for line in (world / "questions.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_shapes_model(tmp_path_factory.mktemp("model"), seed=1, randomize=True)


@pytest.fixture(scope="module")
def random_model(model_dir):
    """The options that run the random model; its answers cut at 4 tokens (the test's time)."""
    return ["--model", str(model_dir), "--max-new-tokens", "4"]


def run(*args: str) -> int:
    return main(["eval", "run", "--benchmark", "shapesworld", "--no-progress", *args])


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def bundled_run(world, tmp_path_factory):
    """The whole world answered by the default (bundled) model."""
    out = tmp_path_factory.mktemp("bundled") / "run"
    assert run("--data", str(world), "--out", str(out), "--batch-size", "4") == 0
    return out


@pytest.fixture(scope="module")
def random_run(world, random_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("random") / "run"
    assert run("--data", str(world), "--out", str(out), *random_model, "--batch-size", "4") == 0
    return out


def test_run_writes_answers_and_scores_with_the_run_metadata(bundled_run, world, questions):
    answers = lines(bundled_run / "predictions.jsonl")
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions]
    assert [a["prompt"] for a in answers] == [q["text"] for q in questions]  # ShapesWorld: the bare question
    assert all(isinstance(a["text"], str) and a["model_id"] == "moai-tiny-shapes" for a in answers)

    scores = json.loads((bundled_run / "scores.json").read_text())
    assert set(scores) == {"benchmark", "accuracy", "categories", "scored", "excluded", "problems", "run"}
    # accuracy by hand: an answer is right when it equals the truth ignoring case and one final period
    truth = {q["question_id"]: q["answer"].lower() for q in questions}
    right = sum(
        a["text"].strip().removesuffix(".").strip().lower() == truth[a["question_id"]] for a in answers
    )
    assert scores["accuracy"] == pytest.approx(100 * right / 11)
    assert (scores["scored"], scores["excluded"], scores["problems"]) == (11, 0, [])
    assert list(scores["categories"]) == ["existence", "count", "colour", "shape", "position", "ocr"]
    meta = scores["run"]
    assert set(meta) == RUN_KEYS
    assert meta["model"] == "checkpoints/moai-tiny-shapes" and meta["data"] == str(world)
    assert (meta["precision"], meta["device"], meta["decoding"]) == ("float32", "cpu", "greedy")
    assert (meta["batch_size"], meta["processes"], meta["limit"], meta["questions"]) == (4, 1, None, 11)
    bundled = json.loads((ROOT / "checkpoints" / "moai-tiny-shapes" / "aux_config.json").read_text())
    assert meta["perception_preset"] == bundled["perception_preset"] == "shapesworld"
    assert meta["verbalizer"] == bundled["verbalizer"]
    assert set(meta["versions"]) == {"python", "moai", "torch", "transformers"}


def test_limit_then_resume_answers_only_what_is_missing(world, questions, random_model, tmp_path, capsys):
    out = tmp_path / "run"
    common = ["--data", str(world), "--out", str(out), *random_model, "--batch-size", "4"]
    with_bar = ["eval", "run", "--benchmark", "shapesworld", *common, "--limit", "5"]
    assert main(with_bar) == 0
    err = capsys.readouterr().err
    assert "accuracy=" in err  # the running score on the bar
    first = lines(out / "predictions.jsonl")
    assert [a["question_id"] for a in first] == [q["question_id"] for q in questions[:5]]
    scores = json.loads((out / "scores.json").read_text())
    # the 6 questions past --limit are neither scored nor excluded
    assert (scores["scored"], scores["excluded"]) == (5, 0)
    assert (scores["run"]["limit"], scores["run"]["questions"]) == (5, 5)

    with (out / "predictions.jsonl").open("a") as f:
        f.write('{"question_id": "5-000001-0", "te')  # a line cut short by a killed run
    assert run(*common) == 0
    err = capsys.readouterr().err
    assert "predictions.jsonl:6: malformed JSON" in err
    assert "5 of 11 question(s) already answered" in err
    assert "answered 6 new question(s)" in err
    full = lines(out / "predictions.jsonl")
    assert [a["question_id"] for a in full] == [q["question_id"] for q in questions]
    assert full[:5] == first
    assert json.loads((out / "scores.json").read_text())["scored"] == 11

    before = (out / "predictions.jsonl").read_bytes()
    assert run(*common) == 0
    err = capsys.readouterr().err
    assert "11 of 11 question(s) already answered" in err and "answered 0 new question(s)" in err
    assert (out / "predictions.jsonl").read_bytes() == before

    # continuing with another model (here the default) would mix two models' answers
    assert run("--data", str(world), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert f"holds answers of model {Path(random_model[1]).name}, not moai-tiny-shapes" in err
    assert (out / "predictions.jsonl").read_bytes() == before


def with_a_question_without_image(name: str) -> ModuleType:
    """ShapesWorld with one more question that has no image (as HallusionBench's text-only questions)."""
    benchmark = ModuleType(name)
    benchmark.NAME, benchmark.prompt, benchmark.score = name, shapesworld.prompt, shapesworld.score

    def load(path: Path) -> Examples:
        examples = shapesworld.load(path)
        blind = Example("blind", None, "Is there a circle?", "yes", {"category": "existence"})
        return Examples([*examples, blind], examples.problems)

    benchmark.load = load
    return benchmark


def test_run_reports_and_skips_bad_records_or_stops_with_strict(
    world, questions, random_model, tmp_path, capsys, monkeypatch
):
    monkeypatch.setitem(BENCHMARKS, "blindworld", with_a_question_without_image("blindworld"))
    data = tmp_path / "questions.jsonl"
    missing_image = {**questions[1], "question_id": "lost", "image": "nowhere.png"}
    rows = [
        json.dumps({**questions[0], "image": str(world / questions[0]["image"])}),
        json.dumps({"question_id": "noanswer", "image": "x.png", "text": "Is it?"}),
        json.dumps(missing_image),
    ]
    data.write_text("\n".join(rows) + "\n")
    common = ["eval", "run", "--benchmark", "blindworld", "--data", str(data), *random_model, "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "run")]) == 0
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("moai eval run: skipped")] == [
        f"moai eval run: skipped {data}:2: no answer (non-empty strings needed)",
        "moai eval run: skipped 1 question(s) without an image: the engine answers questions about an image "
        "(they are excluded from the scores, as MoAI's evaluation leaves them out)",
        f"moai eval run: skipped question lost: {tmp_path / 'nowhere.png'}: file not found",
    ]
    assert "(0 already answered, 2 skipped)" in err[-2] and err[-1].endswith(
        "3 record(s) excluded from the scores (1 scored)"
    )
    answered = lines(tmp_path / "run" / "predictions.jsonl")
    assert [a["question_id"] for a in answered] == [questions[0]["question_id"]]
    scores = json.loads((tmp_path / "run" / "scores.json").read_text())
    # excluded: the record without an answer; the questions without an image and with a missing one
    # (no prediction)
    assert (scores["scored"], scores["excluded"]) == (1, 3)

    assert main([*common, "--out", str(tmp_path / "strict"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no answer" in err and "(--strict; 2 question(s) unusable)" in err
    assert not (tmp_path / "strict").exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--benchmark": "nope"}, "unknown benchmark 'nope'"),
        ({"--data": "missing"}, "missing: benchmark data not found"),
        ({"--out": "questions.jsonl"}, "questions.jsonl: --out exists and is not a directory"),
    ],
)
def test_run_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    write_question_set(tmp_path / "questions.jsonl")
    given = {"--benchmark": "shapesworld", "--data": "questions.jsonl", "--out": "run", **change}
    assert main(["eval", "run", *(x for pair in given.items() for x in pair)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


def test_textvqa_runs_record_whether_the_prompts_carry_ocr_tokens():
    line = (
        "What is written?\nReference OCR token: STOP, GO\nAnswer the question using a single word or phrase."
    )
    assert ocr_token_policy([line, line]) == "in every prompt"
    assert ocr_token_policy(["What is written?", "Which brand?"]) == "none"
    assert ocr_token_policy([line, "Which brand?", line]) == "in 2 of 3 prompts"


# -- moai eval score ------------------------------------------------------------------------------------------
def test_score_json_equals_the_runs_scores(bundled_run, world, capsys):
    want = json.loads((bundled_run / "scores.json").read_text())
    del want["run"]
    for predictions in (bundled_run / "predictions.jsonl", bundled_run):  # a file, or the run directory
        args = ["--benchmark", "shapesworld", "--data", str(world), "--predictions", str(predictions)]
        assert main(["eval", "score", *args, "--json"]) == 0
        captured = capsys.readouterr()
        assert json.loads(captured.out) == want and captured.err == ""


def write_question_set(path: Path) -> Path:
    rows = [
        {
            "question_id": "q1",
            "image": "a.png",
            "text": "What color is the circle?",
            "answer": "red",
            "category": "colour",
        },
        {
            "question_id": "q2",
            "image": "a.png",
            "text": "What color is the square?",
            "answer": "green",
            "category": "colour",
        },
        {
            "question_id": "q3",
            "image": "b.png",
            "text": "How many circles are there?",
            "answer": "3",
            "category": "count",
        },
        {
            "question_id": "q4",
            "image": "b.png",
            "text": "Is there a sign?",
            "answer": "yes",
            "category": "existence",
        },
        {"question_id": "q5", "image": "b.png", "text": "Is there a cat?"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def llava_answer(qid: str, text: object) -> str:
    """A line of LLaVA's model_vqa answer file (all its fields)."""
    record = {
        "question_id": qid,
        "prompt": "p",
        "text": text,
        "answer_id": "x1",
        "model_id": "m",
        "metadata": {},
    }
    return json.dumps(record) + "\n"


def test_score_counts_right_answers_and_reports_every_left_out_record(tmp_path, capsys):
    data = write_question_set(tmp_path / "questions.jsonl")
    predictions = tmp_path / "answers.jsonl"
    predictions.write_text(
        llava_answer("q1", "Red.")  # right (case and the final period do not count)
        + llava_answer("q2", "blue")  # wrong
        + llava_answer("q3", " 3 ")  # right
        + "{not json\n"  # line 4: problem
        + llava_answer("q1", "green")  # line 5: repeated id, the first answer kept
        + llava_answer("q2", 7)  # line 6: text not a string
        + llava_answer("q9", "yes")  # no such question
    )  # q4 has no answer; q5 (no ground truth) is a bad record of the question file
    args = ["--benchmark", "shapesworld", "--data", str(data), "--predictions", str(predictions)]
    assert main(["eval", "score", *args, "--json"]) == 0
    captured = capsys.readouterr()
    scores = json.loads(captured.out)
    # scored q1, q2, q3: 2 right of 3 = 66.67 %; colour q1 right, q2 wrong = 50 %; count q3 right = 100 %
    assert scores["accuracy"] == pytest.approx(200 / 3)
    assert scores["categories"] == {"colour": 50.0, "count": 100.0}
    # excluded: q5's record, lines 4, 5 and 6, the unknown q9 and q4 without an answer = 6
    assert (scores["scored"], scores["excluded"]) == (3, 6)
    err = captured.err.splitlines()
    assert err == [f"moai eval score: {p}" for p in scores["problems"]] + [
        "moai eval score: 6 record(s) excluded from the scores (3 scored)"
    ]
    assert any(f"{predictions}:5: question q1: duplicated id" in line for line in err)
    assert any("question q4: no prediction" in line for line in err)

    assert main(["eval", "score", *args]) == 0  # the table
    table = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert table[:4] == [
        ["shapesworld"],
        ["metric", "value"],
        ["accuracy", "66.67"],
        ["categories/count", "100.00"],
    ]
    assert table[4:] == [["categories/colour", "50.00"], ["scored", "3"], ["excluded", "6"]]

    assert main(["eval", "score", *args, "--strict"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1 and "--strict; 6 problem(s)" in captured.err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"--benchmark": "nope"}, "unknown benchmark 'nope'"),
        ({"--data": "missing"}, "missing: benchmark data not found"),
        ({"--predictions": "missing.jsonl"}, "missing.jsonl: predictions file not found"),
        ({"--predictions": "."}, "no predictions.jsonl and no rank shards"),
    ],
)
def test_score_bad_input_is_one_line_and_exit_2(tmp_path, capsys, monkeypatch, change, message):
    monkeypatch.chdir(tmp_path)
    write_question_set(tmp_path / "questions.jsonl")
    (tmp_path / "answers.jsonl").write_text(llava_answer("q1", "red"))
    given = {
        "--benchmark": "shapesworld",
        "--data": "questions.jsonl",
        "--predictions": "answers.jsonl",
        **change,
    }
    assert main(["eval", "score", *(x for pair in given.items() for x in pair)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


# -- moai eval report -----------------------------------------------------------------------------------------
def test_report_puts_runs_side_by_side_and_draws_them(bundled_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    scores = {"benchmark": "shapesworld", "accuracy": 62.5, "categories": {"colour": 50.0, "sky": 75.0}}
    scores |= {"scored": 8, "excluded": 1, "problems": ["x"], "run": {"model_id": "mine"}}
    (other / "scores.json").write_text(json.dumps(scores))
    ours = json.loads((bundled_run / "scores.json").read_text())
    table, chart = tmp_path / "table.md", tmp_path / "chart.png"
    runs = [str(bundled_run), str(other)]
    assert main(["eval", "report", *runs, "--out", str(table), "--chart", str(chart)]) == 0
    assert capsys.readouterr().out == f"wrote {table}\nwrote {chart}\n"
    rows = table.read_text().splitlines()
    assert (
        rows[0] == f"| metric | {bundled_run} (shapesworld, moai-tiny-shapes) | {other} (shapesworld, mine) |"
    )
    assert rows[2] == f"| accuracy | {ours['accuracy']:.2f} | 62.50 |"
    assert f"| categories/colour | {ours['categories']['colour']:.2f} | 50.00 |" in rows
    assert "| categories/existence | " in table.read_text() and rows[-3] == "| categories/sky | — | 75.00 |"
    assert rows[-2:] == ["| scored | 11 | 8 |", "| excluded | 0 | 1 |"]  # the counts last
    # 7 metrics of ours (accuracy + 6 categories) + "sky", 2 runs: max(6, 3 bars * 0.35 in * 8) = 8.4 in wide
    with Image.open(chart) as image:
        assert image.format == "PNG"
        width = max(CHART_MIN_WIDTH, 3 * BAR_WIDTH * 8)
        assert image.size == (round(width * CHART_DPI), round(CHART_HEIGHT * CHART_DPI))

    assert main(["eval", "report", str(bundled_run)]) == 0  # no --out: the table on stdout
    assert capsys.readouterr().out.splitlines()[0].startswith("| metric |")
    assert main(["eval", "report", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no scores.json" in err


# -- data-parallel ----------------------------------------------------------------------------------------------
def test_two_processes_write_the_one_process_answers_and_scores(random_run, world, random_model, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "moai.cli",
    ]
    cmd += ["eval", "run", "--benchmark", "shapesworld", "--data", str(world), "--out", str(out)]
    cmd += [*random_model, "--batch-size", "4", "--no-progress"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "terminate called" not in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["predictions.jsonl", "scores.json"]  # shards merged
    assert (out / "predictions.jsonl").read_bytes() == (random_run / "predictions.jsonl").read_bytes()
    ddp, single = (json.loads((d / "scores.json").read_text()) for d in (out, random_run))
    assert ddp.pop("run")["processes"] == 2 and single.pop("run")["processes"] == 1
    assert ddp == single
