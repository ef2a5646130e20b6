"""The inference engine, `moai predict` and module dropout, on a randomly initialised `shapes` model.

The bundled model's own quality is checked in tests/test_bundled_model.py; here a random model is enough to
check the pipeline: perception once per image, aux text per module, batching equals one by one, resumable
answer files, bad input reported and skipped.
"""

import json
import random

import pytest
import torch
from conftest import save_shapes_model

from moai.cli import main
from moai.engine import ONE_THREAD_WORK, Engine, parse_aux
from moai.model.configuration import MoAIConfig
from moai.model.constants import IGNORE_INDEX
from moai.perception.settings import AUX_FILE, AuxSettings
from moai.perception.verbalize import MODULES, verbalize_perception, without_modules
from moai.train.data import Collator, Example, ModuleDropout
from moai.train.vocab import SHAPES_VOCAB_SIZE, shapes_tokenizer
from moai.worlds.shapes import write_world


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A random `shapes` model saved as ``moai train`` saves one (weights, processor, aux settings)."""
    return save_shapes_model(tmp_path_factory.mktemp("model"), seed=0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    path = tmp_path_factory.mktemp("world")
    write_world(path, scenes=4, seed=31)
    return path


@pytest.fixture(scope="module")
def engine(model_dir):
    return Engine.load(model_dir, device="auto")  # as the CLI (--device auto), so the numbers match


def _questions(world) -> list[dict]:
    return [json.loads(line) for line in (world / "questions.jsonl").read_text().splitlines()]


def test_shapes_tokenizer_fits_the_preset_and_keeps_aux_short(world, engine):
    tok = shapes_tokenizer()
    assert len(tok) == SHAPES_VOCAB_SIZE + 1 == MoAIConfig.from_preset("shapes").text_config.vocab_size + 1
    for q in _questions(world):
        ids = tok(q["text"]).input_ids + tok(q["answer"]).input_ids
        assert tok.unk_token_id not in ids, q
        assert tok.decode(tok(q["answer"]).input_ids, skip_special_tokens=True) == q["answer"].lower()
    perception = engine.perceive([engine.perceiver.load(world / "images" / "31-000000.png")])[0]
    aux = verbalize_perception(perception)
    ids = tok(aux).input_ids
    assert tok.unk_token_id not in ids
    assert len(ids) < len(aux) / 2.5  # words, not bytes


def test_engine_perceives_more_new_images_in_one_call_than_its_cache_holds(world, engine, monkeypatch):
    """One call with more distinct images than ``cache_size`` returns every perception (the cache keeps the most
    recent ``cache_size``) instead of losing the first ones to eviction."""
    rows = _questions(world)
    images = [engine.perceiver.load(world / r["image"]) for r in rows]
    distinct = len({r["image"] for r in rows})
    assert distinct >= 4
    engine._cache.clear()
    monkeypatch.setattr(engine, "cache_size", 2)
    keyed, perceptions = engine._perceive_keyed(images)
    assert len(perceptions) == len(images) and len(engine._cache) == 2
    assert (
        list(engine._cache) == list(dict.fromkeys(reversed(keyed)))[:2][::-1]
    )  # the last two distinct images
    monkeypatch.setattr(engine, "cache_size", 256)
    engine._cache.clear()
    assert [p.to_dict() for p in engine.perceive(images)] == [p.to_dict() for p in perceptions]


def test_engine_perceives_each_image_once_and_batches_like_one_by_one(world, engine, monkeypatch):
    rows = _questions(world)[:6]
    images = [world / r["image"] for r in rows]
    engine._cache.clear()
    calls = []
    real = engine.perceiver.perceive_loaded
    monkeypatch.setattr(
        engine.perceiver, "perceive_loaded", lambda imgs: calls.append(len(imgs)) or real(imgs)
    )
    batched = engine.answer(images, [r["text"] for r in rows])
    assert sum(calls) == len(set(images))  # one perception per distinct image
    single = [engine.answer([img], [r["text"]])[0] for img, r in zip(images, rows)]
    assert sum(calls) == len(set(images))  # the later calls hit the cache
    assert [a.text for a in batched] == [a.text for a in single]
    assert all(a.aux_text == s.aux_text and a.aux_text for a, s in zip(batched, single))


def test_engine_threads_small_forwards_on_one_thread_and_restores_torchs_setting(world, engine, monkeypatch):
    rows = _questions(world)[:4]
    images, questions = [world / r["image"] for r in rows], [r["text"] for r in rows]
    width = engine.model.config.text_config.hidden_size
    assert engine.threads == "auto"
    assert engine.threads_for(torch.zeros(8, 80)) == 1  # 8 x 80 x 128^2 ~ 1e7: one thread
    assert engine.threads_for(torch.zeros(8, int(ONE_THREAD_WORK / width**2))) == 0  # torch's setting
    seen = []
    real = engine.model.generate
    monkeypatch.setattr(
        engine.model, "generate", lambda **kw: seen.append(torch.get_num_threads()) or real(**kw)
    )
    before = torch.get_num_threads()
    auto = engine.answer(images, questions)
    assert seen == [1] and torch.get_num_threads() == before
    plain = Engine(engine.model, engine.processor, engine.perceiver, engine.aux_settings, threads=0)
    assert [a.text for a in plain.answer(images, questions)] == [a.text for a in auto]
    assert seen[-1] == before == torch.get_num_threads()
    for bad in (-1, "two", 1.5, True):
        with pytest.raises(ValueError, match="threads"):
            Engine(engine.model, engine.processor, threads=bad)


def test_engine_verbalizes_each_image_once_per_drop_set(world, engine, monkeypatch):
    image = world / "images" / "31-000000.png"
    engine._cache.clear()
    engine._aux_cache.clear()
    calls = []
    real = engine.aux_inputs
    monkeypatch.setattr(engine, "aux_inputs", lambda p, drop=(): calls.append(tuple(drop)) or real(p, drop))
    first = engine.prepare([image, image], ["How many circles are there?", "What color is the circle?"])[1]
    again = engine.prepare([image], ["Is there a red square in the image?"])[1]
    dropped = engine.prepare([image], ["What color is the square?"], drop=["owod"])[1]
    assert len(calls) == 2 and set(calls[1]) == {"owod"}  # once for the full aux, once without OWOD
    perception = engine.perceive([engine.perceiver.load(image)])[0]
    for (text, colour_map), drop in ((first[0], ()), (first[1], ()), (again[0], ()), (dropped[0], ["owod"])):
        expected_text, expected_map = real(perception, drop)  # uncached: the same inputs
        assert text == expected_text and (colour_map == expected_map).all()
    assert dropped[0][0] != first[0][0]


def test_dropping_a_module_removes_its_sentence_and_changes_the_model_input(world, engine):
    image = world / "images" / "31-000000.png"
    perception = engine.perceive([engine.perceiver.load(image)])[0]
    full, _ = engine.aux_inputs(perception)
    assert "The image includes bounding box coordinates" in full
    for module in MODULES:
        text, colour_map = engine.aux_inputs(perception, [module])
        assert len(text) <= len(full)
        if module == "ps":
            assert colour_map.max() == 0  # no segment: black map
    text, _ = engine.aux_inputs(perception, MODULES)
    assert text.strip() == ""
    with pytest.raises(ValueError, match="unknown module"):
        without_modules(perception, ["depth"])
    assert parse_aux("on") == () and parse_aux("off") == MODULES
    assert parse_aux("drop:ocr, sgg") == ("ocr", "sgg")
    for bad in ("drop:", "drop:depth", "maybe"):
        with pytest.raises(ValueError, match="--aux"):
            parse_aux(bad)


def test_prepare_with_answers_adds_labels_on_the_answers_only(world, engine):
    image = world / "images" / "31-000000.png"
    question = "How many circles are there?"
    prompt, _, _ = engine.prepare([image], [question])
    forced, _, _ = engine.prepare([image], [question], answers=["3"])
    assert "labels" not in prompt and forced["labels"].shape == forced["input_ids"].shape
    n = prompt["input_ids"].shape[1]
    assert torch.equal(forced["input_ids"][:, :n], prompt["input_ids"])  # the prompt, then the answer
    labelled = forced["labels"][0] != IGNORE_INDEX
    assert not labelled[:n].any() and labelled[n:].any()
    assert engine.processor.tokenizer.decode(forced["input_ids"][0, n:][labelled[n:]]).split()[0] == "3"
    with pytest.raises(ValueError, match="1 answers for 2 questions"):
        engine.prepare([image, image], [question, question], answers=["3"])


def test_training_batches_put_the_image_where_the_engine_asks(world, engine):
    """LLaVA data writes ``<image>`` into the first question; `moai train` moves it to the template's slot,
    so a model is trained on the very prompt the engine (predict, server, evaluations) asks it with."""
    image = world / "images" / "31-000000.png"
    question, answer = "How many circles are there?", "3"
    perception = engine.perceive([engine.perceiver.load(image)])[0]
    aux_text, aux_map = engine.aux_inputs(perception, ())
    asked, _, _ = engine.prepare([image], [question], perceptions=[perception], answers=[answer])

    def trained(text: str, slot: str = "template") -> dict:
        example = Example("x", image, ((text, answer),), aux_text, aux_map, "f", 1, perception)
        return Collator(engine.processor, 512, engine.model.config.use_aux_map, image_slot=slot)([example])

    for text in (f"<image>\n{question}", f"{question}\n<image>", f"<image> {question}"):
        batch = trained(text)
        assert batch.keys() == asked.keys()
        for key in asked:
            assert torch.equal(batch[key], asked[key]), (text, key)
    as_written = trained(f"<image>\n{question}", "as_written")  # the image inside the user's turn
    assert not torch.equal(as_written["input_ids"], asked["input_ids"])
    assert torch.equal(as_written["pixel_values"], asked["pixel_values"])
    with pytest.raises(ValueError, match="image_slot 'turn'"):
        Collator(engine.processor, 512, True, image_slot="turn")


def test_module_dropout_is_seeded_by_position(world, engine):
    image = world / "images" / "31-000001.png"
    perception = engine.perceive([engine.perceiver.load(image)])[0]
    example = Example("x", image, (("q", "a"),), verbalize_perception(perception), None, "f", 1, perception)
    dropout = ModuleDropout(0.5, seed=3, verbalizer="official", map_style="corrected")
    draws = [dropout.dropped(p) for p in range(200)]
    assert draws == [dropout.dropped(p) for p in range(200)]  # same position, same draw
    assert draws != [ModuleDropout(0.5, 4, "official", "corrected").dropped(p) for p in range(200)]
    rate = sum(len(d) for d in draws) / (200 * len(MODULES))
    assert 0.4 < rate < 0.6, rate  # 800 Bernoulli(0.5) draws: 5 standard deviations
    p = next(p for p, d in enumerate(draws) if d)
    dropped = dropout.apply(example, p)
    assert dropped.aux_text == verbalize_perception(without_modules(perception, draws[p]))
    none = next(p for p, d in enumerate(draws) if not d)
    assert dropout.apply(example, none) is example
    assert ModuleDropout(0.0, 3, "official", "corrected").dropped(p) == ()
    assert random.Random(0).random() == random.Random(0).random()  # the draws use their own generator


def _predict(args, capsys):
    code = main(["predict", "--no-progress", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_predict_writes_resumes_and_reports_bad_lines(world, model_dir, tmp_path, capsys):
    rows = _questions(world)[:5]
    questions = tmp_path / "q.jsonl"
    lines = [json.dumps(r) for r in rows[:3]]
    lines.insert(1, "{not json")
    lines.append(json.dumps({"question_id": "missing-image", "image": "images/none.png", "text": "Is it?"}))
    lines.append(json.dumps({"question_id": "no-text", "image": rows[0]["image"]}))
    questions.write_text("\n".join(lines) + "\n")
    out = tmp_path / "answers.jsonl"
    args = [
        "--questions",
        str(questions),
        "--images-root",
        str(world),
        "--out",
        str(out),
        "--model",
        str(model_dir),
    ]
    code, stdout, err = _predict([*args, "--batch-size", "2"], capsys)
    assert code == 1  # some questions skipped, the others answered
    assert f"{questions}:2: malformed JSON" in err
    assert "missing-image" not in out.read_text() and "none.png" in err
    assert f"{questions}:6: no text" in err
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [r["question_id"] for r in rows[:3]]
    assert all(isinstance(a["text"], str) for a in answers)
    assert "Traceback" not in err

    more = tmp_path / "more.jsonl"  # a rerun with more questions answers only the new ones
    more.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, stdout, err = _predict(["--questions", str(more), *args[2:], "--batch-size", "4"], capsys)
    assert code == 0 and "3 question(s) already answered" in err
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [a["question_id"] for a in answers] == [r["question_id"] for r in rows]

    code, _, err = _predict(
        [*args[:4], "--out", str(tmp_path / "strict.jsonl"), "--model", str(model_dir), "--strict"], capsys
    )
    assert code == 2 and err.count("\n") == 1 and ":2: malformed JSON" in err


def test_predict_keeps_integer_ids_and_reads_a_file_with_a_byte_order_mark(
    world, model_dir, tmp_path, capsys
):
    rows = [{**r, "question_id": i} for i, r in enumerate(_questions(world)[:2], start=10)]
    questions = tmp_path / "q.jsonl"
    questions.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8-sig")
    out = tmp_path / "answers.jsonl"
    args = ["--questions", str(questions), "--images-root", str(world), "--out", str(out)]
    code, _, err = _predict([*args, "--model", str(model_dir)], capsys)
    assert code == 0, err
    assert [json.loads(line)["question_id"] for line in out.read_text().splitlines()] == [10, 11]
    code, _, err = _predict([*args, "--model", str(model_dir)], capsys)  # integer ids resume too
    assert code == 0 and "2 question(s) already answered" in err


def test_predict_bad_arguments_are_one_line(world, model_dir, tmp_path, capsys):
    q = world / "questions.jsonl"
    cases = [
        (["--questions", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "a.jsonl")], "none.jsonl"),
        (["--questions", str(q), "--out", str(tmp_path)], "is a directory"),
        (["--questions", str(q), "--out", str(tmp_path / "a.jsonl"), "--aux", "drop:depth"], "--aux"),
        (
            ["--questions", str(q), "--out", str(tmp_path / "a.jsonl"), "--model", str(tmp_path)],
            "no config.json",
        ),
    ]
    for args, needle in cases:
        code, _, err = _predict(args, capsys)
        assert code == 2, args
        assert needle in err and err.count("\n") == 1 and "Traceback" not in err, err


def test_saved_aux_settings_round_trip_and_reject_bad_files(tmp_path):
    AuxSettings(perception_preset="shapesworld", verbalizer="v2").save(tmp_path)
    assert AuxSettings.load(tmp_path) == AuxSettings("shapesworld", "v2", "corrected")
    assert AuxSettings.load(tmp_path / "nothing") == AuxSettings()
    (tmp_path / AUX_FILE).write_text('{"colour": 1}')
    with pytest.raises(ValueError, match="expected a mapping"):
        AuxSettings.load(tmp_path)
    with pytest.raises(ValueError, match="verbalizer"):
        AuxSettings(verbalizer="v3")
