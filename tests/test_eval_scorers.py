"""The benchmark scorers of `moai.eval` (docs/eval.md): each benchmark's loader on a tiny fixture written in
its real layout, its prompt, and its scores checked against numbers worked out by hand in the comments;
bad records reported with their file, line or id and reason; `moai.eval.common`'s predictions reader and
scoring wrapper."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path

import pytest

from moai.eval import (
    BENCHMARKS,
    ai2d,
    get_benchmark,
    gqa,
    hallusionbench,
    mmbench,
    mmbench_cn,
    mme,
    pope,
    qbench,
    scienceqa,
    seed,
    shapesworld,
    textvqa,
)
from moai.eval.common import Examples, read_predictions, score_predictions
from moai.eval.parse import option_letter, vqa_normalize, yes_no_prefix

SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def write_jsonl(path: Path, rows: list[object]) -> Path:
    """JSON Lines; a ``str`` row is written as it is (a malformed line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


def write_json(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def problem_lines(examples) -> list[str]:
    return [str(p) for p in examples.problems]


def test_registry_names_every_benchmark_and_refuses_unknown_names():
    names = "mme pope mmbench mmbench_cn seed scienceqa textvqa ai2d qbench hallusionbench gqa shapesworld".split()
    assert sorted(BENCHMARKS) == sorted(names)
    for name, module in BENCHMARKS.items():
        assert module.NAME == name and get_benchmark(name) is module
        assert all(callable(getattr(module, f)) for f in ("load", "prompt", "score"))
    with pytest.raises(ValueError) as err:
        get_benchmark("mmvet")
    message = str(err.value)
    assert "\n" not in message and "'mmvet'" in message and all(name in message for name in names)


# --- answer parsing ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, letter",
    [
        ("B", "B"),
        (" B", "B"),
        ("B.", "B"),
        ("b", "B"),
        ("(B) dog", "B"),
        ("B: dog", "B"),
        ("The answer is B", "B"),
        ("Answer: (C)", "C"),
        ("dog", "B"),  # the text of option B
        ("Fish.", "D"),
        ("I think C", "C"),
        ("选B", "B"),
        ("A cat", None),  # the article, not option A
        ("E", None),  # not one of the four options
        ("B or C", None),
        ("", None),
    ],
)
def test_option_letter(text, letter):
    assert option_letter(text, ["cat", "dog", "bird", "fish"]) == letter


@pytest.mark.parametrize(
    "text, answer",
    [
        ("Yes", "yes"),
        ("yes, there is", "yes"),
        ("No.", "no"),
        ("Not at all", "no"),
        ("The answer is yes", None),
    ],
)
def test_yes_no_prefix_keys_on_the_first_four_characters(text, answer):
    assert yes_no_prefix(text) == answer


@pytest.mark.parametrize(
    "text, normal",
    [
        ("Coca-Cola.", "coca cola"),  # hyphen inside a word -> space, final period dropped
        ("The Two dogs", "2 dogs"),  # article removed, number word -> digit
        ("dont", "don't"),  # contraction gets its apostrophe back
        ("3.5", "3.5"),  # a period before a digit stays
        ("hello, world?", "hello world"),  # comma and question mark dropped
        ("a - b", "b"),  # "a" is an article; the hyphen touches spaces -> deleted
        ("  Yes\n", "yes"),
    ],
)
def test_vqa_normalize(text, normal):
    assert vqa_normalize(text) == normal


# --- POPE ----------------------------------------------------------------------------------------------------


def pope_fixture(root: Path) -> Path:
    adversarial = [("cat", "yes"), ("dog", "yes"), ("car", "yes"), ("bus", "no"), ("cow", "no")]
    rows, labels = [], []
    for n, (thing, label) in enumerate(adversarial, start=1):
        rows.append(
            {
                "question_id": n,
                "image": "a.jpg",
                "text": f"Is there a {thing}?{SHORT}",
                "category": "adversarial",
            }
        )
        labels.append({"question_id": n, "image": "a.jpg", "text": f"Is there a {thing}?", "label": label})
    rows += [
        {"question_id": 10000001, "image": "b.jpg", "text": f"Is there a boat?{SHORT}", "category": "random"},
        {"question_id": 10000002, "image": "b.jpg", "text": f"Is there a kite?{SHORT}", "category": "random"},
        '{"question_id": 7, "image": ',  # line 8: malformed
        {"question_id": 8, "text": "Is there a fox?", "category": "random"},  # line 9: no image
        {
            "question_id": 9,
            "image": "b.jpg",
            "text": "Is there an owl?",
            "category": "random",
        },  # line 10: no label
    ]
    write_jsonl(root / "llava_pope_test.jsonl", rows)
    write_jsonl(root / "coco" / "coco_pope_adversarial.json", labels)
    write_jsonl(
        root / "coco" / "coco_pope_random.json",
        [
            {"question_id": 1, "image": "b.jpg", "text": "Is there a boat?", "label": "yes"},
            {"question_id": 2, "image": "b.jpg", "text": "Is there a kite?", "label": "no"},
        ],
    )
    return root


def test_pope_scores_each_split_and_their_mean(tmp_path):
    examples = pope.load(pope_fixture(tmp_path))
    assert [e.question_id for e in examples] == ["1", "2", "3", "4", "5", "10000001", "10000002"]
    assert examples[0].question == "Is there a cat?" and examples[0].image == tmp_path / "val2014" / "a.jpg"
    assert pope.prompt(examples[0]) == f"Is there a cat?{SHORT}"
    problems = problem_lines(examples)
    question_file = tmp_path / "llava_pope_test.jsonl"
    assert problems[0].startswith(f"{question_file}:8: malformed JSON")
    assert problems[1].startswith(f"{question_file}:9: question 8: no 'image'")
    assert problems[2].startswith(f"{question_file}:10: question 9: no label")
    answers = ["Yes", "No, there is not.", "yes", "Yes.", "There is no cow", "Yes", "no"]
    scores = pope.score({e.question_id: a for e, a in zip(examples, answers)}, list(examples))
    # adversarial: parsed yes, no, yes, yes, no against yes, yes, yes, no, no
    # -> TP 2 (1, 3), FN 1 (2), FP 1 (4), TN 1 (5): accuracy 3/5, precision 2/3, recall 2/3, F1 2/3, yes 3/5
    adv = scores["splits"]["adversarial"]
    assert adv["accuracy"] == pytest.approx(60.0) and adv["yes_ratio"] == pytest.approx(60.0)
    assert adv["precision"] == pytest.approx(200 / 3) and adv["recall"] == pytest.approx(200 / 3)
    assert adv["f1"] == pytest.approx(200 / 3)
    # random: yes/yes and no/no -> all 100, yes ratio 1/2
    assert scores["splits"]["random"] == pytest.approx(
        {"accuracy": 100.0, "precision": 100.0, "recall": 100.0, "f1": 100.0, "yes_ratio": 50.0}
    )
    # means over the two splits: accuracy (60 + 100) / 2, F1 (66.67 + 100) / 2, yes ratio (60 + 50) / 2
    assert scores["accuracy"] == pytest.approx(80.0)
    assert scores["f1"] == pytest.approx((200 / 3 + 100) / 2)
    assert next(iter(scores)) == "f1"  # the headline number comes first
    assert scores["yes_ratio"] == pytest.approx(55.0)


# --- TextVQA -------------------------------------------------------------------------------------------------


def test_textvqa_soft_accuracy_averages_the_leave_one_out_subsets(tmp_path):
    ocr = "\nReference OCR token: COCA, COLA"
    write_jsonl(
        tmp_path / "llava_textvqa_val_v051_ocr.jsonl",
        [
            {
                "question_id": "img1",
                "image": "img1.jpg",
                "text": f"What brand is it?{ocr}{SHORT}",
                "category": "default",
            },
            {
                "question_id": "img1",
                "image": "img1.jpg",
                "text": f"How many cans?{ocr}{SHORT}",
                "category": "default",
            },
            {"question_id": "img2", "image": "img2.jpg", "text": f"What is not annotated?{SHORT}"},  # line 3
        ],
    )
    data = [
        {
            "question_id": 101,
            "image_id": "img1",
            "question": "what brand is it?",
            "answers": ["coca cola"] * 2 + ["pepsi"] * 8,
        },
        {"question_id": 102, "image_id": "img1", "question": "how many cans?", "answers": ["two"] * 10},
        {"question_id": 103, "image_id": "img3", "question": "broken", "answers": "none"},  # not a list
    ]
    write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": data})
    examples = textvqa.load(tmp_path)
    # LLaVA's ids name the image (img1 twice); the examples take the official, unique question ids
    assert [e.question_id for e in examples] == ["101", "102"]
    assert examples[0].question == f"What brand is it?{ocr}"
    assert textvqa.prompt(examples[0]) == f"What brand is it?{ocr}{SHORT}"
    assert examples[0].image == tmp_path / "train_images" / "img1.jpg"
    problems = problem_lines(examples)
    assert any("annotation 2: needs question_id" in p for p in problems)
    assert any(
        p.startswith(f"{tmp_path / 'llava_textvqa_val_v051_ocr.jsonl'}:3: image img2: no annotation")
        for p in problems
    )
    # 101: "Coca-Cola." normalises to "coca cola", which 2 of 10 humans gave. Leaving out one of those 2:
    # 1 match left -> 1/3; leaving out one of the other 8: 2 matches -> 2/3; mean (2 * 1/3 + 8 * 2/3) / 10 = 0.6
    assert textvqa.soft_accuracy("Coca-Cola.", examples[0].answer) == pytest.approx(0.6)
    # 102: "2" matches all ten "two" (number word -> digit): 1.0; the mean is (0.6 + 1.0) / 2 = 80%
    scores = textvqa.score({"101": "Coca-Cola.", "102": "2"}, list(examples))
    assert scores == {"accuracy": pytest.approx(80.0)}


# --- MME -----------------------------------------------------------------------------------------------------


def mme_fixture(root: Path) -> Path:
    data = root / "MME_Benchmark_release_version"
    truth = {
        "OCR/0001.txt": [("Is the word ABC?", "Yes"), ("Is the word XYZ?", "No")],
        "OCR/0002.txt": [("Is it red?", "Yes"), ("Is it blue?", "No")],
        "celebrity/questions_answers_YN/tt1.txt": [("Is this Ann?", "Yes"), ("Is this Bob?", "No")],
        "code_reasoning/0001.txt": [("Does it print 3?", "Yes"), ("Does it print 4?", "No")],
    }
    for name, lines in truth.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(
            "".join(f"{q} Please answer yes or no.\t{a}\n" for q, a in lines), encoding="utf-8"
        )
    rows = []
    for image, subtask, question in [
        ("OCR/0001.jpg", "OCR", "Is the word ABC?"),
        ("OCR/0001.jpg", "OCR", "Is the word XYZ?"),
        ("OCR/0002.jpg", "OCR", "Is it red?"),
        ("OCR/0002.jpg", "OCR", "Is it blue?"),
        ("celebrity/images/tt1.jpg", "celebrity", "Is this Ann?"),
        ("celebrity/images/tt1.jpg", "celebrity", "Is this Bob?"),
        ("code_reasoning/0001.png", "code_reasoning", "Does it print 3?"),
        ("code_reasoning/0001.png", "code_reasoning", "Does it print 4?"),
        ("OCR/0002.jpg", "OCR", "Is it green?"),  # line 9: not in the ground truth
        ("OCR/0009.jpg", "OCR", "Is it there?"),  # line 10: no ground-truth file
        ("OCR/0001.jpg", "juggling", "Is it?"),  # line 11: unknown subtask
    ]:
        rows.append({"question_id": image, "image": image, "text": question + SHORT, "category": subtask})
    write_jsonl(root / "llava_mme.jsonl", rows)
    return root


def test_mme_scores_acc_and_acc_plus_per_subtask(tmp_path):
    examples = mme.load(mme_fixture(tmp_path))
    ids = [e.question_id for e in examples]
    assert ids[:2] == ["OCR/0001.jpg-1", "OCR/0001.jpg-2"] and len(ids) == 8
    assert examples[4].image == tmp_path / "MME_Benchmark_release_version" / "celebrity/images/tt1.jpg"
    assert examples[0].answer == "yes" and examples[1].answer == "no"
    assert mme.prompt(examples[0]) == f"Is the word ABC?{SHORT}"
    problems = problem_lines(examples)
    question_file = tmp_path / "llava_mme.jsonl"
    assert problems[0].startswith(f"{question_file}:9: image OCR/0002.jpg: the question is on 0 lines")
    assert problems[1].startswith(f"{question_file}:10: image OCR/0009.jpg: cannot read its ground truth")
    assert problems[2] == f"{question_file}:11: image OCR/0001.jpg: unknown subtask 'juggling'"
    answers = ["Yes", "Yes", "yes", "No, it is not.", "Yes", "No", "Yes", "Maybe"]
    scores = mme.score(dict(zip(ids, answers)), list(examples))
    # OCR: image 1 one of two right, image 2 both -> acc 3/4 = 75, acc+ 1/2 = 50, score 125
    assert scores["subtasks"]["OCR"] == pytest.approx({"acc": 75.0, "acc_plus": 50.0, "score": 125.0})
    assert scores["subtasks"]["celebrity"] == pytest.approx({"acc": 100.0, "acc_plus": 100.0, "score": 200.0})
    # code_reasoning: the pair has one of two answers right ("Maybe" is neither) -> acc 50, acc+ 0
    assert scores["subtasks"]["code_reasoning"] == pytest.approx(
        {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    )
    assert scores["perception"] == pytest.approx(325.0) and scores["cognition"] == pytest.approx(50.0)
    assert scores["total"] == pytest.approx(375.0)
    # an image whose second question was not scored cannot be "both right": celebrity acc+ drops to 0
    only_first = mme.score({ids[4]: "Yes"}, [examples[4]])
    assert only_first["subtasks"]["celebrity"] == pytest.approx(
        {"acc": 100.0, "acc_plus": 0.0, "score": 100.0}
    )


# --- MMBench -------------------------------------------------------------------------------------------------

#: PNG magic and enough bytes that the base64 cell is longer than `csv`'s default field limit (131072).
PNG = b"\x89PNG\r\n\x1a\n" + bytes(150_000)
HEADER = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "image", "l2-category"]


def write_tsv(path: Path, rows: list[list[str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [HEADER, *rows]) + "\n", encoding="utf-8")
    return path


def test_mmbench_file_with_rotations_counts_a_question_right_only_if_every_rotation_is(tmp_path):
    image = base64.b64encode(PNG).decode()
    write_tsv(
        tmp_path / "mmbench_dev_20230712.tsv",
        [
            ["1", "What is shown?", "nan", "cat", "dog", "", "", "A", "ocr", image, "perception"],
            ["1000001", "What is shown?", "nan", "dog", "cat", "", "", "B", "ocr", "1", "perception"],
            [
                "2",
                "Which season?",
                "It is cold.",
                "winter",
                "summer",
                "spring",
                "",
                "A",
                "scene",
                image,
                "perception",
            ],
            [
                "1000002",
                "Which season?",
                "It is cold.",
                "summer",
                "spring",
                "winter",
                "",
                "C",
                "scene",
                image,
                "perception",
            ],
            [
                "2000002",
                "Which season?",
                "It is cold.",
                "spring",
                "winter",
                "summer",
                "",
                "B",
                "scene",
                image,
                "perception",
            ],
            [
                "3",
                "Broken?",
                "nan",
                "yes",
                "no",
                "",
                "",
                "E",
                "ocr",
                image,
                "perception",
            ],  # line 7: bad answer
            [
                "4",
                "No image?",
                "nan",
                "yes",
                "no",
                "",
                "",
                "A",
                "ocr",
                "!!",
                "perception",
            ],  # line 8: bad image
        ],
    )
    limit = csv.field_size_limit()
    examples = mmbench.load(tmp_path)
    assert csv.field_size_limit() == limit  # raised for the base64 images while reading, then restored
    assert [e.question_id for e in examples] == ["1", "1000001", "2", "1000002", "2000002"]
    assert [e.meta["group"] for e in examples] == ["1", "1", "2", "2", "2"]
    assert [e.meta["rotations"] for e in examples] == [2, 2, 3, 3, 3]
    # the base64 image is written once per row; a row naming another row's index shares its image
    assert examples[0].image == tmp_path / "mmbench_dev_20230712_images" / "1.png"
    assert examples[0].image.read_bytes() == PNG and examples[1].image.read_bytes() == PNG
    assert examples[2].question == "It is cold.\nWhich season?"
    assert (
        mmbench.prompt(examples[2]) == f"It is cold.\nWhich season?\nA. winter\nB. summer\nC. spring{LETTER}"
    )
    problems = problem_lines(examples)
    tsv = tmp_path / "mmbench_dev_20230712.tsv"
    assert problems[0] == f"{tsv}:7: question 3: answer 'E' is not the letter of one of its 2 options"
    assert problems[1] == f"{tsv}:8: question 4: the image cell is not base64"
    # question 1: both rotations right; question 2: the first two rotations right, the third wrong (its
    # answer is B, "winter"; the model says C) -> only question 1 counts: 1 of 2 = 50%
    answers = {"1": "A", "1000001": "B. cat", "2": "A", "1000002": "winter", "2000002": "C"}
    scores = mmbench.score(answers, list(examples))
    assert scores["accuracy"] == pytest.approx(50.0)
    assert scores["categories"] == pytest.approx({"ocr": 100.0, "scene": 0.0})
    assert scores["l2_categories"] == pytest.approx({"perception": 50.0})
    answers["2000002"] = "B"
    assert mmbench.score(answers, list(examples))["accuracy"] == pytest.approx(100.0)
    # a question with a rotation left unscored is wrong: question 2 without "2000002" -> 1 of 2
    assert mmbench.score(answers, list(examples)[:4])["accuracy"] == pytest.approx(50.0)


def test_mmbench_question_with_a_bad_rotation_row_cannot_be_right(tmp_path):
    image = base64.b64encode(PNG).decode()
    rows = [
        ["1", "What is shown?", "nan", "cat", "dog", "", "", "A", "ocr", image, ""],
        [
            "1000001",
            "What is shown?",
            "nan",
            "dog",
            "cat",
            "",
            "",
            "Z",
            "ocr",
            image,
            "",
        ],  # line 3: bad answer
    ]
    examples = mmbench.load(write_tsv(tmp_path / "mmbench_dev_20230712.tsv", rows))
    assert [(e.question_id, e.meta["rotations"]) for e in examples] == [("1", 2)]
    assert len(examples.problems) == 1 and ":3: question 1000001: answer 'Z'" in str(examples.problems[0])
    # the one loadable rotation is answered right, but the question has two: 0%
    assert mmbench.score({"1": "A"}, list(examples))["accuracy"] == 0.0


def test_mmbench_file_without_rotations_gets_them_made_by_load(tmp_path):
    image = base64.b64encode(b"\xff\xd8jpeg bytes").decode()
    rows = [
        [
            "16",
            "Which toy?",
            '"Two lines\nof hint"',
            "ball",
            "kite",
            "",
            "",
            "A",
            "toys",
            image,
            "",
        ],  # lines 2-3
        ["17", "Which pet?", "", "cat", "dog", "fish", "", "B", "pets", image, ""],  # line 4
        ["18", "Too short?", "nan", "yes"],  # line 5: fewer cells than the header
    ]
    tsv = write_tsv(tmp_path / "custom.tsv", rows)
    examples = mmbench.load(tsv)
    assert problem_lines(examples) == [f"{tsv}:5: 4 cells, the header has 11"]
    assert examples[0].question == "Two lines\nof hint\nWhich toy?"  # a quoted cell may span lines
    examples = [e for e in examples if e.meta["group"] == "17"]
    assert [e.question_id for e in examples] == ["17-r0", "17-r1", "17-r2"]
    assert all(e.meta["group"] == "17" and e.meta["rotations"] == 3 for e in examples)
    # rotation r shows option (j + r) mod 3 at letter j; "dog" (B) moves to A in r1 and to C in r2
    assert [e.meta["options"] for e in examples] == [
        ["cat", "dog", "fish"],
        ["dog", "fish", "cat"],
        ["fish", "cat", "dog"],
    ]
    assert [e.answer for e in examples] == ["B", "A", "C"]
    assert examples[0].image == tmp_path / "custom_images" / "17.jpg"
    assert mmbench.score({"17-r0": "B", "17-r1": "A", "17-r2": "C"}, examples)["accuracy"] == 100.0
    assert mmbench.score({"17-r0": "B", "17-r1": "A", "17-r2": "B"}, examples)["accuracy"] == 0.0


def test_mmbench_cn_reads_its_own_file_and_asks_in_chinese(tmp_path):
    image = base64.b64encode(PNG).decode()
    write_tsv(
        tmp_path / "mmbench_dev_cn_20231003.tsv",
        [["5", "这是什么？", "nan", "猫", "狗", "", "", "A", "识别", image, "感知"]],
    )
    examples = mmbench_cn.load(tmp_path)
    assert [e.question_id for e in examples] == ["5-r0", "5-r1"]
    assert mmbench_cn.prompt(examples[0]) == "这是什么？\nA. 猫\nB. 狗\n请直接回答选项字母。"
    assert mmbench_cn.score({"5-r0": "A", "5-r1": "B"}, list(examples))["categories"] == {"识别": 100.0}


# --- SEED-Bench ----------------------------------------------------------------------------------------------


def test_seed_scores_the_image_dimensions(tmp_path):
    def question(qid, answer, dimension, data_type="image", **extra):
        choices = {f"choice_{c}": f"option {c}" for c in "abcd"}
        return (
            {"question_id": qid, "question": f"Q{qid}?", "answer": answer, "data_id": f"{qid}.jpg"}
            | choices
            | {
                "data_type": data_type,
                "question_type_id": dimension,
                **extra,
            }
        )

    questions = [
        question("1", "A", 1),
        question("2", "B", 1),
        question("3", "D", 5),
        question("4", "A", 10, "video"),
    ]
    questions.append(question("5", "E", 1))  # not a letter of the four choices
    write_json(
        tmp_path / "SEED-Bench.json",
        {
            "questions": questions,
            "question_type": {"Scene Understanding": 1, "Instance Counting": 5, "Action Recognition": 10},
        },
    )
    examples = seed.load(tmp_path)
    assert [e.question_id for e in examples] == ["1", "2", "3"]  # the video question is the other part
    assert examples[0].image == tmp_path / "SEED-Bench-image" / "1.jpg"
    assert seed.prompt(examples[0]) == f"Q1?\nA. option a\nB. option b\nC. option c\nD. option d{LETTER}"
    assert problem_lines(examples) == [
        f"{tmp_path / 'SEED-Bench.json'}:0: question 5: answer 'E' or dimension '1' is not known"
    ]
    # 1 right (A), 2 wrong (C for B), 3 right (D): 2 of 3; Scene Understanding 1 of 2, Instance Counting 1 of 1
    scores = seed.score({"1": "A", "2": "(C) option c", "3": "The answer is D"}, list(examples))
    assert scores["accuracy"] == pytest.approx(200 / 3)
    assert scores["dimensions"] == pytest.approx({"Instance Counting": 100.0, "Scene Understanding": 50.0})
    # LLaVA answers the whole file, video questions too: those answers are ignored with one note, not
    # reported one by one (nor fatal under strict); an id of no question at all still is a problem
    answers = tmp_path / "llava_answers.jsonl"
    rows = [("1", "A"), ("2", "C"), ("3", "D"), ("4", "A"), ("9", "B")]
    answers.write_text(
        "".join(json.dumps({"question_id": q, "prompt": "p", "text": t}) + "\n" for q, t in rows)
    )
    valid = Examples([e for e in examples], [], examples.left_out)  # without the file's bad record
    predictions, problems = read_predictions(answers, valid)
    result = score_predictions(seed, predictions, valid, problems, source="answers")
    assert result["accuracy"] == pytest.approx(200 / 3) and result["scored"] == 3
    assert result["ignored"] == 1 and result["notes"] == [
        "answers: 1 answer(s) to questions outside the scored part ignored "
        "(video questions: SEED-IMG scores images only)"
    ]
    assert result["problems"] == ["answers: question 9: unknown id (not in the benchmark)"]
    del rows[-1]
    answers.write_text(
        "".join(json.dumps({"question_id": q, "prompt": "p", "text": t}) + "\n" for q, t in rows)
    )
    predictions, problems = read_predictions(answers, valid)
    strict = score_predictions(seed, predictions, valid, problems, source="answers", strict=True)
    assert strict["excluded"] == 0 and strict["ignored"] == 1


# --- ScienceQA-IMG -------------------------------------------------------------------------------------------


def test_scienceqa_keeps_the_test_questions_with_an_image(tmp_path):
    def llava(qid, text, image=True):
        record = {
            "id": qid,
            "conversations": [{"from": "human", "value": text}, {"from": "gpt", "value": "A"}],
        }
        return record | ({"image": f"{qid}/image.png"} if image else {})

    write_json(
        tmp_path / "llava_test_CQM-A.json",
        [
            llava("5", "<image>\nContext: A map.\nWhich colony?\nA. Maryland\nB. Vermont"),
            llava("6", "Which word is a noun?\nA. run\nB. dog", image=False),  # not ScienceQA-IMG
            llava("7", "<image>\nWhat is it?\nA. sun\nB. moon"),
            llava("8", "<image>\nWhat else?\nA. one\nB. two"),  # options differ from problems.json
            llava("9", "<image>\nTrain?\nA. x\nB. y"),  # not in the test split
        ],
    )
    problems = {
        "5": {
            "question": "Which colony?",
            "choices": ["Maryland", "Vermont"],
            "answer": 1,
            "subject": "social science",
        },
        "6": {
            "question": "Which word is a noun?",
            "choices": ["run", "dog"],
            "answer": 1,
            "subject": "language science",
        },
        "7": {
            "question": "What is it?",
            "choices": ["sun", "moon"],
            "answer": 0,
            "subject": "natural science",
        },
        "8": {
            "question": "What else?",
            "choices": ["one", "three"],
            "answer": 0,
            "subject": "natural science",
        },
        "9": {"question": "Train?", "choices": ["x", "y"], "answer": 0, "subject": "natural science"},
    }
    write_json(tmp_path / "problems.json", problems)
    write_json(tmp_path / "pid_splits.json", {"test": ["5", "6", "7", "8"], "train": ["9"]})
    examples = scienceqa.load(tmp_path)
    assert [e.question_id for e in examples] == ["5", "7"]
    assert examples.left_out == {"6": "questions without an image: not part of ScienceQA-IMG"}
    assert examples[0].question == "Context: A map.\nWhich colony?" and examples[0].answer == "B"
    assert examples[0].image == tmp_path / "images" / "test" / "5" / "image.png"
    assert scienceqa.prompt(examples[0]) == f"Context: A map.\nWhich colony?\nA. Maryland\nB. Vermont{LETTER}"
    file = tmp_path / "llava_test_CQM-A.json"
    assert problem_lines(examples) == [
        f"{file}:0: question 8: its option lines are not the choices of problems.json",
        f"{file}:0: question 9: not in the test split of pid_splits.json",
    ]
    # 5 right (B), 7 wrong (B for A): 1 of 2; per subject 100 and 0
    scores = scienceqa.score({"5": "B", "7": "B"}, list(examples))
    assert scores == {"accuracy": 50.0, "categories": {"natural science": 0.0, "social science": 100.0}}


# --- AI2D, Q-Bench, GQA --------------------------------------------------------------------------------------


def test_ai2d_reads_moai_layout(tmp_path):
    def record(qid, answer, abc=False):
        metadata = {
            "questionId": qid,
            "answerTexts": ["leaf", "root", "stem", "seed"],
            "correctAnswer": answer,
            "abcLabel": abc,
        }
        return {"imageName": f"{qid}.png", "question": f"Part {qid}?", "metadata": metadata}

    write_json(tmp_path / "ai2d_test.json", [record("q1", 1), record("q2", 3, abc=True), record("q3", 7)])
    examples = ai2d.load(tmp_path)
    assert [e.question_id for e in examples] == ["q1", "q2"] and [e.answer for e in examples] == ["B", "D"]
    assert examples[0].image == tmp_path / "ai2d_images" / "images" / "q1.png"
    assert examples[1].image == tmp_path / "ai2d_images" / "abc_images" / "q2.png"
    assert ai2d.prompt(examples[0]) == f"Part q1?\nA. leaf\nB. root\nC. stem\nD. seed{LETTER}"
    assert problem_lines(examples) == [
        f"{tmp_path / 'ai2d_test.json'}:0: question at position 2: correctAnswer 7 is not the index of an answer"
    ]
    # q1 right (B), q2 wrong (A for D): 50%
    assert ai2d.score({"q1": "B", "q2": "A"}, list(examples)) == {"accuracy": 50.0}


def test_qbench_reads_llvisionqa_dev(tmp_path):
    write_json(
        tmp_path / "llvisionqa_dev.json",
        [
            {
                "img_path": "0.jpg",
                "question": "Is it blurry?",
                "candidates": ["Yes", "No"],
                "correct_ans": "No",
                "type": 0,
                "concern": 0,
            },
            {
                "img_path": "1.jpg",
                "question": "What is wrong?",
                "candidates": ["noise", "blur", "none"],
                "correct_ans": "noise",
                "type": 1,
                "concern": 2,
            },
            {
                "img_path": "2.jpg",
                "question": "Bad?",
                "candidates": ["Yes", "No"],
                "correct_ans": "Maybe",
                "type": 0,
                "concern": 0,
            },
        ],
    )
    examples = qbench.load(tmp_path)
    assert [(e.question_id, e.answer) for e in examples] == [("0", "B"), ("1", "A")]
    assert examples[0].image == tmp_path / "images_llvisionqa" / "0.jpg"
    assert qbench.prompt(examples[0]) == f"Is it blurry?\nA. Yes\nB. No{LETTER}"
    assert problem_lines(examples) == [
        f"{tmp_path / 'llvisionqa_dev.json'}:0: question 2: correct_ans 'Maybe' is not one of its candidates"
    ]
    # 0 right (B), 1 wrong (blur = B for A): 50%; per type and concern 100 / 0
    scores = qbench.score({"0": "B", "1": "blur"}, list(examples))
    assert scores == {
        "accuracy": 50.0,
        "types": {"what": 0.0, "yes-or-no": 100.0},
        "concerns": {"distortion": 100.0, "in-context distortion": 0.0},
    }


def test_gqa_exact_match_after_normalisation(tmp_path):
    write_json(
        tmp_path / "data" / "testdev_balanced_questions.json",
        {
            "201": {
                "imageId": "n1",
                "question": "Is it overcast?",
                "answer": "yes",
                "types": {"structural": "verify", "semantic": "global"},
            },
            "202": {
                "imageId": "n1",
                "question": "What color is the car?",
                "answer": "blue",
                "types": {"structural": "query", "semantic": "attr"},
            },
            "203": {"imageId": "n2", "question": "Who is staring?"},  # no answer
        },
    )
    examples = gqa.load(tmp_path)
    assert [e.question_id for e in examples] == ["201", "202"]
    assert examples[0].image == tmp_path / "data" / "images" / "n1.jpg"
    assert gqa.prompt(examples[0]) == f"Is it overcast?{SHORT}"
    assert problem_lines(examples) == [
        f"{tmp_path / 'data' / 'testdev_balanced_questions.json'}:0: question 203: no answer"
    ]
    # "Yes." -> "yes" right; "red" != "blue" wrong: 50%
    scores = gqa.score({"201": "Yes.", "202": "red"}, list(examples))
    assert scores == {
        "accuracy": 50.0,
        "structural": {"query": 0.0, "verify": 100.0},
        "semantic": {"attr": 0.0, "global": 100.0},
    }


# --- HallusionBench ------------------------------------------------------------------------------------------


def test_hallusionbench_aacc_facc_qacc(tmp_path):
    def record(category, set_id, figure_id, answer, visual_input="1", question_id="0"):
        filename = None if visual_input == "0" else f"./{category}/chart/{set_id}_{figure_id}.png"
        return {
            "category": category, "subcategory": "chart", "visual_input": visual_input, "set_id": set_id,
            "figure_id": figure_id, "question_id": question_id, "question": f"Q {category} {set_id} {figure_id}?",
            "gt_answer": answer, "filename": filename,
        }  # fmt: skip

    records = [
        record("VD", "0", "0", "1"),
        record("VD", "0", "1", "0", visual_input="2"),
        record("VS", "1", "0", "1", visual_input="0"),  # asked without its figure
        record("VS", "1", "1", "0"),
        record("VS", "2", "1", "7"),  # bad answer
    ]
    write_json(tmp_path / "HallusionBench.json", records)
    examples = hallusionbench.load(tmp_path)
    assert [e.question_id for e in examples] == [
        "VD_chart_0_0_0",
        "VD_chart_0_1_0",
        "VS_chart_1_0_0",
        "VS_chart_1_1_0",
    ]
    assert examples[0].image == tmp_path / "hallusion_bench" / "VD" / "chart" / "0_0.png"
    assert examples[2].image is None
    assert hallusionbench.prompt(examples[0]) == "Q VD 0 0?"
    assert problem_lines(examples) == [
        f"{tmp_path / 'HallusionBench.json'}:0: question VS_chart_2_1_0: gt_answer '7' is not '0' or '1'"
    ]
    # right, wrong ("Yes" for no), right (uncertain, VS without figure), right
    answers = ["Yes", "Yes", "I cannot tell", "No, it is not"]
    scores = hallusionbench.score({e.question_id: a for e, a in zip(examples, answers)}, list(examples))
    assert scores["aAcc"] == pytest.approx(75.0)  # 3 of 4
    assert scores["fAcc"] == pytest.approx(200 / 3)  # figures VD 0_0 right, VD 0_1 wrong, VS 1_1 right
    assert scores["qAcc"] == pytest.approx(50.0)  # question VD/0/0: right + wrong; VS/1/0: right + right
    assert scores["aAcc_figure"] == pytest.approx(200 / 3)  # the three with a figure: 2 right
    assert scores["categories"] == pytest.approx({"VD": 50.0, "VS": 100.0})


# --- ShapesWorld ---------------------------------------------------------------------------------------------


def test_shapesworld_reuses_the_worlds_scoring_rule(tmp_path):
    world = tmp_path / "world"
    write_jsonl(
        world / "questions.jsonl",
        [
            {
                "question_id": "1-000000-0",
                "image": "images/1-000000.png",
                "text": "Is there a red circle in the image?",
                "category": "existence",
                "answer": "yes",
            },
            {
                "question_id": "1-000000-1",
                "image": "images/1-000000.png",
                "text": "How many squares are there?",
                "category": "count",
                "answer": 2,
            },
            {
                "question_id": "1-000000-2",
                "image": "images/1-000000.png",
                "text": "What word is written on the sign?",
                "category": "ocr",
                "answer": "GZAC",
            },
            {
                "question_id": "1-000000-3",
                "image": "images/1-000000.png",
                "text": "Is it?",
            },  # line 4: no answer
        ],
    )
    examples = shapesworld.load(world)
    assert [e.question_id for e in examples] == ["1-000000-0", "1-000000-1", "1-000000-2"]
    assert examples[0].image == world / "images" / "1-000000.png"
    assert shapesworld.prompt(examples[0]) == "Is there a red circle in the image?"
    assert problem_lines(examples) == [f"{world / 'questions.jsonl'}:4: no answer (non-empty strings needed)"]
    # " Yes. " matches yes; "3" is not 2; "gzac" matches GZAC (case): 2 of 3
    scores = shapesworld.score(
        {"1-000000-0": " Yes. ", "1-000000-1": "3", "1-000000-2": "gzac"}, list(examples)
    )
    assert scores["accuracy"] == pytest.approx(200 / 3)
    assert scores["categories"] == {"existence": 100.0, "count": 0.0, "ocr": 100.0}
    assert [e.question_id for e in shapesworld.load(world / "questions.jsonl")] == [
        e.question_id for e in examples
    ]


# --- common: predictions and the scoring wrapper -------------------------------------------------------------


def test_read_predictions_reports_bad_lines_and_keeps_the_first_answer(tmp_path):
    path = write_jsonl(
        tmp_path / "answers.jsonl",
        [
            {"question_id": 1, "text": "yes", "prompt": "ignored"},
            {"question_id": "2", "text": "no"},
            {"question_id": "2", "text": "yes"},  # line 3: duplicated
            {"text": "orphan"},  # line 4: no id
            {"question_id": "3", "text": 7},  # line 5: not a string
            "{not json",  # line 6
            "[1, 2]",  # line 7: not an object
        ],
    )
    predictions, problems = read_predictions(path)
    assert predictions == {"1": "yes", "2": "no"}
    assert [str(p) for p in problems] == [
        f"{path}:3: question 2: duplicated id (the first answer is kept)",
        f"{path}:4: no question_id",
        f"{path}:5: question 3: the answer 'text' is int, not a string",
        f"{path}:6: malformed JSON (Expecting property name enclosed in double quotes)",
        f"{path}:7: not a JSON object",
    ]


def test_score_predictions_reports_unknown_and_missing_ids_and_strict_raises(tmp_path):
    examples = pope.load(pope_fixture(tmp_path))  # 7 examples and 3 problems of its own
    answers = {"1": "yes", "2": "yes", "3": "yes", "4": "no", "5": "no", "10000001": "yes", "999": "yes"}
    result = score_predictions(pope, answers, examples, source="answers.jsonl")
    # 10000002 has no answer and is left out: random split scores one question (yes/yes)
    assert result["scored"] == 6 and result["splits"]["random"]["accuracy"] == 100.0
    assert result["splits"]["adversarial"]["accuracy"] == 100.0
    assert "answers.jsonl: question 999: unknown id (not in the benchmark)" in result["problems"]
    assert "answers.jsonl: question 10000002: no prediction" in result["problems"]
    assert result["excluded"] == len(result["problems"]) == 3 + 2
    with pytest.raises(ValueError, match=r"malformed JSON.*--strict; 5 problem\(s\) in all"):
        score_predictions(pope, answers, examples, strict=True)


# --- LLaVA-1.5's answer files, read as they are --------------------------------------------------------------


def llava_answer(question_id: object, prompt: str, text: str, **extra: object) -> dict[str, object]:
    """A row as LLaVA-1.5's ``model_vqa_loader`` writes it (``model_vqa_mmbench`` adds ``round_id`` etc.)."""
    return {
        "question_id": question_id,
        "prompt": prompt,
        "text": text,
        "answer_id": f"a{len(prompt)}",
        "model_id": "llava-v1.5-13b",
        "metadata": {},
        **extra,
    }


def test_mme_llava_answer_file_with_repeated_image_ids_scores_like_the_harness_file(tmp_path):
    examples = mme.load(mme_fixture(tmp_path))
    ids = [e.question_id for e in examples]
    answers = ["Yes", "Yes", "yes", "No, it is not.", "Yes", "No", "Yes", "Maybe"]
    harness = write_jsonl(
        tmp_path / "harness.jsonl", [{"question_id": i, "text": a} for i, a in zip(ids, answers)]
    )
    # LLaVA's rows name the image (twice each) and carry the question file's text as the prompt; written here
    # with each image's two questions swapped, so only the prompt can tell them apart
    rows = [llava_answer(e.meta["image_id"], f"{e.question}{SHORT}", a) for e, a in zip(examples, answers)]
    llava = write_jsonl(tmp_path / "llava.jsonl", [rows[i ^ 1] for i in range(len(rows))])
    assert read_predictions(harness, examples) == read_predictions(
        harness
    )  # the harness's own ids still work
    predictions, problems = read_predictions(llava, examples)
    assert problems == [] and predictions == dict(zip(ids, answers))
    scores = score_predictions(mme, predictions, examples, problems, source=str(llava))
    # as in test_mme_scores_acc_and_acc_plus_per_subtask: OCR acc 3/4 = 75 and acc+ 1/2 = 50 -> 125;
    # celebrity 100 + 100 = 200; code_reasoning 1 of 2 right, the pair not both -> 50 + 0 = 50
    assert scores["subtasks"]["OCR"] == pytest.approx({"acc": 75.0, "acc_plus": 50.0, "score": 125.0})
    assert scores["subtasks"]["code_reasoning"] == pytest.approx(
        {"acc": 50.0, "acc_plus": 0.0, "score": 50.0}
    )
    # perception 125 + 200 = 325, cognition 50, total 375; only the question file's 3 bad lines excluded
    assert scores["perception"] == pytest.approx(325.0) and scores["total"] == pytest.approx(375.0)
    assert scores["scored"] == 8 and scores["excluded"] == 3
    own, own_problems = read_predictions(harness, examples)
    assert scores == score_predictions(mme, own, examples, own_problems, source=str(llava))
    # without the examples the image ids are all there is: each image's second row is a repeat
    plain, repeats = read_predictions(llava)
    assert len(plain) == 4 and len(repeats) == 4


def textvqa_llava_fixture(root: Path) -> list[dict[str, object]]:
    """LLaVA's question file (ids are image ids) and the official annotations; the question file's rows."""
    ocr = "\nReference OCR token: COCA, COLA"
    rows = [
        {"question_id": "img1", "image": "img1.jpg", "text": f"What brand is it?{ocr}{SHORT}"},
        {"question_id": "img1", "image": "img1.jpg", "text": f"How many cans?{ocr}{SHORT}"},
        # the same question twice on one image (two annotations): told apart only by their order
        {"question_id": "img2", "image": "img2.jpg", "text": f"What does it say?{SHORT}"},
        {"question_id": "img2", "image": "img2.jpg", "text": f"What does it say?{SHORT}"},
    ]
    write_jsonl(root / "llava_textvqa_val_v051_ocr.jsonl", rows)
    data = [
        {
            "question_id": 101,
            "image_id": "img1",
            "question": "What brand is it?",
            "answers": ["coca cola"] * 2 + ["pepsi"] * 8,
        },
        {"question_id": 102, "image_id": "img1", "question": "How many cans?", "answers": ["two"] * 10},
        {"question_id": 201, "image_id": "img2", "question": "What does it say?", "answers": ["stop"] * 10},
        {"question_id": 202, "image_id": "img2", "question": "What does it say?", "answers": ["go"] * 10},
    ]
    write_json(root / "TextVQA_0.5.1_val.json", {"data": data})
    return rows


def test_textvqa_llava_answer_file_with_image_ids_scores_like_the_harness_file(tmp_path):
    rows = textvqa_llava_fixture(tmp_path)
    examples = textvqa.load(tmp_path)
    assert [e.question_id for e in examples] == ["101", "102", "201", "202"]
    answers = ["Coca-Cola.", "2", "Stop", "stop"]
    llava = write_jsonl(
        tmp_path / "llava.jsonl",
        [llava_answer(r["question_id"], r["text"], a) for r, a in zip(rows, answers)]
        + [llava_answer("img2", rows[3]["text"], "go")],  # line 5: a third answer to a question asked twice
    )
    harness = write_jsonl(
        tmp_path / "harness.jsonl",
        [{"question_id": int(e.question_id), "text": a} for e, a in zip(examples, answers)],
    )
    predictions, problems = read_predictions(llava, examples)
    assert predictions == {"101": "Coca-Cola.", "102": "2", "201": "Stop", "202": "stop"}
    assert [str(p) for p in problems] == [
        f"{llava}:5: question img2: answered again (same prompt; the first answer is kept)"
    ]
    assert read_predictions(harness, examples) == (predictions, [])
    scores = score_predictions(textvqa, predictions, examples, problems, source=str(llava))
    # 101: 0.6 (see test_textvqa_soft_accuracy_...); 102: "2" = "two", 1.0; 201: "stop" by all ten, 1.0;
    # 202: "stop" where all ten said "go", 0.0 -> (0.6 + 1 + 1 + 0) / 4 = 65%
    assert scores["accuracy"] == pytest.approx(65.0)
    assert scores["scored"] == 4 and scores["excluded"] == 1
    assert score_predictions(textvqa, predictions, examples)["accuracy"] == scores["accuracy"]


def test_mmbench_llava_all_rounds_answer_file_names_rotations_by_round(tmp_path):
    image = base64.b64encode(b"\xff\xd8jpeg bytes").decode()
    tsv = write_tsv(
        tmp_path / "once.tsv",
        [
            ["17", "Which pet?", "", "cat", "dog", "fish", "", "B", "pets", image, ""],
            ["18", "Which toy?", "", "ball", "kite", "", "", "A", "toys", image, ""],
        ],
    )
    examples = mmbench.load(tsv)
    # model_vqa_mmbench --all-rounds: one row per rotation, all with the index as question_id (an integer)
    rows = [
        llava_answer(17, "Which pet?\nA. cat\nB. dog\nC. fish", "B", round_id=0),
        llava_answer(17, "Which pet?\nA. dog\nB. fish\nC. cat", "A", round_id=1),
        llava_answer(17, "Which pet?\nA. fish\nB. cat\nC. dog", "C", round_id=2),
        llava_answer(18, "Which toy?\nA. ball\nB. kite", "A", round_id=0),
        llava_answer(18, "Which toy?\nA. kite\nB. ball", "A", round_id=1),
    ]
    llava = write_jsonl(tmp_path / "llava.jsonl", rows)
    predictions, problems = read_predictions(llava, examples)
    assert problems == []
    assert predictions == {"17-r0": "B", "17-r1": "A", "17-r2": "C", "18-r0": "A", "18-r1": "A"}
    scores = score_predictions(mmbench, predictions, examples, problems)
    # 17: dog is B, A, C in rounds 0-2, all answered right; 18: ball is A then B, round 1 answered A (kite):
    # 1 of 2 questions right -> 50%
    assert scores["accuracy"] == pytest.approx(50.0) and scores["scored"] == 5


def test_llava_answer_rows_that_name_no_question_are_reported(tmp_path):
    examples = mme.load(mme_fixture(tmp_path))
    first, second = examples[0], examples[1]  # the two questions on OCR/0001.jpg
    llava = write_jsonl(
        tmp_path / "llava.jsonl",
        [
            llava_answer("OCR/0001.jpg", f"{first.question}{SHORT}", "Yes"),
            llava_answer("OCR/0001.jpg", f"{first.question}{SHORT}", "No"),  # line 2: answered again
            llava_answer("OCR/0001.jpg", f"Is the word QQQ?{SHORT}", "No"),  # line 3: no such question
            {"question_id": "OCR/0001.jpg", "text": "No"},  # line 4: no prompt to tell the two apart
            llava_answer("OCR/0777.jpg", f"Is it there?{SHORT}", "Yes"),  # line 5: an image of no question
            llava_answer("OCR/0001.jpg", f"{second.question}{SHORT}", "No"),
        ],
    )
    predictions, problems = read_predictions(llava, examples)
    assert predictions == {first.question_id: "Yes", "OCR/0777.jpg": "Yes", second.question_id: "No"}
    assert [str(p) for p in problems] == [
        f"{llava}:2: question OCR/0001.jpg: answered again (same prompt; the first answer is kept)",
        f"{llava}:3: question OCR/0001.jpg: no question with this id has this prompt",
        f"{llava}:4: question OCR/0001.jpg: no prompt to tell which question of this id it answers",
    ]
    scores = score_predictions(mme, predictions, examples, problems, source="llava.jsonl")
    assert "llava.jsonl: question OCR/0777.jpg: unknown id (not in the benchmark)" in scores["problems"]
    # OCR/0001.jpg both right (yes, no): acc 100, acc+ 100; the 6 other questions have no prediction
    assert scores["subtasks"] == {"OCR": pytest.approx({"acc": 100.0, "acc_plus": 100.0, "score": 200.0})}
    # excluded: 3 bad question-file lines + 3 bad rows + 1 unknown id + 6 questions without an answer
    assert scores["scored"] == 2 and scores["excluded"] == 3 + 3 + 1 + 6
    with pytest.raises(ValueError, match="--strict"):
        score_predictions(mme, predictions, examples, problems, strict=True)
