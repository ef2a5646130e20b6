"""Micro-batching: queued chat requests answered together in one ``generate`` call.

Requests wait in a bounded queue (a full queue is a 429, never unbounded growth). A single worker takes the
first waiting request, waits up to ``max_wait_s`` for more (at most ``max_batch``), groups them by sampling
settings (greedy requests share a call; a seeded sampled request runs alone, so its seed decides its
tokens), and runs each group through the engine (`moai.engine.Engine.prepare`, then ``generate``) on the
engine's worker thread, so the event loop keeps serving. During ``generate`` a stopping criterion (`BatchDecoder`)
sees every new token of every row: it decodes each row's text so far, sends the new text to the request
(streaming), ends a row at its own ``max_tokens``, at a stop string, or when its client has gone, and the
call ends when every row has.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .protocol import ApiError, ChatRequest

if TYPE_CHECKING:
    from ..engine import Engine


@dataclass(frozen=True)
class BatchSettings:
    """How requests are grouped into ``generate`` calls."""

    max_batch: int = 8
    """Most requests in one ``generate`` call (1: no micro-batching)."""
    max_wait_s: float = 0.01
    """How long the first waiting request waits for others to join its batch."""
    max_queue: int = 64
    """Most requests waiting for a batch; more is a 429."""


@dataclass
class Result:
    """A finished answer."""

    text: str
    finish_reason: str
    """``stop`` (end of sequence or a stop string), ``length`` (``max_tokens``) or ``cancelled``."""
    completion_tokens: int
    prompt_tokens: int
    aux_text: str | None = None
    gate_weights: dict | None = None


@dataclass
class Job:
    """One request in flight: its events (text deltas, then a `Result` or an `ApiError`) arrive on ``events``."""

    request: ChatRequest
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    cancelled: bool = False
    """Set when the client has gone: its row stops at the next token."""

    def send(self, event: Any) -> None:
        """Thread-safe: hand an event to the request's coroutine."""
        self.loop.call_soon_threadsafe(self.events.put_nowait, event)


class Row:
    """One request's generated tokens and text during a batched ``generate``."""

    def __init__(self, job: Job, tokenizer: Any, eos_ids: set[int]) -> None:
        self.job, self.tokenizer, self.eos_ids = job, tokenizer, eos_ids
        self.tokens: list[int] = []
        self.text = ""
        self.sent = 0  # characters of ``text`` already sent
        self.done: str | None = None  # the finish reason once the row has ended

    def add(self, token: int) -> None:
        if self.done is not None:
            return
        request = self.job.request
        if self.job.cancelled:
            self.done = "cancelled"
            return
        self.tokens.append(token)
        if token in self.eos_ids:
            self.done = "stop"
        else:
            self.text = self.tokenizer.decode(self.tokens, skip_special_tokens=True).lstrip()
            cut = min((i for i in (self.text.find(s) for s in request.stop) if i >= 0), default=-1)
            if cut >= 0:
                self.text, self.done = self.text[:cut], "stop"
            elif len(self.tokens) >= request.max_tokens:
                self.done = "length"
        self.flush()

    def flush(self) -> None:
        """Send the text not sent yet, holding back an incomplete character and a possible stop-string start."""
        end = len(self.text)
        if self.done is None:
            if self.text.endswith("\ufffd"):
                end -= 1
            shown = self.text[:end]
            stops = self.job.request.stop
            end -= max((k for s in stops for k in range(1, len(s)) if shown.endswith(s[:k])), default=0)
        if end > self.sent and self.job.request.stream:
            self.job.send(self.text[self.sent : end])
            self.sent = end


class BatchDecoder(StoppingCriteria):
    """Called by ``generate`` after each new token: feeds the rows, returns which have ended ([B] bool)."""

    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def __call__(
        self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any
    ) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist()):
            row.add(token)
        return torch.tensor([row.done is not None for row in self.rows], device=input_ids.device)


class Batcher:
    """The request queue and the worker that answers it in micro-batches (module docstring)."""

    def __init__(self, engine: Engine, settings: BatchSettings) -> None:
        self.engine, self.settings = engine, settings
        self.queue: deque[Job] = deque()
        self.ready = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.batches = 0  # generate calls made (for tests and benchmarks)
        self.cancelled_rows = 0  # requests ended (or never started) because their client left
        self.last_cancelled_tokens = 0  # tokens such a row had generated when it ended

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    def submit(self, request: ChatRequest) -> Job:
        """Queue a request; a full queue is a 429."""
        if len(self.queue) >= self.settings.max_queue:
            raise ApiError(429, f"the server is busy ({len(self.queue)} requests waiting); retry later")
        job = Job(request, asyncio.get_running_loop())
        self.queue.append(job)
        self.ready.set()
        return job

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.ready.clear()
                await self.ready.wait()
            deadline = time.monotonic() + self.settings.max_wait_s
            while len(self.queue) < self.settings.max_batch and time.monotonic() < deadline:
                await asyncio.sleep(min(0.002, max(0.0, deadline - time.monotonic())))
            taken = [self.queue.popleft() for _ in range(min(self.settings.max_batch, len(self.queue)))]
            groups: dict[tuple, list[Job]] = {}
            for job in taken:
                if job.cancelled:  # its client left while it waited
                    self.cancelled_rows += 1
                    self.last_cancelled_tokens = 0
                else:
                    groups.setdefault(job.request.sampling_key, []).append(job)
            for jobs in groups.values():
                await loop.run_in_executor(self.engine.worker, self._generate, jobs)

    def _generate(self, jobs: list[Job]) -> None:
        """Answer one group in one ``generate`` call (worker thread); every job gets a Result or an error."""
        try:
            results = self._answer(jobs)
        except Exception:  # a bug, not the client's: a 500 without details for everyone in the call
            import logging

            logging.getLogger("moai.serve").exception("generate failed")
            error = ApiError(500, "internal error while generating the answer")
            for job in jobs:
                job.send(error)
            return
        for job, result in zip(jobs, results):
            job.send(result)

    @torch.no_grad()
    def _answer(self, jobs: list[Job]) -> list[Result]:
        engine = self.engine
        requests = [job.request for job in jobs]
        batch, aux, _ = engine.prepare(
            [r.image for r in requests], [r.question for r in requests], history=[r.history for r in requests]
        )
        tokenizer = engine.processor.tokenizer
        eos = engine.model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        rows = [Row(job, tokenizer, eos_ids) for job in jobs]
        first = requests[0]
        sampling: dict[str, Any] = {"do_sample": False}
        if first.temperature > 0:
            sampling = {"do_sample": True, "temperature": first.temperature, "top_p": first.top_p}
            if first.seed is not None:
                torch.manual_seed(first.seed)
        self.batches += 1
        engine.generate(
            batch,
            max(r.max_tokens for r in requests),
            stopping_criteria=StoppingCriteriaList([BatchDecoder(rows)]),
            **sampling,
        )
        gates = engine.gate_weights(batch) if any(r.want_gates for r in requests) else [None] * len(rows)
        prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
        results = []
        for row, request, (aux_text, _), weights, n_prompt in zip(rows, requests, aux, gates, prompt_tokens):
            row.done = row.done or "length"
            if row.done == "cancelled":
                self.cancelled_rows += 1
                self.last_cancelled_tokens = len(row.tokens)
            row.flush()
            results.append(
                Result(
                    text=row.text,
                    finish_reason=row.done,
                    completion_tokens=len(row.tokens),
                    prompt_tokens=int(n_prompt),
                    aux_text=aux_text if request.want_aux else None,
                    gate_weights=weights if request.want_gates else None,
                )
            )
        return results
