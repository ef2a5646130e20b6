"""`moai serve`: the OpenAI-compatible server, with the official `openai` client and with raw HTTP.

Servers run in a thread on 127.0.0.1 at a port the OS picks (`BackgroundServer`). The engine is the bundled
model (short, real answers) or a random `shapes` model (long answers: ``max_tokens``, stop strings, streams
that a client leaves). Every answer is checked against `Engine.answer` on the same inputs.
"""

import base64
import copy
import http.client
import http.server
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import save_shapes_model
from openai import APIStatusError, OpenAI
from PIL import Image

from moai.engine import Engine
from moai.serve.app import ServeSettings, create_app
from moai.serve.batcher import BatchSettings
from moai.serve.protocol import ServeLimits
from moai.serve.server import BackgroundServer
from moai.worlds.shapes import generate, render

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MODEL = "moai-tiny-shapes"


def data_url(image: Image.Image | Path, media: str = "image/png") -> str:
    if isinstance(image, Path):
        raw = image.read_bytes()
    else:
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        raw = buffer.getvalue()
    return f"data:{media};base64,{base64.b64encode(raw).decode()}"


def user(question: str, url: str | None) -> dict:
    parts = [{"type": "text", "text": question}]
    if url is not None:
        parts.insert(0, {"type": "image_url", "image_url": {"url": url}})
    return {"role": "user", "content": parts}


@pytest.fixture(scope="module")
def bundled():
    return Engine.load()


@pytest.fixture(scope="module")
def random_engine(tmp_path_factory):
    """A random `shapes` model: it rarely ends an answer, so answers run to ``max_tokens``."""
    return Engine.load(save_shapes_model(tmp_path_factory.mktemp("model"), seed=2))


@pytest.fixture(scope="module")
def server(bundled):
    with BackgroundServer(create_app(bundled, ServeSettings(model_id=MODEL))) as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=f"{server}/v1", api_key="unused", max_retries=0, timeout=120)


def test_models_and_health(client, server):
    assert [m.id for m in client.models.list().data] == [MODEL]
    status, body = post(server, "/health", None, method="GET")
    assert status == 200 and body["status"] == "ok" and body["model"] == MODEL


def test_chat_completion_plain_and_streamed_match_the_engine(client, bundled):
    image = EXAMPLES / "scene-2.png"
    for question in (
        "What color is the square?",
        "What word is written on the sign?",
        "How many red objects are there?",
    ):
        expected = bundled.answer([image], [question], max_new_tokens=32, gates=True)[0]
        messages = [user(question, data_url(image))]
        reply = client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=32, extra_body={"moai": {"aux": True, "gates": True}}
        )
        assert reply.choices[0].message.content == expected.text
        assert reply.choices[0].finish_reason == "stop"
        prompt = len(bundled.processor.encode_turns([(question, None)]).ids)
        assert reply.usage.prompt_tokens == prompt and reply.usage.completion_tokens >= 1
        assert reply.usage.total_tokens == prompt + reply.usage.completion_tokens
        assert reply.moai == {"aux_text": expected.aux_text, "gate_weights": expected.gate_weights}

        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=messages,
                max_tokens=32,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        assert chunks[0].choices[0].delta.role == "assistant"
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == expected.text
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
        assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == reply.usage.total_tokens


def test_multi_turn_history_and_system_messages(client, bundled):
    image = EXAMPLES / "scene-1.png"
    q1, q2 = "What color is the circle?", "How many circles are there?"
    a1 = bundled.answer([image], [q1])[0].text
    expected = bundled.answer([image], [q2], history=[[(q1, a1)]])[0].text
    messages = [
        {"role": "system", "content": "You are MoAI."},
        user(q1, data_url(image)),
        {"role": "assistant", "content": a1},
        {"role": "user", "content": q2},
    ]
    assert (
        client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content == expected
    )


