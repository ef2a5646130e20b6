"""ShapesWorld (docs/shapesworld.md): every rule of the generator checked against numbers computed here,
determinism per seed, the file formats, the scorer on hand-made answers, and bad input of both commands."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFont

from moai.cli import main
from moai.worlds.score import normalize_answer
from moai.worlds.shapes import Scene, generate, render, write_world

BASE = {"red": (220, 40, 40), "green": (40, 160, 60), "blue": (40, 80, 220), "yellow": (235, 200, 30)}
KINDS = {"circle", "square", "triangle"}
C = "(red|green|blue|yellow)"
K = "(circle|square|triangle)"
TEMPLATES = {
    "existence": [rf"Is there a {C} {K} in the image\?"],
    "count": [r"How many (circles|squares|triangles) are there\?", rf"How many {C} objects are there\?"],
    "colour": [rf"What color is the {K}\?"],
    "shape": [rf"What shape is the {C} object\?"],
    "position": [rf"Is the {C} {K} to the left of the {C} {K}\?", rf"Is the {C} {K} above the {C} {K}\?"],
    "ocr": [r"What word is written on the sign\?", r"Is the word ([A-Z]{3,6}) written in the image\?"],
}
#: Scenes whose rules are checked (no rendering: fast); a few are rendered.
N_RULES = 1500
SEED = 11


@pytest.fixture(scope="module")
def world() -> list[tuple[Scene, list]]:
    return [generate(SEED, i) for i in range(N_RULES)]


def gap(a, b) -> int:
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


# --- scenes ---------------------------------------------------------------------------------------------------


def test_scene_items_follow_the_rules(world):
    font = ImageFont.load_default(size=18)
    for scene, _ in world:
        assert all(225 <= c <= 255 for c in scene.background)
        assert 1 <= len(scene.shapes) <= 6 and len(scene.signs) <= 2
        for s in scene.shapes:
            assert s.kind in KINDS and s.colour in BASE
            assert all(abs(v - b) <= 15 or v in (0, 255) for v, b in zip(s.rgb, BASE[s.colour]))
            assert all(0 <= v <= 255 for v in s.rgb)
            x0, y0, x1, y1 = s.box
            assert x1 - x0 == y1 - y0 and 22 <= x1 - x0 <= 48
        for sign in scene.signs:
            assert re.fullmatch("[A-Z]{3,6}", sign.word)
            left, top, right, bottom = font.getbbox(sign.word)
            x0, y0, x1, y1 = sign.box
            assert (x1 - x0, y1 - y0) == (right - left + 12, bottom - top + 12)  # 2 px border + 4 px padding
        boxes = [i.box for i in (*scene.shapes, *scene.signs)]
        assert all(b[0] >= 2 and b[1] >= 2 and b[2] <= 222 and b[3] <= 222 for b in boxes)
        assert all(gap(a, b) >= 4 for i, a in enumerate(boxes) for b in boxes[i + 1 :])


def test_scene_distributions(world):
    n = len(world)
    shapes = Counter(len(s.shapes) for s, _ in world)
    signs = Counter(len(s.signs) for s, _ in world)
    assert set(shapes) == set(range(1, 7)) and all(abs(v / n - 1 / 6) < 0.04 for v in shapes.values())
    assert all(abs(signs[m] / n - p) < 0.04 for m, p in [(0, 0.4), (1, 0.4), (2, 0.2)])
    items = [s for scene, _ in world for s in scene.shapes]
    sides = Counter(s.box[2] - s.box[0] for s in items)
    assert set(sides) == set(range(22, 49))
    assert all(abs(v / len(items) - 1 / 4) < 0.03 for v in Counter(s.colour for s in items).values())
    assert all(abs(v / len(items) - 1 / 3) < 0.03 for v in Counter(s.kind for s in items).values())
    lengths = Counter(len(s.word) for scene, _ in world for s in scene.signs)
    assert set(lengths) == {3, 4, 5, 6}
    jitter = {v - b for s in items for v, b in zip(s.rgb, BASE[s.colour]) if 0 < v < 255}
    assert jitter == set(range(-15, 16))


def test_rendered_pixels_match_the_ground_truth(world):
    for scene, _ in world[:12]:
        image = render(scene)
        assert image.size == (224, 224) and image.mode == "RGB"
        px = np.asarray(image).astype(int)
        covered = np.zeros((224, 224), bool)
        for item in (*scene.shapes, *scene.signs):
            x0, y0, x1, y1 = item.box
            covered[y0:y1, x0:x1] = True
        assert (px[~covered] == scene.background).all()  # nothing drawn outside the boxes
        for s in scene.shapes:
            x0, y0, x1, y1 = s.box
            region = px[y0:y1, x0:x1]
            cx, cy = (x1 - x0) // 2, (y1 - y0) // 2
            assert (region[cy, cx] == s.rgb).all()  # the centre is filled
            filled = (region == s.rgb).all(-1)
            assert filled.any(0).all() and filled.any(1).all()  # the box is tight: every row and column
            corners = [region[0, 0], region[0, -1], region[-1, 0], region[-1, -1]]
            if s.kind == "square":
                assert (region == s.rgb).all()
            elif s.kind == "circle":  # inscribed ellipse: corners empty, edge midpoints filled
                assert all((c == scene.background).all() for c in corners)
                assert all((region[i, j] == s.rgb).all() for i, j in [(0, cx), (-1, cx), (cy, 0), (cy, -1)])
            else:  # base on the bottom edge, apex at the top centre
                assert (region[-1] == s.rgb).all()
                assert set(np.flatnonzero(filled[0])) <= {(x1 - x0 - 1) // 2, (x1 - x0) // 2}
                assert (corners[0] == scene.background).all() and (corners[1] == scene.background).all()
        for sign in scene.signs:
            x0, y0, x1, y1 = sign.box
            region = px[y0:y1, x0:x1]
            ring = np.ones(region.shape[:2], bool)
            ring[2:-2, 2:-2] = False
            assert (region[ring] == 0).all()  # 2 px black border
            inner = region[2:-2, 2:-2]
            text = np.zeros(inner.shape[:2], bool)
            text[4:-4, 4:-4] = True
            assert (inner[~text] == 255).all()  # 4 px white padding
            assert (inner[text] < 128).any()  # black text inside


# --- questions ------------------------------------------------------------------------------------------------


def expected_answer(scene: Scene, category: str, text: str) -> str:
    """The answer computed from the ground truth here, with the referent and margin rules asserted."""
    yes = {True: "yes", False: "no"}
    pairs = [(s.colour, s.kind) for s in scene.shapes]
    if category == "existence":
        colour, kind = re.fullmatch(TEMPLATES["existence"][0], text).groups()
        return yes[(colour, kind) in pairs]
    if category == "count":
        m = re.fullmatch(TEMPLATES["count"][0], text)
        if m:
            return str(sum(s.kind + "s" == m.group(1) for s in scene.shapes))
        colour = re.fullmatch(TEMPLATES["count"][1], text).group(1)
        return str(sum(s.colour == colour for s in scene.shapes))
    if category == "colour":
        kind = re.fullmatch(TEMPLATES["colour"][0], text).group(1)
        (match,) = [s for s in scene.shapes if s.kind == kind]
        return match.colour
    if category == "shape":
        colour = re.fullmatch(TEMPLATES["shape"][0], text).group(1)
        (match,) = [s for s in scene.shapes if s.colour == colour]
        return match.kind
    if category == "position":
        m = re.fullmatch(TEMPLATES["position"][0], text) or re.fullmatch(TEMPLATES["position"][1], text)
        c1, k1, c2, k2 = m.groups()
        assert (c1, k1) != (c2, k2) and pairs.count((c1, k1)) == 1 and pairs.count((c2, k2)) == 1
        (a,) = [s for s in scene.shapes if (s.colour, s.kind) == (c1, k1)]
        (b,) = [s for s in scene.shapes if (s.colour, s.kind) == (c2, k2)]
        axis = 0 if "left" in text else 1
        ca, cb = (a.box[axis] + a.box[axis + 2]) / 2, (b.box[axis] + b.box[axis + 2]) / 2
        assert abs(ca - cb) >= 8
        return yes[ca < cb]
    assert category == "ocr"
    if text == "What word is written on the sign?":
        (sign,) = scene.signs
        return sign.word
    word = re.fullmatch(TEMPLATES["ocr"][1], text).group(1)
    return yes[word in {s.word for s in scene.signs}]


def test_questions_follow_the_templates_and_the_ground_truth(world):
    seen = Counter()
    for scene, questions in world:
        assert len({q.category for q in questions}) == len(questions)  # one per category
        assert {"existence", "count", "ocr"} <= {q.category for q in questions}
        for q in questions:
            assert any(re.fullmatch(t, q.text) for t in TEMPLATES[q.category]), q.text
            assert q.answer == expected_answer(scene, q.category, q.text), (scene.id, q)
            assert q.image == f"images/{scene.id}.png"
            seen[q.category, q.answer if q.answer in ("yes", "no") else "other"] += 1
        kinds = Counter(s.kind for s in scene.shapes)
        colours = Counter(s.colour for s in scene.shapes)
        has = {q.category for q in questions}
        assert ("colour" in has) == (1 in kinds.values())  # asked whenever the rules allow
        assert ("shape" in has) == (1 in colours.values())
    for category in ("existence", "position", "ocr"):
        assert seen[category, "yes"] > 100 and seen[category, "no"] > 100


def test_negative_ocr_words_are_absent_and_sign_question_needs_one_sign(world):
    for scene, questions in world:
        for q in questions:
            if q.text == "What word is written on the sign?":
                assert len(scene.signs) == 1
            elif q.category == "ocr" and q.answer == "no":
                word = q.text.split()[3]
                assert 3 <= len(word) <= 6 and word not in {s.word for s in scene.signs}


# --- determinism and files ---------------------------------------------------------------------------------------


def test_same_seed_same_scenes_other_seed_other_scenes():
    assert [generate(3, i) for i in range(20)] == [generate(3, i) for i in range(20)]
    assert [generate(3, i)[0].shapes for i in range(20)] != [generate(4, i)[0].shapes for i in range(20)]


def read_world(directory: Path) -> dict[str, object]:
    files = {p.relative_to(directory).as_posix(): p for p in sorted(directory.rglob("*")) if p.is_file()}
    return {
        name: np.asarray(Image.open(p)).tolist() if name.endswith(".png") else p.read_text()
        for name, p in files.items()
    }


def test_written_world_is_reproducible_and_well_formed(tmp_path):
    assert main(["worlds", "shapes", "--out", str(tmp_path / "a"), "--scenes", "6", "--seed", "5"]) == 0
    write_world(tmp_path / "b", 6, 5)
    write_world(tmp_path / "c", 4, 5)
    a, b, c = (read_world(tmp_path / d) for d in "abc")
    assert a == b
    assert all(a[f"images/5-{i:06d}.png"] == c[f"images/5-{i:06d}.png"] for i in range(4))  # prefix
    questions = [json.loads(line) for line in a["questions.jsonl"].splitlines()]
    assert all(list(q) == ["question_id", "image", "text", "category", "answer"] for q in questions)
    assert len({q["question_id"] for q in questions}) == len(questions)
    assert all((tmp_path / "a" / q["image"]).is_file() for q in questions)
    scenes = [Scene.from_dict(json.loads(line)) for line in a["scenes.jsonl"].splitlines()]
    assert scenes == [generate(5, i)[0] for i in range(6)]  # the ground truth round-trips
    records = json.loads(a["train.json"])
    assert [r["id"] for r in records] == [s.id for s in scenes]
    first = []
    for record in records:
        turns = record["conversations"]
        asked = [q for q in questions if q["image"] == record["image"]]
        assert len(turns) == 2 * len(asked) >= 6  # several questions per image
        assert [t["from"] for t in turns] == ["human", "gpt"] * len(asked)
        pairs = [(h["value"].removeprefix("<image>\n"), a["value"]) for h, a in zip(turns[::2], turns[1::2])]
        assert turns[0]["value"].startswith("<image>\n") and all(
            "<image>" not in t["value"] for t in turns[1:]
        )
        assert sorted(pairs) == sorted((q["text"], q["answer"]) for q in asked)  # every question, once
        first.append(next(q["category"] for q in asked if q["text"] == pairs[0][0]))
    assert len(set(first)) > 1  # the turn order is shuffled per scene: not always the same category first


def test_further_conversations_draw_new_questions_and_leave_the_rest_of_the_world_as_it_was(tmp_path, capsys):
    argv = ["worlds", "shapes", "--out", str(tmp_path / "a"), "--scenes", "30", "--seed", "5"]
    assert main([*argv, "--conversations", "4"]) == 0
    printed = capsys.readouterr().out.splitlines()[-1]
    assert re.fullmatch(
        rf"wrote 120 training conversations to {re.escape(str(tmp_path / 'a' / 'train.json'))}: \d+ distinct questions",
        printed,
    )
    write_world(tmp_path / "b", 30, 5)
    a, b = read_world(tmp_path / "a"), read_world(tmp_path / "b")
    assert {k: v for k, v in a.items() if k != "train.json"} == {
        k: v for k, v in b.items() if k != "train.json"
    }
    records, plain = json.loads(a["train.json"]), json.loads(b["train.json"])
    assert len(records) == 4 * len(plain) and records[::4] == plain  # the first conversation is the plain one
    assert len({r["id"] for r in records}) == len(records)
    by_scene = {(s := Scene.from_dict(json.loads(line))).id: s for line in a["scenes.jsonl"].splitlines()}
    asked: dict[str, set] = {}
    for record in records:
        scene = by_scene[Path(record["image"]).stem]
        assert record["id"] in (scene.id, *(f"{scene.id}-{d}" for d in range(1, 4)))
        turns = record["conversations"]
        assert turns[0]["value"].startswith("<image>\n") and all(
            "<image>" not in t["value"] for t in turns[1:]
        )
        categories = []
        for human, gpt in zip(turns[::2], turns[1::2]):
            text = human["value"].removeprefix("<image>\n")
            category = next(c for c, ts in TEMPLATES.items() if any(re.fullmatch(t, text) for t in ts))
            assert gpt["value"] == expected_answer(scene, category, text)  # every draw keeps the rules
            categories.append(category)
            asked.setdefault(category, set()).add((scene.id, text))
        assert len(set(categories)) == len(categories)  # one question per category, as the first draw
    assert int(printed.split(": ")[-1].split()[0]) == sum(map(len, asked.values()))
    plain_asked = {
        (r["id"], t["value"].removeprefix("<image>\n")) for r in plain for t in r["conversations"][::2]
    }
    for category in ("existence", "count", "position", "ocr"):
        assert len(asked[category] - plain_asked) > 10  # further draws ask new questions
    for bad in ("0", "-1", "x"):
        one_line_error(capsys, [*argv, "--overwrite", "--conversations", bad], "--conversations")
    with pytest.raises(ValueError, match="conversations: 0"):
        write_world(tmp_path / "c", 1, 5, conversations=0)


# --- scoring ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [(" Yes. ", "yes"), ("yes..", "yes."), ("GZAC", "gzac"), ("3 .", "3"), ("\tno\n", "no"), (".", "")],
)
def test_normalize_answer(given, expected):
    assert normalize_answer(given) == expected


QUESTIONS = [
    {"question_id": "q1", "image": "i.png", "text": "?", "category": "existence", "answer": "yes"},
    {"question_id": "q2", "image": "i.png", "text": "?", "category": "existence", "answer": "no"},
    {"question_id": "q3", "image": "i.png", "text": "?", "category": "count", "answer": "3"},
    {"question_id": "q4", "image": "i.png", "text": "?", "category": "ocr", "answer": "GZAC"},
    {"question_id": "q5", "image": "i.png", "text": "?", "category": "colour", "answer": "red"},
]


def write_lines(path: Path, lines: list) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


def test_score_hand_made_answers(tmp_path, capsys):
    questions = write_lines(tmp_path / "q.jsonl", QUESTIONS)
    answers = write_lines(
        tmp_path / "a.jsonl",
        [
            {"question_id": "q1", "text": " Yes."},  # right
            {"question_id": "q2", "text": "yes"},  # wrong
            "{not json",  # line 3: malformed, skipped
            {"question_id": "q4", "text": "gzac"},  # right
            {"question_id": "q5", "text": "Red."},  # right
            {"question_id": "zz", "text": "no"},  # no such question
        ],
    )  # q3: no answer -> wrong
    assert main(["worlds", "score", "--questions", str(questions), "--answers", str(answers)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [
        "category   correct  total accuracy",
        "existence        1      2    50.0%",
        "count            0      1     0.0%",
        "colour           1      1   100.0%",
        "ocr              1      1   100.0%",
        "overall          3      5    60.0%",
    ]
    assert f"{answers}:3: malformed JSON" in err
    assert "1 question(s) have no answer, counted wrong: q3" in err
    assert "1 answer(s) for no question, ignored: zz" in err
    assert main(["worlds", "score", "--questions", str(questions), "--answers", str(answers), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["overall"] == {"correct": 3, "total": 5, "accuracy": 0.6}
    assert report["categories"]["existence"]["accuracy"] == 0.5 and report["missing"] == ["q3"]


def test_score_strict_and_malformed_question_lines(tmp_path, capsys):
    questions = write_lines(
        tmp_path / "q.jsonl", [QUESTIONS[0], "", {"question_id": "q9", "text": "?"}, [1], QUESTIONS[0]]
    )
    answers = write_lines(tmp_path / "a.jsonl", [{"question_id": "q1", "text": "yes"}, {"text": "no"}])
    assert main(["worlds", "score", "--questions", str(questions), "--answers", str(answers)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "overall          1      1   100.0%"
    assert f"{questions}:3: no answer" in err
    assert f"{questions}:4: not a JSON object" in err
    assert f"{questions}:5: duplicate question_id 'q1'" in err
    assert f"{answers}:2: not an object" in err
    argv = ["worlds", "score", "--questions", str(questions), "--answers", str(answers), "--strict"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().splitlines() == [
        f"moai worlds score: error: {questions}:3: no answer "
        "(a non-empty string is needed for scoring) (--strict)"
    ]


def one_line_error(capsys, argv: list[str], needle: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    lines = err.strip().splitlines()
    if lines[0].startswith("usage: "):  # argparse: its usage (wrapped lines indented), then the error line
        assert all(line.startswith(" ") for line in lines[1:-1]) and "error: " in lines[-1], err
    else:  # ours: one line
        assert len(lines) == 1, err


def test_bad_input_of_both_commands(tmp_path, capsys):
    out = str(tmp_path / "w")
    for bad in ("0", "-3", "many"):
        one_line_error(capsys, ["worlds", "shapes", "--out", out, "--scenes", bad], "--scenes")
    one_line_error(capsys, ["worlds", "shapes", "--out", out, "--scenes", "1", "--seed", "-1"], "--seed")
    one_line_error(capsys, ["worlds", "shapes", "--scenes", "1"], "--out")
    (tmp_path / "file").write_text("x")
    one_line_error(
        capsys, ["worlds", "shapes", "--out", str(tmp_path / "file"), "--scenes", "1"], "not a dir"
    )
    one_line_error(capsys, ["worlds", "shapes", "--out", str(tmp_path), "--scenes", "1"], "--overwrite")
    assert main(["worlds", "shapes", "--out", str(tmp_path), "--scenes", "1", "--overwrite"]) == 0
    capsys.readouterr()

    good = write_lines(tmp_path / "q.jsonl", QUESTIONS)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    useless = write_lines(tmp_path / "useless.jsonl", [{"question_id": "q1", "text": "?"}])
    cases = [
        (tmp_path / "missing.jsonl", good, "No such file"),
        (good, tmp_path / "missing.jsonl", "No such file"),
        (tmp_path, good, "is a directory"),
        (binary, good, "not a UTF-8"),
        (empty, good, "no usable question"),
        (useless, good, "no usable question"),
    ]
    for questions, answers, needle in cases:
        argv = ["worlds", "score", "--questions", str(questions), "--answers", str(answers)]
        one_line_error(capsys, argv, needle)
    # an empty answer file is not an error: every question is missing, so wrong
    assert main(["worlds", "score", "--questions", str(good), "--answers", str(empty)]) == 0
    out, err = capsys.readouterr()
    assert (
        out.splitlines()[-1] == "overall          0      5     0.0%" and "5 question(s) have no answer" in err
    )


def test_score_reads_a_byte_order_mark_and_line_separators_inside_strings(tmp_path, capsys):
    questions = tmp_path / "q.jsonl"
    rows = [{"question_id": "a", "answer": "yes"}, {"question_id": "b\u2028c", "answer": "no"}]
    questions.write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8-sig"
    )
    answers = write_lines(
        tmp_path / "a.jsonl", [{"question_id": "a", "text": "Yes"}, {"question_id": "b\u2028c", "text": "no"}]
    )
    assert main(["worlds", "score", "--questions", str(questions), "--answers", str(answers)]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[-1] == "overall          2      2   100.0%" and out.err == ""


def test_score_integer_ids_and_answers_and_no_category(tmp_path, capsys):
    """LLaVA ``model_vqa`` files use integer ids; ``category`` is optional in the question file."""
    questions = write_lines(tmp_path / "q.jsonl", [{"question_id": 7, "answer": 3}, QUESTIONS[2]])
    answers = write_lines(
        tmp_path / "a.jsonl", [{"question_id": 7, "text": "3."}, {"question_id": "q3", "text": 3}]
    )
    assert main(["worlds", "score", "--questions", str(questions), "--answers", str(answers)]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == [
        "count            1      1   100.0%",
        "(none)           1      1   100.0%",
        "overall          2      2   100.0%",
    ]


def test_score_by_template_beside_each_templates_majority_answer(tmp_path, capsys):
    """``--by-template``: one row a question template (colour, kind and sign words as placeholders), in the
    category order, with the accuracy a model that gives every question its template's commonest answer gets."""
    word = "Is the word {} written in the image?"
    rows = [
        ("w1", "ocr", word.format("QUAKE"), "no", "no"),
        ("w2", "ocr", word.format("FOX"), "no", "yes"),
        ("w3", "ocr", word.format("LYNX"), "yes", "yes"),
        ("w4", "ocr", word.format("DUSK"), "no", "no"),
        ("s1", "ocr", "What word is written on the sign?", "HELLO", "HELLO"),
        ("s2", "ocr", "What word is written on the sign?", "ZEBRA", "no"),
        ("c1", "count", "How many red objects are there?", "2", "2"),
        ("c2", "count", "How many circles are there?", "1", "3"),
        ("e1", "existence", "Is there a blue square in the image?", "yes", None),
        ("n1", "", "", "3", "3"),  # no category and no text
    ]
    questions = write_lines(
        tmp_path / "q.jsonl",
        [{"question_id": i, "category": c, "text": t, "answer": a} for i, c, t, a, _ in rows],
    )
    answers = write_lines(tmp_path / "a.jsonl", [{"question_id": r[0], "text": r[4]} for r in rows if r[4]])
    argv = ["worlds", "score", "--questions", str(questions), "--answers", str(answers), "--by-template"]
    assert main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[5] == "overall          6     10    60.0%" and out[6] == ""
    table = [line.split() for line in out[7:]]
    assert table[0] == ["category", "template", "correct", "total", "accuracy", "majority"]
    assert table[1:] == [
        ["existence", "Is", "there", "a", "{x}", "{x}", "in", "the", "image?", "0", "1", "0.0%", "100.0%"],
        ["count", "How", "many", "{x}", "are", "there?", "0", "1", "0.0%", "100.0%"],
        ["count", "How", "many", "{x}", "objects", "are", "there?", "1", "1", "100.0%", "100.0%"],
        ["ocr", "Is", "the", "word", "{WORD}", "written", "in", "the", "image?", "3", "4", "75.0%", "75.0%"],
        ["ocr", "What", "word", "is", "written", "on", "the", "sign?", "1", "2", "50.0%", "50.0%"],
        ["(none)", "(no", "text)", "1", "1", "100.0%", "100.0%"],
    ]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["templates"][3] == {
        "category": "ocr",
        "template": "Is the word {WORD} written in the image?",
        "correct": 3,
        "total": 4,
        "accuracy": 0.75,
        "majority": 0.75,
    }
    assert main(argv[:-1] + ["--json"]) == 0 and "templates" not in json.loads(capsys.readouterr().out)


