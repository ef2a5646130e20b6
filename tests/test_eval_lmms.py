"""The lmms-eval plugin (`moai.eval.lmms`, docs/eval.md, lmms-eval): lmms-eval's registry resolves ``moai``
the way ``python -m lmms_eval --model moai`` does, and `MoAILmms.generate_until` on lmms-eval's own
``Instance`` requests answers like `Engine.answer` on the same images and questions.

Documents are ShapesWorld scenes (`moai.worlds`) in a fake task ``task_dict``; the model is a random `shapes`
model (`save_shapes_model`). Routing, batching and generation settings are checked with a recording stand-in
for ``Engine.answer`` (fast, exact); one test runs the real model.
"""

from collections.abc import Callable

import pytest

pytest.importorskip("lmms_eval.api.instance", reason="lmms-eval is not installed (pip install -e .[lmms])")

from conftest import save_shapes_model  # noqa: E402
from lmms_eval.api.instance import Instance  # noqa: E402
from PIL import Image  # noqa: E402

from moai.engine import Answer  # noqa: E402
from moai.eval.lmms import CLASS_PATH, Generation, MoAILmms, cut_at_stop  # noqa: E402
from moai.io import Problem  # noqa: E402
from moai.worlds.shapes import generate, render  # noqa: E402

TASK, SPLIT = "fake_shapes", "test"


def make_docs() -> list[dict]:
    """Five ShapesWorld scenes (five different images) with one question each, in the shape of an lmms-eval
    task's documents."""
    docs = []
    for index in range(5):
        scene, questions = generate(5, index)
        docs.append({"image": render(scene), "question": questions[index % len(questions)].text})
    return docs


def one_image(doc: dict) -> list[Image.Image]:
    """The task's ``doc_to_visual``: a list with the document's image, as lmms-eval tasks return it."""
    return [doc["image"]]


def request(doc_id: int, context: str, gen_kwargs: dict, doc_to_visual: Callable = one_image) -> Instance:
    """A ``generate_until`` request as lmms-eval's ``ConfigurableTask.construct_requests`` builds it."""
    return Instance(
        request_type="generate_until",
        arguments=(context, gen_kwargs, doc_to_visual, doc_id, TASK, SPLIT),
        idx=0,
        metadata={"task": TASK, "doc_id": doc_id, "repeats": 1},
    )


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return make_docs()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_shapes_model(tmp_path_factory.mktemp("model"), seed=0, randomize=True)


@pytest.fixture(scope="module")
def plugin(model_dir, docs) -> MoAILmms:
    lm = MoAILmms(pretrained=str(model_dir), batch_size=2)
    lm.task_dict = {TASK: {SPLIT: docs}}  # what the evaluator stores: task -> split -> documents
    return lm


class Recorder:
    """Stands in for ``Engine.answer``: records each call and answers ``"<question> @<doc index>"``, the
    index of the document whose image came with the question."""

    def __init__(self, docs: list[dict]) -> None:
        self.pixels = [doc["image"].tobytes() for doc in docs]
        self.calls: list[dict] = []

    def __call__(self, images, questions, **kwargs) -> list[Answer]:
        self.calls.append({"n": len(questions), **kwargs})
        return [Answer(f"{q} @{self.pixels.index(img.tobytes())}", "") for img, q in zip(images, questions)]


@pytest.fixture()
def recorder(plugin, docs, monkeypatch) -> Recorder:
    spy = Recorder(docs)
    monkeypatch.setattr(plugin.engine, "answer", spy)
    monkeypatch.setattr(plugin, "problems", [])
    return spy