def test_concurrent_requests_are_micro_batched(bundled):
    # the trained model: its answers are confident, so a row's rounding in another batch cannot flip them
    scenes = [render(generate(55, i)[0]) for i in range(6)]
    questions = ["What color is the circle?", "Is there a red square in the image?"] * 3
    expected = [a.text for a in bundled.answer(scenes, questions, max_new_tokens=6)]
    settings = ServeSettings(model_id="m", batching=BatchSettings(max_batch=8, max_wait_s=2.0))
    app = create_app(bundled, settings)
    with BackgroundServer(app) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)

        def ask(i: int) -> str:
            messages = [user(questions[i], data_url(scenes[i]))]
            return (
                client.chat.completions.create(model="m", messages=messages, max_tokens=6)
                .choices[0]
                .message.content
            )

        with ThreadPoolExecutor(len(scenes)) as pool:
            answers = list(pool.map(ask, range(len(scenes))))
        batches = app.state.batcher.batches
    assert answers == expected  # a batched answer is the answer it gets alone
    assert batches < len(scenes)  # at least two requests shared a generate call (2 s to gather them)


def test_max_tokens_and_stop_strings(random_engine):
    scene = render(generate(56, 0)[0])
    question = "What color is the circle?"
    full = random_engine.answer([scene], [question], max_new_tokens=12)[0].text
    words = full.split()
    assert len(words) >= 4, full  # a random model talks on
    with BackgroundServer(create_app(random_engine, ServeSettings(model_id="m"))) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
        messages = [user(question, data_url(scene))]
        reply = client.chat.completions.create(model="m", messages=messages, max_tokens=12)
        assert reply.choices[0].message.content == full
        assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 12
        stop = " " + words[2]
        reply = client.chat.completions.create(
            model="m", messages=messages, max_tokens=12, stop=[stop, "zzz"]
        )
        assert reply.choices[0].message.content == full[: full.index(stop)]
        assert reply.choices[0].finish_reason == "stop"
        streamed = client.chat.completions.create(
            model="m", messages=messages, max_tokens=12, stop=stop, stream=True
        )
        assert (
            "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
            == full[: full.index(stop)]
        )
        sampled = [
            client.chat.completions.create(
                model="m", messages=messages, max_tokens=12, temperature=1.0, seed=7
            )
            .choices[0]
            .message.content
            for _ in range(2)
        ]
        assert sampled[0] == sampled[1]  # a seeded sampled request is reproducible


