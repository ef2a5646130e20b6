"""OpenAI chat-completions requests -> what the engine needs, with every client mistake a 4xx `ApiError`.

A request is checked in the order it is read: content type, body size, JSON, the model name, the sampling
parameters, the messages (text and ``image_url`` parts; one image, as MoAI takes one), the image (data URL
or an allow-listed remote URL; bytes, decoding, pixels), then the prompt length in tokens. Nothing here
touches the model: the handler parses, the batcher (`moai.serve.batcher`) generates.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..io import load_image


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for (each breach is a 4xx JSON error in OpenAI's shape)."""

    max_body_bytes: int = 16 * 2**20
    """Largest request body (413 beyond)."""
    max_image_bytes: int = 8 * 2**20
    """Largest encoded image (413 beyond)."""
    max_image_pixels: int = 4096 * 4096
    """Most pixels of a decoded image: a decompression bomb is refused before it is expanded (400)."""
    max_images: int = 1
    """Images per request: MoAI reads one image per conversation (400 beyond)."""
    max_prompt_tokens: int = 768
    """Most prompt tokens (image tokens and the conversation so far) (400 beyond)."""
    max_tokens: int = 256
    """Largest ``max_tokens`` a request may ask for (400 beyond); also the default when it asks none."""
    allow_remote_images: tuple[str, ...] = ()
    """Hosts ``http(s)://`` image URLs may name; empty: remote URLs are refused (no server-side request forgery)."""
    remote_timeout_s: float = 10.0
    """Timeout of one remote image download."""


class ApiError(Exception):
    """A client (or server) error with its HTTP status, in OpenAI's error shape (`body`)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code

    @property
    def kind(self) -> str:
        return {
            404: "invalid_request_error",
            429: "rate_limit_error",
            503: "server_error",
        }.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


@dataclass
class ChatRequest:
    """One parsed chat-completions request."""

    image: Image.Image
    """The conversation's image (RGB)."""
    question: str
    """The last user message's text."""
    history: list[tuple[str, str]]
    """Earlier (user, assistant) turns, oldest first."""
    max_tokens: int
    """Most tokens to generate."""
    temperature: float
    """0: greedy decoding; > 0: sampling at this temperature."""
    top_p: float
    """Nucleus sampling mass (with temperature > 0)."""
    seed: int | None
    """Sampling seed (a seeded sampled request is generated alone, so the seed decides its tokens)."""
    stop: tuple[str, ...]
    """Strings that end the answer (not included in it)."""
    stream: bool
    """Answer as server-sent events."""
    include_usage: bool = False
    """``stream_options.include_usage``: a last chunk with the token counts."""
    want_aux: bool = False
    """``moai.aux``: return the verbalized aux knowledge in the ``moai`` response field."""
    want_gates: bool = False
    """``moai.gates``: return the mean gate weights per mixer layer and expert in the ``moai`` field."""
    prompt_tokens: int = 0
    """Prompt length in tokens (set by the handler, `moai.serve.app.count_prompt_tokens`)."""

    @property
    def sampling_key(self) -> tuple:
        """Requests with equal keys can share one ``generate`` call."""
        if self.temperature == 0:
            return ("greedy",)
        return ("sample", self.temperature, self.top_p, self.seed if self.seed is not None else id(self))


def check_content_type(value: str | None) -> None:
    if (value or "").split(";")[0].strip().lower() != "application/json":
        raise ApiError(415, f"Content-Type must be application/json, got {value or 'none'!r}")


def parse_json(body: bytes, limits: ServeLimits) -> dict[str, Any]:
    if len(body) > limits.max_body_bytes:
        raise ApiError(
            413, f"request body is {len(body)} bytes, more than the limit of {limits.max_body_bytes}"
        )
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ApiError(400, f"request body is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object")
    return data


def _number(data: dict, name: str, default: float, low: float, high: float, integer: bool = False) -> Any:
    value = data.get(name, default)
    if value is None:
        value = default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ApiError(400, f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}", name)
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be in [{low}, {high}], got {value}", name)
    return value


def parse_chat_request(data: dict[str, Any], model_id: str, limits: ServeLimits) -> ChatRequest:
    """Check a decoded request body and turn it into a `ChatRequest` (image loaded, prompt not yet counted)."""
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise ApiError(400, "model is required (a string; GET /v1/models lists it)", "model")
    if model != model_id:
        raise ApiError(
            404,
            f"model {model!r} does not exist; this server serves {model_id!r}",
            "model",
            "model_not_found",
        )
    n = data.get("n", 1)
    if n != 1:
        raise ApiError(400, f"n must be 1, got {n!r}", "n")
    max_tokens = data.get("max_completion_tokens", data.get("max_tokens"))
    max_tokens = _number(
        {"max_tokens": max_tokens}, "max_tokens", limits.max_tokens, 1, limits.max_tokens, True
    )
    temperature = _number(data, "temperature", 0.0, 0.0, 2.0)
    top_p = _number(data, "top_p", 1.0, 0.0, 1.0)
    if temperature > 0 and top_p == 0:
        raise ApiError(400, "top_p must be > 0 when sampling", "top_p")
    seed = data.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise ApiError(400, f"seed must be a non-negative integer, got {seed!r}", "seed")
    stop = data.get("stop") or ()
    if isinstance(stop, str):
        stop = (stop,)
    if not isinstance(stop, list | tuple) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, "stop must be a non-empty string or a list of at most 4 of them", "stop")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, f"stream must be true or false, got {stream!r}", "stream")
    options = data.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options must be an object", "stream_options")
    ext = data.get("moai") or {}
    if not isinstance(ext, dict) or not all(isinstance(ext.get(k, False), bool) for k in ("aux", "gates")):
        raise ApiError(400, 'moai must be an object like {"aux": true, "gates": true}', "moai")
    image_url, question, history = parse_messages(data.get("messages"), limits)
    return ChatRequest(
        image=load_request_image(image_url, limits),
        question=question,
        history=history,
        max_tokens=max_tokens,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed,
        stop=tuple(stop),
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        want_aux=ext.get("aux", False),
        want_gates=ext.get("gates", False),
    )