def test_lmms_eval_registry_resolves_moai_to_the_plugin(model_dir):
    """``--model moai``: lmms_eval.models.get_model (the evaluator's lookup) finds our entry point; the
    class is built from a --model_args string and the evaluator's extra arguments as the evaluator does."""
    from lmms_eval.models import get_model, get_model_manifest

    assert get_model_manifest("moai").simple_class_path == CLASS_PATH
    assert get_model("moai") is MoAILmms
    lm = get_model("moai").create_from_arg_string(
        f"pretrained={model_dir},max_new_tokens=4,aux=drop:ocr",
        {"batch_size": "3", "max_batch_size": None, "device": None},
    )
    assert (lm.batch_size, lm.max_new_tokens, lm.drop, lm.is_simple) == (3, 4, ("ocr",), True)
    assert str(lm.device) == "cpu"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"batch_size": "auto"}, "batch_size: expected a positive integer, got 'auto'"),
        ({"max_new_tokens": 0}, "max_new_tokens: expected a positive integer, got 0"),
        ({"temperature": 0.2}, "unknown argument"),
        ({"strict": "maybe"}, "strict: expected true or false"),
    ],
)
def test_bad_model_args_are_refused_before_loading(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        MoAILmms(pretrained=str(tmp_path / "no-model"), **args)


def test_generate_until_answers_like_engine_answer(plugin, docs):
    """The real model: every answer equals `Engine.answer` on the same images and questions (all three in
    one batch; the plugin answers two at a time, requests in a shuffled order)."""
    order = [2, 0, 1]
    expected = plugin.engine.answer(
        [docs[i]["image"] for i in order], [docs[i]["question"] for i in order], max_new_tokens=4
    )
    texts = [a.text for a in expected]
    assert " " in texts[0], texts  # the stop string " " below has something to cut
    gen = {"max_new_tokens": 4, "temperature": 0, "do_sample": False}
    requests = [request(i, docs[i]["question"], dict(gen)) for i in order]
    requests[0].arguments[1]["until"] = [" "]  # cut at the first space
    requests[1].arguments[1]["until"] = "never in the answer"
    got = plugin.generate_until(requests)
    assert got == [texts[0].split(" ")[0], *texts[1:]]
    assert got[0] != texts[0]


def test_cut_at_stop_takes_the_earliest_stop_string():
    # "yes. no\nmaybe": "." at 3, "\n" at 7, " no" at 4 -> the text up to index 3
    assert cut_at_stop("yes. no\nmaybe", ["\n", " no", "."]) == "yes"
    assert cut_at_stop(" yes \n", ["\n"]) == "yes"  # stripped like Engine.answer's text
    assert cut_at_stop("yes", []) == "yes"
    assert cut_at_stop("yes", ["y"]) == ""


def test_requests_reach_the_engine_with_their_own_image_in_order_and_in_batches(plugin, docs, recorder):
    order = [4, 2, 0, 3, 1]
    greedy = {"max_new_tokens": 7, "temperature": 0}
    sampled = {"max_new_tokens": 5, "temperature": 0.5, "top_p": 0.9, "until": ["@"]}
    requests = [request(i, docs[i]["question"], dict(sampled if i == 2 else greedy)) for i in order]
    got = plugin.generate_until(requests)
    # request of doc i -> "<question> @i"; doc 2's answer is cut at its stop string "@" (then stripped)
    assert got == [docs[i]["question"] if i == 2 else f"{docs[i]['question']} @{i}" for i in order]
    # four greedy requests in batches of 2 (batch_size), the sampled one alone; greedy sets no sampling
    assert recorder.calls == [
        {"n": 2, "drop": (), "max_new_tokens": 7},
        {"n": 2, "drop": (), "max_new_tokens": 7},
        {"n": 1, "drop": (), "max_new_tokens": 5, "do_sample": True, "temperature": 0.5, "top_p": 0.9},
    ]


def test_max_new_tokens_defaults_to_the_model_argument_and_unused_keys_are_ignored(plugin, docs, recorder):
    plugin.generate_until([request(0, "q", {"image_aspect_ratio": "pad"}), request(1, "q", {})])
    assert recorder.calls == [{"n": 2, "drop": (), "max_new_tokens": 16}]  # MoAILmms(max_new_tokens=16)


def test_generation_settings_are_greedy_unless_temperature_is_positive():
    assert Generation(8, 0.0, 0.9, 1).kwargs() == {"max_new_tokens": 8}
    assert Generation(8, 0.7, None, 3).kwargs() == {
        "max_new_tokens": 8,
        "do_sample": True,
        "temperature": 0.7,
        "num_beams": 3,
    }


def test_a_document_without_exactly_one_image_is_reported_and_answered_empty(plugin, docs, recorder):
    two = lambda doc: [doc["image"], doc["image"]]  # noqa: E731
    none = lambda doc: []  # noqa: E731
    requests = [request(0, "a", {}, two), request(1, "b", {}), request(2, "c", {}, none)]
    assert plugin.generate_until(requests) == ["", "b @1", ""]
    assert plugin.problems == [
        Problem(f"{TASK}/{SPLIT}", 0, "2 visuals; MoAI answers about exactly one image per question"),
        Problem(f"{TASK}/{SPLIT}", 2, "0 visuals; MoAI answers about exactly one image per question"),
    ]
    assert recorder.calls == [{"n": 1, "drop": (), "max_new_tokens": 16}]


def test_strict_aborts_on_a_bad_document(plugin, docs, recorder, monkeypatch):
    monkeypatch.setattr(plugin, "strict", True)
    with pytest.raises(ValueError, match=f"{TASK}/{SPLIT} doc 0: 2 visuals"):
        plugin.generate_until([request(0, "a", {}, lambda doc: [doc["image"]] * 2)])
    assert recorder.calls == []


def test_a_visual_that_is_not_an_image_is_reported(plugin, docs, recorder):
    requests = [request(0, "a", {}, lambda doc: ["no-such-clip.mp4"]), request(1, "b", {}, lambda doc: [{}])]
    assert plugin.generate_until(requests) == ["", ""]
    assert plugin.problems == [
        Problem(f"{TASK}/{SPLIT}", 0, "no-such-clip.mp4: file not found"),
        Problem(f"{TASK}/{SPLIT}", 1, "unsupported image type dict"),  # e.g. an audio task's visual
    ]
    assert recorder.calls == []


def test_loglikelihood_and_multi_round_are_not_supported(plugin):
    with pytest.raises(NotImplementedError, match="moai: loglikelihood requests .* not supported"):
        plugin.loglikelihood([])
    with pytest.raises(NotImplementedError, match="moai: generate_until_multi_round .* not supported"):
        plugin.generate_until_multi_round([])
