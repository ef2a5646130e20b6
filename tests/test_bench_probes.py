"""bench/aux_match_probe.py's synthetic tasks (every answer follows from the aux text the sample carries) and
bench/aux_only.py's blank canvas, position split and run on the bundled model."""

import importlib.util
import json
import random
import re
from pathlib import Path

import pytest

from moai.model.configuration import CLIP_MEAN
from moai.train.curves import Plateau, find_plateau, plateau_level, read_losses, window_means
from moai.worlds.shapes import COLOURS, KINDS


def load_bench(name: str):
    """A script of bench/ as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(
        name, Path(__file__).resolve().parent.parent / "bench" / f"{name}.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


probe = load_bench("aux_match_probe")


def parse(aux: str) -> tuple[list[tuple[str, str]], str, list[str], list[tuple[int, ...]]]:
    """Objects, sign word, relations and centres (empty when the aux has none) of a probe's aux text."""
    match = re.fullmatch(r"(?:objects: (.+?)\.)?(?: relations: (.+)\.)? ?text: ([A-Z]+)\.", aux)
    assert match, aux
    assert match.group(1) or not match.group(2), aux  # relations only after objects
    items = [item.split(" ") for item in match.group(1).split(", ")] if match.group(1) else []
    objects = [tuple(item[:2]) for item in items]
    centres = [tuple(int(v) for v in item[2:]) for item in items]  # the xy task's, in percent
    assert all(len(c) == 0 for c in centres) or all(
        len(c) == 2 and all(0 <= v < 100 for v in c) for c in centres
    )
    assert all(c in COLOURS and k in KINDS for c, k in objects)
    return objects, match.group(3), match.group(2).split(", ") if match.group(2) else [], centres


YES_NO_TASKS = ("cexist", "existence", "ocr", "ocrrel", "position", "relword", "xy")


@pytest.mark.parametrize("task", probe.TASKS)
def test_every_answer_follows_from_its_aux(task):
    rng = random.Random(0)
    answers = []
    for _ in range(300):
        aux, question, answer = probe.sample(rng, task)
        objects, word, relations, centres = parse(aux)
        assert not relations or task in ("position", "relword", "ocrrel")
        assert any(centres) == (task == "xy")
        answers.append(answer)
        if task == "copy":
            assert objects == [(answer, "circle")] and question == "What color is the circle?"
        elif task == "list":
            assert question == "What objects are there?" and answer == ", ".join(
                f"{c} {k}" for c, k in objects
            )
        elif task == "cexist":
            colour = re.fullmatch(r"Is there a (\w+) object in the image\?", question).group(1)
            assert answer == ("yes" if colour in {c for c, _ in objects} else "no")
        elif task == "existence":
            colour, kind = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", question).groups()
            assert answer == ("yes" if (colour, kind) in objects else "no")
        elif task == "colour":
            kind = re.fullmatch(r"What color is the (\w+)\?", question).group(1)
            assert [c for c, k in objects if k == kind] == [answer]  # the kind is unique
        elif task == "count":
            colour = re.fullmatch(r"How many (\w+) objects are there\?", question).group(1)
            assert answer == str(sum(c == colour for c, _ in objects))
        elif task in ("word", "wordtext"):
            assert question == "What word is written on the sign?" and answer == word
            assert bool(objects) == (task == "word")  # wordtext: the OCR text alone
        elif task in ("ocr", "ocrrel"):
            asked = re.fullmatch(r"Is the word ([A-Z]+) written in the image\?", question).group(1)
            assert answer == ("yes" if asked == word else "no") and len(asked) == len(word)
        elif task in ("position", "relword", "xy"):
            a, where, b = re.fullmatch(
                r"Is the (\w+ \w+) (to the left of|above) the (\w+ \w+)\?", question
            ).groups()
            assert len(set(objects)) == len(objects) and a != b  # unique referents
            said, opposite = ("left of", "right of") if where != "above" else ("above", "below")
            holds = {f"{a} is {said} {b}", f"{b} is {opposite} {a}"}  # what makes the answer yes
            denies = {f"{a} is {opposite} {b}", f"{b} is {said} {a}"}
            if task == "xy":  # the centres, in percent, tell the answer
                axis = 0 if where != "above" else 1
                ca, cb = centres[objects.index(tuple(a.split()))], centres[objects.index(tuple(b.split()))]
                assert (
                    not relations
                    and ca[axis] != cb[axis]
                    and answer == ("yes" if ca[axis] < cb[axis] else "no")
                )
            elif task == "relword":  # the asked relation alone, its subject first
                assert relations == [f"{a} is {said if answer == 'yes' else opposite} {b}"]
            else:
                assert holds <= set(relations) if answer == "yes" else denies <= set(relations)
    if task == "ocrrel":  # the recipe-like layout: relations before the word in most samples
        assert sum(bool(parse(probe.sample(random.Random(i), task)[0])[2]) for i in range(100)) > 80
    if task in YES_NO_TASKS:  # both answers, neither rare
        assert 0.3 < answers.count("yes") / len(answers) < 0.7
    with pytest.raises(ValueError, match="must be one of"):
        probe.sample(rng, "size")