def parse_messages(messages: Any, limits: ServeLimits) -> tuple[str, str, list[tuple[str, str]]]:
    """(image URL, last question, earlier turns) of a message list; system messages are ignored (the MoAI
    conversation template has no system turn)."""
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", "messages")
    images: list[str] = []
    turns: list[tuple[str, str]] = []  # (role, text)
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise ApiError(400, f"{where} must be an object", where)
        role = message.get("role")
        if role not in ("system", "developer", "user", "assistant"):
            raise ApiError(
                400, f"{where}.role must be system, user or assistant, got {role!r}", f"{where}.role"
            )
        text = _content_text(message.get("content"), where, images if role == "user" else None)
        if role in ("user", "assistant"):
            turns.append((role, text))
    if len(images) > limits.max_images:
        raise ApiError(400, f"{len(images)} images in the request; at most {limits.max_images}", "messages")
    if not images:
        raise ApiError(
            400, "the request has no image: add an image_url content part to a user message", "messages"
        )
    if not turns or turns[-1][0] != "user":
        raise ApiError(400, "the last message must be a user message", "messages")
    history, pending = [], None
    for role, text in turns[:-1]:
        if role == "user":
            if pending is not None:
                raise ApiError(
                    400, "two user messages in a row: put an assistant message between them", "messages"
                )
            pending = text
        else:
            if pending is None:
                raise ApiError(400, "an assistant message must follow a user message", "messages")
            history.append((pending, text))
            pending = None
    if pending is not None:
        raise ApiError(400, "two user messages in a row: put an assistant message between them", "messages")
    question = turns[-1][1].strip()
    if not question:
        raise ApiError(400, "the last user message has no text", "messages")
    return images[0], question, history


def _content_text(content: Any, where: str, images: list[str] | None) -> str:
    """The text of a message's content (a string or a list of parts); image parts go to ``images``."""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ApiError(
            400, f"{where}.content must be a string or a list of content parts", f"{where}.content"
        )
    texts = []
    for j, part in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url" and images is not None:
            url = part.get("image_url")
            url = url.get("url") if isinstance(url, dict) else url
            if not isinstance(url, str) or not url:
                raise ApiError(400, f"{at}.image_url.url must be a string", f"{at}.image_url")
            images.append(url)
        elif kind == "image_url":
            raise ApiError(400, f"{at}: only user messages may carry images", at)
        else:
            raise ApiError(400, f"{at} must be a text or image_url part, got type {kind!r}", at)
    return " ".join(texts)


def load_request_image(url: str, limits: ServeLimits) -> Image.Image:
    """Decode a ``data:image/...;base64,`` URL (or download an allow-listed ``http(s)://`` one), within limits."""
    param = "image_url"
    if url.startswith("data:"):
        header, sep, payload = url[5:].partition(",")
        media, *options = header.split(";")
        if not sep or "base64" not in options:
            raise ApiError(400, "image data URLs must be base64: data:image/png;base64,...", param)
        if not media.lower().startswith("image/"):
            raise ApiError(400, f"the data URL holds {media or 'no media type'!r}, not an image", param)
        if len(payload) * 3 // 4 > limits.max_image_bytes + 3:
            raise ApiError(413, f"image is larger than the limit of {limits.max_image_bytes} bytes", param)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "image data URL is not valid base64", param) from None
    elif url.startswith(("http://", "https://")):
        data = fetch_remote_image(url, limits)
    else:
        raise ApiError(400, "image_url must be a data: URL (or an allow-listed http(s):// URL)", param)
    if len(data) > limits.max_image_bytes:
        raise ApiError(
            413, f"image is {len(data)} bytes, more than the limit of {limits.max_image_bytes}", param
        )
    try:
        return load_image(data, max_pixels=limits.max_image_pixels, name="image")
    except ValueError as err:
        raise ApiError(400, str(err), param) from None


def fetch_remote_image(url: str, limits: ServeLimits) -> bytes:
    host = urllib.parse.urlsplit(url).hostname or ""
    if host not in limits.allow_remote_images:
        raise ApiError(
            400,
            f"remote image URLs are refused (host {host!r} is not allowed; the server's --allow-remote-images "
            "lists the hosts it may fetch from); send the image as a data: URL",
            "image_url",
        )
    request = urllib.request.Request(url, headers={"User-Agent": "moai-serve"})
    opener = urllib.request.build_opener(_NoRedirect)  # a redirect could lead off the allow-list
    try:
        with opener.open(request, timeout=limits.remote_timeout_s) as response:
            data = response.read(limits.max_image_bytes + 1)
    except OSError as err:
        raise ApiError(400, f"could not fetch the image from {host}: {err}", "image_url") from None
    if len(data) > limits.max_image_bytes:
        raise ApiError(
            413, f"image at {host} is larger than the limit of {limits.max_image_bytes} bytes", "image_url"
        )
    return data


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: the allow-list names the hosts images come from, not where they redirect to."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201 (urllib's signature)
        return None
