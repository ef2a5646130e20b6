"""The OpenAI-compatible HTTP API: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``.

Every client mistake is a 4xx JSON error in OpenAI's shape (`moai.serve.protocol`); anything else is a 500
whose body names no internals (the traceback goes to the server log). Answers come from the micro-batching
`Batcher`; ``stream: true`` answers are server-sent events in OpenAI's ``chat.completion.chunk`` format,
ending with ``data: [DONE]``. A ``moai`` object in the request (``{"aux": true, "gates": true}``) adds a
``moai`` field to the response (the last chunk when streaming) with the verbalized aux knowledge and the mean
gate weights per mixer layer and expert (arXiv 2403.07508 §3).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import Batcher, BatchSettings, Job, Result
from .protocol import ApiError, ChatRequest, ServeLimits, check_content_type, parse_chat_request, parse_json

if TYPE_CHECKING:
    from ..engine import Engine

log = logging.getLogger("moai.serve")


@dataclass(frozen=True)
class ServeSettings:
    """Everything ``moai serve`` configures besides the engine."""

    model_id: str = "moai-tiny-shapes"
    """The name clients pass as ``model`` (and ``GET /v1/models`` lists)."""
    limits: ServeLimits = field(default_factory=ServeLimits)
    """Per-request limits."""
    batching: BatchSettings = field(default_factory=BatchSettings)
    """Micro-batching."""


def create_app(engine: Engine, settings: ServeSettings | None = None) -> FastAPI:
    """The FastAPI application serving ``engine``; the batcher runs while the app does (lifespan)."""
    settings = settings or ServeSettings()
    created = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.batcher = Batcher(engine, settings.batching)
        app.state.batcher.start()
        try:
            yield
        finally:
            await app.state.batcher.stop()

    app = FastAPI(title="moai", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(ApiError(err.status_code, str(err.detail)).body(), status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(ApiError(400, "invalid request").body(), status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        log.exception("internal error")
        return JSONResponse(ApiError(500, "internal server error").body(), status_code=500)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        batcher: Batcher = app.state.batcher
        return {"status": "ok", "model": settings.model_id, "queued": len(batcher.queue)}

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {
            "object": "list",
            "data": [{"id": settings.model_id, "object": "model", "created": created, "owned_by": "moai"}],
        }

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        check_content_type(request.headers.get("content-type"))
        body = await read_body(request, settings.limits.max_body_bytes)
        data = parse_json(body, settings.limits)
        # image decoding and the prompt's tokenisation are CPU work: off the event loop
        chat = await asyncio.to_thread(parse_chat_request, data, settings.model_id, settings.limits)
        chat.prompt_tokens = count_prompt_tokens(engine, chat)
        if chat.prompt_tokens > settings.limits.max_prompt_tokens:
            raise ApiError(
                400,
                f"the prompt is {chat.prompt_tokens} tokens, more than the limit of "
                f"{settings.limits.max_prompt_tokens}",
                "messages",
                "context_length_exceeded",
            )
        job = app.state.batcher.submit(chat)
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if chat.stream:
            return StreamingResponse(
                stream_events(job, completion_id, settings.model_id), media_type="text/event-stream"
            )
        try:
            while True:
                event = await job.events.get()
                if isinstance(event, ApiError):
                    raise event
                if isinstance(event, Result):
                    return completion(event, completion_id, settings.model_id)
        finally:
            job.cancelled = True  # a client that went away frees its row (no-op once answered)

    return app


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused (413) as soon as it passes ``limit`` bytes, declared or not."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, f"request body is {declared} bytes, more than the limit of {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body is more than the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def count_prompt_tokens(engine: Engine, chat: ChatRequest) -> int:
    """Tokens of the prompt as the model sees it (image tokens, the conversation so far, the question)."""
    return len(engine.processor.encode_turns([*chat.history, (chat.question, None)]).ids)


def usage(result: Result) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def extension(result: Result) -> dict[str, Any] | None:
    """The ``moai`` response field, when the request asked for it."""
    out = {}
    if result.aux_text is not None:
        out["aux_text"] = result.aux_text
    if result.gate_weights is not None:
        out["gate_weights"] = result.gate_weights
    return out or None


def completion(result: Result, completion_id: str, model_id: str) -> dict[str, Any]:
    body = {
        "id": completion_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model_id,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.text},
                "finish_reason": result.finish_reason,
            }
        ],
        "usage": usage(result),
    }
    if (ext := extension(result)) is not None:
        body["moai"] = ext
    return body


def _chunk(completion_id: str, model_id: str, delta: dict, finish: str | None = None) -> dict[str, Any]:
    return {
        "id": completion_id,
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model_id,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def _sse(data: dict[str, Any] | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


async def stream_events(job: Job, completion_id: str, model_id: str) -> AsyncIterator[str]:
    """Server-sent events of one streamed answer; a client that disconnects cancels its row."""
    try:
        yield _sse(_chunk(completion_id, model_id, {"role": "assistant", "content": ""}))
        while True:
            event = await job.events.get()
            if isinstance(event, str):
                yield _sse(_chunk(completion_id, model_id, {"content": event}))
            elif isinstance(event, ApiError):
                yield _sse(event.body())
                break
            else:
                last = _chunk(completion_id, model_id, {}, event.finish_reason)
                if (ext := extension(event)) is not None:
                    last["moai"] = ext
                yield _sse(last)
                if job.request.include_usage:
                    yield _sse({**_chunk(completion_id, model_id, {}), "choices": [], "usage": usage(event)})
                break
        yield _sse("[DONE]")
    finally:
        job.cancelled = True