def test_position_world_keeps_the_generators_two_shape_scenes_and_asks_every_allowed_pair(tmp_path):
    """moai/worlds/positions.py: the scenes with two shapes among the first ones of the seed (the generator's
    own, by index), every allowed position question of each one a record, each answer from the box centres."""
    from moai.worlds.positions import POSITIONS_FILE, write_position_world
    from moai.worlds.shapes import POSITION_MIN_OFFSET, generate_scene, read_scenes

    counts = write_position_world(tmp_path / "pos", draws=60, seed=77)
    scenes = read_scenes(tmp_path / "pos")
    expected = [s for s in (generate_scene(77, i) for i in range(60)) if len(s.shapes) == 2]
    assert [s.id for s in scenes] == [s.id for s in expected] and counts["scenes"] == len(scenes) >= 3
    records = json.loads((tmp_path / "pos" / POSITIONS_FILE).read_text())
    assert counts["yes"] + counts["no"] == len(records) and counts["yes"] == counts["no"]  # both orders
    by_id = {s.id: s for s in scenes}
    pattern = re.compile(r"Is the (\w+) (\w+) (to the left of|above) the (\w+) (\w+)\?")
    asked = Counter()
    for record in records:
        scene = by_id[record["id"].rsplit("-pos", 1)[0]]
        assert (tmp_path / "pos" / record["image"]).is_file()
        question = record["conversations"][0]["value"].removeprefix("<image>\n")
        c1, k1, where, c2, k2 = pattern.fullmatch(question).groups()
        (a,) = [s for s in scene.shapes if (s.colour, s.kind) == (c1, k1)]
        (b,) = [s for s in scene.shapes if (s.colour, s.kind) == (c2, k2)]
        axis = 0 if where == "to the left of" else 1
        assert abs(a.centre[axis] - b.centre[axis]) >= POSITION_MIN_OFFSET
        assert record["conversations"][1]["value"] == ("yes" if a.centre[axis] < b.centre[axis] else "no")
        asked[scene.id] += 1
    for (
        scene
    ) in scenes:  # two shapes of one colour and kind have no referent; else every axis far enough apart
        a, b = scene.shapes
        apart = sum(abs(a.centre[i] - b.centre[i]) >= POSITION_MIN_OFFSET for i in (0, 1))
        same = (a.colour, a.kind) == (b.colour, b.kind)
        assert asked[scene.id] == (0 if same else 2 * apart)
    for shapes in ((1, 2), (3, 2), (2, 7)):
        with pytest.raises(ValueError, match="2 <= MIN <= MAX <= 6"):
            write_position_world(tmp_path / "bad", draws=1, seed=77, shapes=shapes)
    with pytest.raises(ValueError, match="no position question"):
        write_position_world(tmp_path / "none", draws=1, seed=77, shapes=(6, 6))