aux_only = load_bench("aux_only")


def test_aux_only_asks_about_a_canvas_of_zero_pixel_values_and_prints_both_rows(tmp_path, capsys):
    from moai.engine import Engine
    from moai.worlds.shapes import write_world

    engine = Engine.load(None)  # the bundled model
    pixels = engine.processor.build_batch(
        [engine.processor.encode_turns((("<image>\nx", "y"),))], [aux_only.mean_canvas(engine)]
    )["pixel_values"]
    std = min(engine.processor.image_std)
    assert pixels.abs().max() <= 0.5 / 255 / std + 1e-6  # zero up to the 8-bit rounding of the mean colour
    assert aux_only.first_word(" yes 4 4") == "yes" and aux_only.first_word("") == ""
    write_world(tmp_path, scenes=3, seed=31)
    truth = [json.loads(line) for line in (tmp_path / "scenes.jsonl").read_text().splitlines()]
    for n in range(1, 7):  # --shapes N: the scenes with N shapes, as the ground truth counts them
        expected = {f"images/{t['id']}.png" for t in truth if len(t["shapes"]) == n}
        assert aux_only.scenes_with(tmp_path, n) == expected
    assert aux_only.main(["--world", str(tmp_path), "--limit", "6"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "image blanked, 6 questions" in lines[0]
    assert [line.split()[:2] for line in lines[2:]] == [["aux", "on"], ["no", "aux"]]


def test_relation_in_aux_finds_the_asked_pair_in_either_order_and_predicate():
    aux = "objects: red circle, blue square, green triangle. relations: blue square is right of red circle."
    left = "Is the red circle to the left of the blue square?"
    assert aux_only.relation_in_aux(left, aux) is True
    assert aux_only.relation_in_aux("Is the blue square to the left of the red circle?", aux) is True
    assert aux_only.relation_in_aux("Is the red circle above the blue square?", aux) is False  # other axis
    assert aux_only.relation_in_aux("Is the red circle to the left of the green triangle?", aux) is False
    assert aux_only.relation_in_aux("How many circles are there?", aux) is None


def test_objects_range_bounds_every_task_and_bad_curriculum_flags_are_refused():
    rng = random.Random(0)
    for task in probe.TASKS:
        for low, high in ((2, 2), (3, 4)):
            for _ in range(30):
                objects = parse(probe.sample(rng, task, (low, high))[0])[0]
                if task == "copy":
                    assert len(objects) == 1  # its one circle, whatever the range
                elif task == "wordtext":
                    assert objects == []  # the OCR text alone
                elif task == "colour":
                    assert 1 <= len(objects) <= high  # the asked kind's others taken out
                else:
                    assert low <= len(objects) <= high
    for argv in (
        ["--objects", "3"],
        ["--objects", "0:2"],
        ["--objects", "1:2", "--task", "xy"],
        ["--save", "x"],
    ):
        with pytest.raises(SystemExit):
            probe.main(argv)


def test_a_fresh_llm_of_another_size_loads_and_trains_with_the_aux_in_its_prompt(tmp_path):
    import torch

    from moai.model.modeling import MoAIForConditionalGeneration
    from moai.model.processing import MoAIProcessor

    out = probe.save_fresh_model(64, 2, 0, tmp_path / "fresh")
    model, processor = MoAIForConditionalGeneration.from_pretrained(out), MoAIProcessor.from_pretrained(out)
    text = model.config.text_config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (64, 2, 2)
    aux, question, answer = probe.sample(random.Random(0), "xy")
    rows = [processor.encode_turns(((f"<image>\n{aux} {question}", answer),))]
    canvas = probe.Image.new("RGB", (processor.image_size,) * 2)
    inputs = dict(processor.build_batch(rows, [canvas]))
    loss = model(**inputs).loss
    loss.backward()  # the probe's --in-prompt step: the whole path runs and trains
    assert torch.isfinite(loss) and model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_a_fresh_llm_takes_the_weights_recall_probe_saved(tmp_path):
    import torch

    from moai.model.modeling import MoAIForConditionalGeneration

    recall_module = load_bench("recall_probe")
    trained = recall_module.build("moai", 64, 2)  # the shapes preset with mixers, as recall_probe trains it
    torch.save(trained.state_dict(), tmp_path / "recall.pt")
    out = probe.save_fresh_model(64, 2, 1, tmp_path / "fresh", tmp_path / "recall.pt")
    model = MoAIForConditionalGeneration.from_pretrained(out)
    assert not any("moai" in k for k in model.state_dict())  # the base: the recall model's mixers left out
    for name, value in model.state_dict().items():
        assert torch.equal(value, trained.state_dict()[name]), name
    with pytest.raises(SystemExit):  # weights of another size: one line, no traceback
        probe.main(["--in-prompt", "--fresh-llm", "96:2", "--llm-weights", str(tmp_path / "recall.pt")])
    with pytest.raises(SystemExit):
        probe.main(["--llm-weights", str(tmp_path / "recall.pt")])  # without --fresh-llm


def test_word_pool_gives_the_training_sign_words_and_a_bad_pool_is_refused(capsys):
    rng = random.Random(0)
    for task in ("word", "wordtext", "ocr"):
        seen = {parse(probe.sample(rng, task, words=["ABC", "QRSTU"])[0])[1] for _ in range(60)}
        assert seen == {"ABC", "QRSTU"}
    with pytest.raises(SystemExit):
        probe.main(["--task", "wordtext", "--word-pool", "-1"])
    assert "--word-pool -1: must be >= 0" in capsys.readouterr().err


def test_word_tasks_are_scored_on_every_answer_token(tmp_path, capsys):
    out = probe.save_fresh_model(64, 4, 0, tmp_path / "base")  # 4 layers: step1.yaml mixes all four
    argv = [
        "--model",
        str(out),
        "--task",
        "wordtext,ocr",
        "--steps",
        "2",
        "--every",
        "2",
        "--batch-size",
        "4",
    ]
    assert probe.main([*argv, "--override", "mixer_scope=causal"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()[2:]]
    assert [row[0] for row in rows] == ["0", "2"]
    for row in rows:
        words, tokens = (float(v) for v in row[2].split("/"))  # whole words / answer tokens right, in %
        assert 0.0 <= words <= tokens <= 100.0
        assert "/" not in row[3] and 0.0 <= float(row[3]) <= 100.0  # a one-word task: the first token


signs = load_bench("sign_questions")


def test_sign_questions_follow_the_ground_truth_one_question_a_record(tmp_path, capsys):
    from moai.worlds.shapes import write_world

    write_world(tmp_path, scenes=12, seed=41)
    scenes = {f"images/{s.id}.png": s for s in signs.read_scenes(tmp_path)}
    assert any(not s.signs for s in scenes.values()) and any(s.signs for s in scenes.values())
    out = tmp_path / "signs.json"
    assert signs.main(["write", "--world", str(tmp_path), "--out", str(out), "--draws", "2"]) == 0
    records = json.loads(out.read_text())
    assert len({r["id"] for r in records}) == len(records)
    absent: dict[str, set[str]] = {}
    for record in records:
        (human, gpt) = record["conversations"]
        assert human["value"].startswith("<image>\n") and gpt["from"] == "gpt"
        scene, question, answer = scenes[record["image"]], human["value"][len("<image>\n") :], gpt["value"]
        words = {sign.word for sign in scene.signs}
        if question == "What word is written on the sign?":
            assert len(scene.signs) == 1 and answer == scene.signs[0].word
            continue
        word = re.fullmatch(r"Is the word ([A-Z]+) written in the image\?", question).group(1)
        assert answer == ("yes" if word in words else "no")
        if answer == "no":
            absent.setdefault(record["id"].split("-sign")[1][0], set()).add(word)
    # per draw: every sign word asked, and as many absent words (one for a scene without a sign)
    for scene in scenes.values():
        mine = [r for r in records if r["image"] == f"images/{scene.id}.png"]
        yes = sum(r["conversations"][1]["value"] == "yes" for r in mine)
        no = sum(r["conversations"][1]["value"] == "no" for r in mine)
        assert yes == 2 * len(scene.signs) and no == 2 * max(1, len(scene.signs))
    assert absent["0"] != absent["1"]  # each draw asks absent words of its own
    assert f"wrote {len(records)} questions" in capsys.readouterr().out
    signs.main(["write", "--world", str(tmp_path), "--out", str(out), "--signs-only", "--no-word-question"])
    records = json.loads(out.read_text())
    assert records and all(scenes[r["image"]].signs for r in records)
    assert {r["conversations"][1]["value"] for r in records} == {"yes", "no"}
    with pytest.raises(SystemExit):
        signs.main(["write", "--world", str(tmp_path / "nowhere"), "--out", str(out)])


@pytest.mark.parametrize("negatives", ["same-length", "near"])
def test_sign_questions_hard_negatives_look_like_the_sign_word(tmp_path, negatives):
    from moai.worlds.shapes import write_world

    write_world(tmp_path, scenes=12, seed=41)
    scenes = {f"images/{s.id}.png": s for s in signs.read_scenes(tmp_path)}
    out = tmp_path / "signs.json"
    argv = ["write", "--world", str(tmp_path), "--out", str(out), "--negatives", negatives, "--draws", "3"]
    assert signs.main(argv) == 0
    negatives_seen = 0
    for record in json.loads(out.read_text()):
        (human, gpt) = record["conversations"]
        match = re.fullmatch(r"<image>\nIs the word ([A-Z]+) written in the image\?", human["value"])
        if match is None or gpt["value"] != "no":
            continue
        word, words = match.group(1), [sign.word for sign in scenes[record["image"]].signs]
        assert word not in words
        if not words:  # no sign to look like: a word of any length
            continue
        negatives_seen += 1
        assert any(len(word) == len(w) for w in words)
        if negatives == "near":  # one letter changed
            assert any(sum(a != b for a, b in zip(word, w)) == 1 for w in words if len(w) == len(word))
    assert negatives_seen > 0


def test_sign_questions_score_runs_the_model_on_each_ocr_template(tmp_path, capsys):
    from moai.worlds.shapes import write_world

    write_world(tmp_path, scenes=10, seed=43)
    table = signs.score(None, tmp_path, show=2)  # the bundled model
    asked = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    ocr = [q for q in asked if q["category"] == "ocr"]
    assert list(table) == ["own aux", "ocr alone", "no aux"]
    words = {f"images/{s.id}.png": [sign.word for sign in s.signs] for s in signs.read_scenes(tmp_path)}
    assert set(table["own aux"]) == {signs.template(q, words[q["image"]]) for q in ocr}
    for row in table.values():
        assert all(0.0 <= v <= 100.0 for v in row.values())
    lines = capsys.readouterr().out.splitlines()
    shown = [q["answer"] for q in ocr if q["text"] == "What word is written on the sign?"][:2]
    assert [line.split(":")[0] for line in lines[: len(shown)]] == [f"sign word {w}" for w in shown]
    assert all(" own aux " in line and " no aux " in line for line in lines[: len(shown)])
    lines = lines[len(shown) :]
    assert [line.split()[0] for line in lines[1:4]] == ["own", "ocr", "no"]


def test_sign_questions_score_blank_asks_about_a_mean_canvas_with_the_images_own_perception(
    tmp_path, monkeypatch
):
    from moai.engine import Engine
    from moai.worlds.shapes import write_world

    write_world(tmp_path, scenes=6, seed=44)
    asked, answer = [], Engine.answer

    def spy(self, images, questions, **kwargs):
        asked.append((images, kwargs.get("perceptions")))
        return answer(self, images, questions, **kwargs)

    monkeypatch.setattr(Engine, "answer", spy)
    table = signs.score(None, tmp_path, limit=4, blank=True)
    assert list(table) == ["own aux", "ocr alone", "no aux"] and len(asked) == 3
    for images, perceptions in asked:
        assert len(images) == len(perceptions) == 4
        for image in images:  # one colour, pixel values zero after the normaliser
            assert image.getextrema() == tuple((round(255 * m),) * 2 for m in CLIP_MEAN)
    from moai.recipes.shapesworld import read_questions

    questions = [q for q in read_questions(tmp_path) if q["category"] == "ocr"][:4]
    scenes = {f"images/{s.id}.png": s for s in signs.read_scenes(tmp_path)}
    for question, perception in zip(questions, asked[0][1]):  # each question's own scene, not the canvas
        found = [line.text for line in perception.text_lines]
        assert len(found) == len(scenes[question["image"]].signs)
        assert len(perception.detections) == len(scenes[question["image"]].shapes)


def test_sign_questions_template_splits_the_absent_words_by_length():
    def asked(word: str, answer: str) -> dict:
        return {"text": f"Is the word {word} written in the image?", "answer": answer}

    assert signs.template({"text": "What word is written on the sign?", "answer": "ABC"}) == "sign word"
    assert signs.template(asked("ABC", "yes"), ["ABC"]) == "word present, yes"
    assert signs.template(asked("XYZ", "no"), ["ABC", "DEFGH"]) == "no, same length"
    assert signs.template(asked("XYZW", "no"), ["ABC", "DEFGH"]) == "no, other length"
    assert signs.template(asked("XYZ", "no"), []) == "no, other length"  # no sign in the scene


recall = load_bench("recall_probe")


def test_recall_samples_ask_keys_whose_values_stand_beside_them_earlier():
    rng = random.Random(0)
    for pairs in (1, 4, 8):
        for queries in (1, min(3, pairs)):
            tokens, labels = recall.sample(rng, pairs, queries, keys=40, values=12)
            assert len(tokens) == len(labels) == 2 * pairs + 1 + 2 * queries
            context, asked = tokens[: 2 * pairs], tokens[2 * pairs + 1 :]
            keys, values = context[::2], context[1::2]
            assert len(set(keys)) == pairs  # distinct keys
            assert tokens[2 * pairs] == recall.FIRST_ID  # the separator
            assert all(recall.FIRST_ID < k <= recall.FIRST_ID + 40 for k in keys)
            assert all(recall.FIRST_ID + 40 < v <= recall.FIRST_ID + 52 for v in values)
            for key, value in zip(asked[::2], asked[1::2]):
                assert value == values[keys.index(key)]  # the answer is the value that followed the key
            assert len(set(asked[::2])) == queries
            scored = [(i, t) for i, (t, lab) in enumerate(zip(tokens, labels)) if lab != -100]
            assert [i for i, _ in scored] == list(range(2 * pairs + 2, len(tokens), 2))
            assert all(labels[i] == t for i, t in scored)


def test_recall_samples_from_a_shared_pool_use_one_pool_for_keys_and_values():
    rng = random.Random(1)
    seen_keys, seen_values = set(), set()
    for _ in range(300):
        tokens, labels = recall.sample(rng, 3, 2, keys=40, values=12, shared=20)
        keys, values = tokens[:6:2], tokens[1:6:2]
        assert all(recall.FIRST_ID < t <= recall.FIRST_ID + 20 for t in keys + values)
        assert not set(values) & set(keys)  # a value is never one of the sample's keys
        asked = tokens[7:]
        for key, value in zip(asked[::2], asked[1::2]):
            assert value == values[keys.index(key)]
        seen_keys |= set(keys)
        seen_values |= set(values)
    assert seen_keys == seen_values == set(range(recall.FIRST_ID + 1, recall.FIRST_ID + 21))


def test_recall_no_lookup_baseline_guesses_the_most_frequent_value_not_yet_asked():
    sep, (k1, k2, k3), (a, b) = recall.FIRST_ID, (11, 12, 13), (60, 61)
    tokens = [k1, a, k2, a, k3, b, sep, k3, b, k1, a]  # a twice, b once: guess a, right at k1, wrong at k3
    labels = [-100] * 8 + [b, -100, a]
    assert recall.no_lookup_accuracy([(tokens, labels)]) == 50.0
    # every value asked: a, a, then b is all that is left
    tokens = [k1, a, k2, a, k3, b, sep] + [k1, a, k2, a, k3, b]
    assert recall.no_lookup_accuracy([(tokens, [-100] * 8 + [a, -100, a, -100, b])]) == 100.0
    lone = [recall.sample(random.Random(i), 1, 1, 40, 12) for i in range(20)]
    assert recall.no_lookup_accuracy(lone) == 100.0  # one pair: nothing to look up


def test_recall_probe_trains_both_decoders_and_a_lone_pair_is_learnt(capsys):
    for kind in ("moai", "llama"):  # one pair: the answer is the only value there, a copy the models learn
        args = ["--model", kind, "--width", "64", "--layers", "2", "--pairs", "1:1", "--steps", "150"]
        assert (
            recall.main([*args, "--every", "150", "--batch-size", "32", "--lr", "3e-3", "--warmup", "10"])
            == 0
        )
        lines = capsys.readouterr().out.splitlines()
        assert (
            lines[0].startswith(f"{kind} LLM 64 wide, 2 layers")
            and "chance 8.3 %, no lookup 100.0 %" in lines[0]
        )
        assert float(lines[2].split()[-1]) < 30 and float(lines[3].split()[2]) > 90, lines
    with pytest.raises(SystemExit):
        recall.main(["--pairs", "4:2"])
    with pytest.raises(SystemExit):
        recall.main(["--pairs", "4:8", "--shared", "8"])  # no room for a value beside eight keys


def test_base_probe_takes_the_llm_of_a_recall_model_and_keeps_its_own_tower(tmp_path):
    import torch

    from moai.model.modeling import MoAIForConditionalGeneration

    base_probe = load_bench("base_probe")
    torch.manual_seed(123)  # not the base config's seed: the two models' random towers differ
    trained = recall.build("moai", 128, 4)  # the shapes preset's LLM, as recall_probe trains it
    torch.save(trained.state_dict(), tmp_path / "recall.pt")
    count = base_probe.with_llm("shapes", tmp_path / "recall.pt", tmp_path / "start")
    model = MoAIForConditionalGeneration.from_pretrained(tmp_path / "start")
    mine, theirs = model.state_dict(), trained.state_dict()
    llm = [k for k in mine if k.startswith("model.language_model.") or k.startswith("lm_head.")]
    assert count == len(llm) > 0
    assert all(torch.equal(mine[k], theirs[k]) for k in llm)  # the LLM is the recall model's
    tower = [k for k in mine if k.startswith("model.vision_tower.")]
    assert tower and not any(torch.equal(mine[k], theirs[k]) for k in tower if mine[k].std() > 0)
    torch.save(recall.build("moai", 64, 2).state_dict(), tmp_path / "narrow.pt")
    with pytest.raises(ValueError, match="not an LLM of the starting model's shape"):
        base_probe.with_llm("shapes", tmp_path / "narrow.pt", tmp_path / "bad")


def test_sign_file_of_a_world_without_signs_is_refused_not_written_empty(tmp_path):
    from moai.worlds.shapes import generate_scene, write_world
    from moai.worlds.signs import write_sign_file

    seed = next(s for s in range(100) if not generate_scene(s, 0).signs)  # a one-scene world without a sign
    write_world(tmp_path, scenes=1, seed=seed)
    out = tmp_path / "signs.json"
    with pytest.raises(ValueError, match="no scene with a sign"):
        write_sign_file(tmp_path, out, signs_only=True)
    assert not out.exists()
    assert write_sign_file(tmp_path, out) == {"yes": 0, "no": 3, "sign word": 0}  # all scenes: absent words
    with pytest.raises(SystemExit):
        signs.main(["write", "--world", str(tmp_path), "--out", str(out), "--signs-only"])


def test_position_questions_write_a_shape_range_and_score_by_shape_count(tmp_path, capsys, monkeypatch):
    from moai.engine import DEFAULT_MODEL, Engine
    from moai.worlds.shapes import position_candidates, read_scenes, write_world

    positions = load_bench("position_questions")
    write_world(tmp_path / "w", scenes=12, seed=43)
    scenes = read_scenes(tmp_path / "w")
    for low, high in ((2, 2), (2, 6), (4, 5)):
        rows = positions.records(tmp_path / "w", (low, high))
        assert len(rows) == sum(len(position_candidates(s)) for s in scenes if low <= len(s.shapes) <= high)
    for bad in ("1:2", "3:2", "two"):
        monkeypatch.setattr(
            "sys.argv",
            ["position_questions.py", "write", "--world", str(tmp_path / "w"), "--out", "x", "--shapes", bad],
        )
        with pytest.raises(SystemExit) as exit_info:
            positions.main()
        assert exit_info.value.code == 2 and "--shapes" in capsys.readouterr().err
    tally = positions.score(Engine.load(DEFAULT_MODEL), tmp_path / "w")  # runs the bundled model
    asked = [json.loads(line) for line in (tmp_path / "w" / "questions.jsonl").read_text().splitlines()]
    shapes = {s.id: len(s.shapes) for s in scenes}
    expected = {}
    for q in asked:
        if q["category"] == "position":
            n = shapes[q["question_id"].rsplit("-", 1)[0]]
            expected[n] = expected.get(n, 0) + 1
    assert {n: t for n, (_c, t) in tally.items()} == expected
    assert all(0 <= c <= t for c, t in tally.values())
    assert "by shapes" in positions.report("model", tally)


image_slot = load_bench("image_slot")


def test_image_slot_asks_each_question_with_the_image_in_the_template_and_in_the_turn(tmp_path, monkeypatch):
    from moai.engine import Engine
    from moai.worlds.shapes import write_world

    write_world(tmp_path, scenes=8, seed=45)
    asked, answer = [], Engine.prepare

    def spy(self, images, questions, drop=(), *args, **kwargs):
        asked.append((list(questions), tuple(drop), images[0]))
        return answer(self, images, questions, drop, *args, **kwargs)

    monkeypatch.setattr(Engine, "prepare", spy)
    table = image_slot.ask(None, tmp_path)  # the bundled model
    questions = [json.loads(line) for line in (tmp_path / "questions.jsonl").read_text().splitlines()]
    texts = [q["text"] for q in questions]
    assert list(table) == ["template", "turn"]
    assert [t for batch, _, _ in asked[: len(asked) // 2] for t in batch] == texts
    assert [t for batch, _, _ in asked[len(asked) // 2 :] for t in batch] == [f"<image>\n{t}" for t in texts]
    assert set(table["template"]) == {q["category"] for q in questions} | {"overall"}
    # the two prompts differ, so the model is run twice and its answers may differ; both are scored
    assert all(0.0 <= v <= 100.0 for row in table.values() for v in row.values())

    asked.clear()
    words = image_slot.ask(None, tmp_path, sign_words=True, blank=True)
    sign_words = [q for q in questions if q["text"] == "What word is written on the sign?"]
    assert list(words["template"]) == ["sign word"] and sign_words
    assert all(drop == image_slot.OCR_ALONE for _, drop, _ in asked)
    assert all(image.getextrema() == tuple((round(255 * m),) * 2 for m in CLIP_MEAN) for _, _, image in asked)
    with pytest.raises(ValueError, match="no sign-word questions"):
        empty = tmp_path / "empty"
        empty.mkdir()
        (empty / "questions.jsonl").write_text(json.dumps({**questions[0], "text": "How many?"}) + "\n")
        image_slot.ask(None, empty, sign_words=True)


plateau = load_bench("plateau")


def write_run(run: Path, losses: list[float], log_every: int = 10, **config) -> Path:
    """A fake `moai train` run directory: metrics.jsonl with one row a ``log_every`` steps, and config.yaml."""
    run.mkdir(parents=True)
    rows = [{"step": (i + 1) * log_every, "loss": loss, "lr": 1e-3} for i, loss in enumerate(losses)]
    rows.insert(2, {"step": 25, "eval": 1.0})  # a row without a loss is not a training step's
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    (run / "config.yaml").write_text("".join(f"{k}: {v}\n" for k, v in config.items()))
    return run


def test_plateau_finds_the_first_window_below_a_fraction_of_the_first(tmp_path, capsys):
    stuck = [0.233, 0.229, 0.236, 0.231, 0.230, 0.232] * 4  # within 3 % of the first window throughout
    falling = [0.233, 0.229, 0.236, 0.231, 0.230, 0.232, 0.20, 0.17, 0.15, 0.12, 0.10, 0.09]
    losses = read_losses(write_run(tmp_path / "f", falling, model="runs/x/step1/final", seed=1))
    means = window_means(losses, window=30)
    assert [step for step, _ in means] == [30, 60, 90, 120]
    assert means[0][1] == pytest.approx((0.233 + 0.229 + 0.236) / 3)
    assert means[2][1] == pytest.approx((0.20 + 0.17 + 0.15) / 3)
    assert plateau_level(losses, window=30) == pytest.approx(0.233)  # the median of the first window's losses
    found = find_plateau(losses, window=30, below=0.8)
    assert found.means == means and found.level == pytest.approx(0.233) and found.left_at == 90
    assert find_plateau(losses, window=30, below=0.3).left_at is None
    assert find_plateau([], window=30, below=0.8) == Plateau([], None, None)
    # a first logged loss far above the chance loss (answers in another form at first) is no plateau: the chance
    # loss after it is not a fall
    transient = [(10, 2.29), (20, 0.259), (30, 0.226)] + [(10 * i, 0.232) for i in range(4, 13)]
    assert find_plateau(transient, 30).left_at is None
    with pytest.raises(ValueError, match="window 0"):
        window_means([(1, 0.2)], window=0)

    write_run(tmp_path / "s", stuck, model="runs/x/step1/final", image_slot="template", seed=2)
    assert plateau.main([str(tmp_path / "f"), str(tmp_path / "s"), "--window", "30"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].endswith("left the plateau by step 90")
    assert (
        out[2] == f"{tmp_path / 's'}: from x/step1, image_slot template, seed 2; left the plateau by step -"
    )
    assert len(out[3].split()) == 8  # 24 losses logged every 10 steps: 8 windows of 30 steps

    assert plateau.main([str(tmp_path / "missing")]) == 2
    assert "no metrics.jsonl, skipped" in capsys.readouterr().err


def test_sign_word_file_keeps_the_sign_word_question_alone_as_the_full_file_asks_it(tmp_path):
    from moai.worlds.shapes import generate_scene, read_scenes, sign_word_question, write_world
    from moai.worlds.signs import training_records, write_sign_file

    write_world(tmp_path, scenes=12, seed=41)
    scenes = read_scenes(tmp_path)
    full = training_records(scenes, 2, signs_only=True)
    words = training_records(scenes, 2, signs_only=True, words_only=True)
    asked = [r for r in full if r["conversations"][0]["value"].endswith(sign_word_question())]
    assert words and words == asked  # the same records, ids included (the sign-word question comes first)
    out = tmp_path / "words.json"
    assert (
        signs.main(["write", "--world", str(tmp_path), "--out", str(out), "--draws", "2", "--words-only"])
        == 0
    )
    assert json.loads(out.read_text()) == training_records(scenes, 2, words_only=True)
    with pytest.raises(SystemExit):
        signs.main(
            ["write", "--world", str(tmp_path), "--out", str(out), "--words-only", "--no-word-question"]
        )
    with pytest.raises(ValueError, match="needs word_question"):
        training_records(scenes, 2, word_question=False, words_only=True)
    seed = next(s for s in range(100) if len(generate_scene(s, 0).signs) != 1)  # no sign-word question
    write_world(tmp_path / "none", scenes=1, seed=seed)
    with pytest.raises(ValueError, match="no scene with exactly one sign"):
        write_sign_file(tmp_path / "none", tmp_path / "none.json", words_only=True)
    assert not (tmp_path / "none.json").exists()