def test_a_client_that_leaves_mid_stream_frees_its_row(random_engine):
    endless = Engine(random_engine.model, random_engine.processor, aux_settings=random_engine.aux_settings)
    endless.model = copy.deepcopy(random_engine.model)
    endless.model.generation_config.eos_token_id = None  # answers run to max_tokens unless the row is ended
    app = create_app(endless, ServeSettings(model_id="m", limits=ServeLimits(max_tokens=900)))
    scene = render(generate(57, 0)[0])
    body = {"model": "m", "messages": [user("What color is the circle?", data_url(scene))], "max_tokens": 900}
    with BackgroundServer(app) as url:
        host, port = url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=60)
        conn.request(
            "POST",
            "/v1/chat/completions",
            json.dumps({**body, "stream": True}),
            {"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        assert response.status == 200
        while b'"content": "' not in (line := response.readline()) or b'"content": ""' in line:
            assert line  # the answer has started: a first piece of text arrived
        conn.close()  # the client leaves
        # the server goes on serving; the next request runs after the abandoned one has stopped
        status, reply = post(url, "/v1/chat/completions", {**body, "max_tokens": 4})
        assert status == 200 and reply["usage"]["completion_tokens"] == 4
        assert app.state.batcher.cancelled_rows == 1
        assert app.state.batcher.last_cancelled_tokens < 900


def test_a_full_queue_is_429(random_engine):
    settings = ServeSettings(model_id="m", batching=BatchSettings(max_batch=8, max_wait_s=3.0, max_queue=1))
    app = create_app(random_engine, settings)
    body = {
        "model": "m",
        "messages": [user("What color is the circle?", data_url(EXAMPLES / "scene-1.png"))],
        "max_tokens": 2,
    }
    with BackgroundServer(app) as url:
        first = ThreadPoolExecutor(1).submit(post, url, "/v1/chat/completions", body)
        while app.state.batcher.queue.__len__() == 0 and not first.done():
            threading.Event().wait(0.01)
        status, reply = post(url, "/v1/chat/completions", body)
        assert status == 429 and reply["error"]["type"] == "rate_limit_error"
        assert first.result()[0] == 200


def post(
    url: str, path: str, body, method: str = "POST", headers: dict | None = None, raw: bytes | None = None
):
    """(status, decoded JSON body) of one raw HTTP request."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    payload = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, payload, {"Content-Type": "application/json", **(headers or {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data)


def _png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), (200, 10, 10)).save(buffer, format="PNG")
    return buffer.getvalue()


SMALL = f"data:image/png;base64,{base64.b64encode(_png(64, 64)).decode()}"


def _body(**changes) -> dict:
    body = {"model": "m", "messages": [user("What color is the square?", SMALL)]}
    body.update(changes)
    return body


BAD_REQUESTS = [
    # (what, request kwargs for `post`, status, words in the message)
    ("malformed JSON", {"raw": b"{not json"}, 400, "not valid JSON"),
    ("not an object", {"raw": b"[1, 2]"}, 400, "JSON object"),
    ("wrong content type", {"headers": {"Content-Type": "text/plain"}}, 415, "application/json"),
    ("body too large", {"raw": b" " * 5000 + b"{}"}, 413, "limit"),
    ("unknown model", {"body": _body(model="gpt-4o")}, 404, "does not exist"),
    ("no model", {"body": {"messages": _body()["messages"]}}, 400, "model is required"),
    ("no messages", {"body": _body(messages=[])}, 400, "non-empty list"),
    ("no image", {"body": _body(messages=[user("hi?", None)])}, 400, "no image"),
    (
        "two images",
        {
            "body": _body(
                messages=[
                    {
                        "role": "user",
                        "content": [
                            {"type": "image_url", "image_url": {"url": SMALL}},
                            {"type": "image_url", "image_url": {"url": SMALL}},
                            {"type": "text", "text": "hi?"},
                        ],
                    }
                ]
            )
        },
        400,
        "2 images",
    ),
    (
        "bad part type",
        {"body": _body(messages=[{"role": "user", "content": [{"type": "audio"}]}])},
        400,
        "text or image_url",
    ),
    ("bad role", {"body": _body(messages=[{"role": "tool", "content": "x"}])}, 400, "role"),
    (
        "non-image data URL",
        {"body": _body(messages=[user("hi?", "data:text/plain;base64,aGVsbG8=")])},
        400,
        "not an image",
    ),
    ("bad base64", {"body": _body(messages=[user("hi?", "data:image/png;base64,@@@")])}, 400, "base64"),
    ("not an image", {"body": _body(messages=[user("hi?", "data:image/png;base64,aGVsbG8=")])}, 400, "image"),
    (
        "remote URL",
        {"body": _body(messages=[user("hi?", "http://169.254.169.254/latest/x.png")])},
        400,
        "refused",
    ),
    ("file URL", {"body": _body(messages=[user("hi?", "file:///etc/passwd")])}, 400, "data: URL"),
    (
        "too many pixels",
        {
            "body": _body(
                messages=[user("hi?", f"data:image/png;base64,{base64.b64encode(_png(300, 300)).decode()}")]
            )
        },
        400,
        "pixels",
    ),
    (
        "image too large",
        {
            "body": _body(
                messages=[user("hi?", f"data:image/png;base64,{base64.b64encode(b'x' * 2400).decode()}")]
            )
        },
        413,
        "limit",
    ),
    ("max_tokens too large", {"body": _body(max_tokens=10_000)}, 400, "max_tokens"),
    ("max_tokens not a number", {"body": _body(max_tokens="5")}, 400, "max_tokens"),
    ("temperature out of range", {"body": _body(temperature=5)}, 400, "temperature"),
    ("n > 1", {"body": _body(n=2)}, 400, "n must be 1"),
    ("bad stop", {"body": _body(stop=[1])}, 400, "stop"),
    ("prompt too long", {"body": _body(messages=[user("red " * 300, SMALL)])}, 400, "tokens"),
    (
        "two user turns",
        {"body": _body(messages=[user("a?", SMALL), {"role": "user", "content": "b?"}])},
        400,
        "in a row",
    ),
    (
        "ends with assistant",
        {"body": _body(messages=[user("a?", SMALL), {"role": "assistant", "content": "b"}])},
        400,
        "last message",
    ),
    ("bad moai field", {"body": _body(moai={"aux": "yes"})}, 400, "moai"),
]


@pytest.fixture(scope="module")
def strict_server(random_engine):
    limits = ServeLimits(
        max_body_bytes=2048 * 2,
        max_image_bytes=2000,
        max_image_pixels=200 * 200,
        max_prompt_tokens=200,
        max_tokens=64,
    )
    with BackgroundServer(create_app(random_engine, ServeSettings(model_id="m", limits=limits))) as url:
        yield url


@pytest.mark.parametrize("what, kwargs, status, words", BAD_REQUESTS, ids=[r[0] for r in BAD_REQUESTS])
def test_bad_requests_are_4xx_in_openais_error_shape(strict_server, what, kwargs, status, words):
    kwargs = dict(kwargs)
    body = kwargs.pop("body", _body())
    got, reply = post(strict_server, "/v1/chat/completions", body, **kwargs)
    assert got == status, reply
    error = reply["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert words in error["message"] and "Traceback" not in error["message"]
    assert error["type"] == ("invalid_request_error" if status != 429 else "rate_limit_error")


def test_bad_requests_through_the_openai_client(client):
    with pytest.raises(APIStatusError) as err:
        client.chat.completions.create(model="nope", messages=[user("hi?", SMALL)])
    assert err.value.status_code == 404 and "does not exist" in err.value.message


def test_an_internal_error_is_a_500_without_details(random_engine, monkeypatch):
    with BackgroundServer(create_app(random_engine, ServeSettings(model_id="m"))) as url:

        def broken(*args, **kwargs):
            raise RuntimeError("secret detail /srv/moai/engine.py line 42")

        monkeypatch.setattr(random_engine, "prepare", broken)
        status, reply = post(url, "/v1/chat/completions", _body())
        assert status == 500
        assert reply["error"]["type"] == "server_error"
        assert "secret" not in json.dumps(reply) and "Traceback" not in json.dumps(reply)


def test_remote_images_only_from_allowed_hosts(random_engine, tmp_path):
    png = _png(64, 64)

    class Images(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", "http://localhost/x.png")
                self.end_headers()
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(png)

        def log_message(self, *args):
            pass

    images = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    threading.Thread(target=images.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{images.server_address[1]}"
    try:
        limits = ServeLimits(allow_remote_images=("127.0.0.1",))
        with BackgroundServer(create_app(random_engine, ServeSettings(model_id="m", limits=limits))) as url:
            status, reply = post(
                url, "/v1/chat/completions", _body(messages=[user("hi?", f"{base}/a.png")], max_tokens=2)
            )
            assert status == 200, reply
            status, reply = post(
                url, "/v1/chat/completions", _body(messages=[user("hi?", f"{base}/redirect")], max_tokens=2)
            )
            assert status == 400 and "could not fetch" in reply["error"]["message"]
            other = base.replace("127.0.0.1", "localhost")
            status, reply = post(
                url, "/v1/chat/completions", _body(messages=[user("hi?", f"{other}/a.png")], max_tokens=2)
            )
            assert status == 400 and "not allowed" in reply["error"]["message"]
    finally:
        images.shutdown()
