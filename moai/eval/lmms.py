# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""The lmms-eval model plugin: ``python -m lmms_eval --model moai --model_args pretrained=DIR --tasks mme``
(docs/eval.md, lmms-eval).

lmms-eval finds the model through the ``lmms_eval.models`` entry point of this package (pyproject.toml), which
loads `manifest`; `MoAILmms` is a "simple" lmms-eval model: each request's ``args`` is ``(context,
generation_kwargs, doc_to_visual, doc_id, task, split)``, the document is ``self.task_dict[task][split][doc_id]``
(the evaluator fills ``task_dict``) and the image is ``doc_to_visual(doc)``. Answers come from `Engine.answer`,
batched, so the prompt template, perception and verbalization are exactly those of ``moai predict``.

Only generation is supported: ``loglikelihood`` (lmms-eval's multiple-choice scoring by likelihood) and
multi-round generation raise ``NotImplementedError``. A document that does not give exactly one usable image
is a bad record: reported (logged with its task, split and id, kept in ``problems``) and answered with the
empty string, which the task scores as wrong; ``strict=True`` aborts on the first one instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmms_eval.api.instance import Instance
from lmms_eval.api.model import lmms
from loguru import logger
from PIL import Image
from tqdm import tqdm

from ..io import Problem, load_image

#: The name ``--model`` takes.
MODEL_NAME = "moai"
#: Where lmms-eval imports the model class from (`manifest`).
CLASS_PATH = "moai.eval.lmms.MoAILmms"
#: Length of the ``Instance.args`` of a simple model's ``generate_until`` request.
SIMPLE_ARGS = 6
#: The generation_kwargs keys the plugin reads; any other is ignored with a warning.
KNOWN_GENERATION_KEYS = frozenset(
    {"until", "max_new_tokens", "temperature", "top_p", "do_sample", "num_beams"}
)


def manifest() -> Any:
    """The lmms-eval ``ModelManifest`` of the ``lmms_eval.models`` entry point: ``moai`` -> `MoAILmms`."""
    from lmms_eval.models.registry_v2 import ModelManifest  # lmms-eval's registry, loaded when it asks

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


@dataclass(frozen=True)
class Generation:
    """The generation settings of one request (requests with equal settings are batched together)."""

    max_new_tokens: int
    temperature: float
    top_p: float | None
    num_beams: int

    def kwargs(self) -> dict[str, Any]:
        """`Engine.answer`'s generation arguments: greedy unless ``temperature > 0``."""
        out: dict[str, Any] = {"max_new_tokens": self.max_new_tokens}
        if self.temperature > 0:
            out.update(do_sample=True, temperature=self.temperature)
            if self.top_p is not None:
                out["top_p"] = self.top_p
        if self.num_beams > 1:
            out["num_beams"] = self.num_beams
        return out


def stop_strings(gen_kwargs: dict[str, Any], where: str) -> list[str]:
    """The ``until`` strings of a request (a string or a list; empty strings ignored)."""
    until = gen_kwargs.get("until") or []
    if isinstance(until, str):
        until = [until]
    if not isinstance(until, list | tuple) or not all(isinstance(s, str) for s in until):
        raise ValueError(
            f"{where}: generation_kwargs 'until' must be a string or a list of strings, got {until!r}"
        )
    return [s for s in until if s]


def cut_at_stop(text: str, until: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string, stripped."""
    end = min((i for i in (text.find(s) for s in until) if i >= 0), default=len(text))
    return text[:end].strip()


def single_image(visuals: Any, where: str) -> Image.Image:
    """The one RGB image of a document's ``doc_to_visual`` result; ``ValueError`` naming ``where`` when there
    is none, more than one (MoAI reads one image per question, paper §3), or it cannot be loaded."""
    items = list(visuals) if isinstance(visuals, list | tuple) else [visuals]
    items = [v for v in items if v is not None]
    if len(items) != 1:
        raise ValueError(f"{where}: {len(items)} visuals; MoAI answers about exactly one image per question")
    item = items[0]
    return load_image(item, name=f"{where}: {item}" if isinstance(item, str | Path) else where)


class MoAILmms(lmms):
    """MoAI as an lmms-eval model (``--model moai``).

    Args:
        pretrained: a saved MoAI directory (``moai train`` output); default: the bundled ShapesWorld model.
        batch_size: questions per `Engine.answer` call (lmms-eval's ``--batch_size``; ``auto`` is refused).
        max_batch_size: accepted for lmms-eval's ``--max_batch_size`` and unused (no ``auto`` batching).
        device: torch device of the language model (lmms-eval's ``--device``).
        max_new_tokens: used when a task's generation_kwargs set none.
        aux: ``on``, ``off`` or ``drop:MODULE[,MODULE...]``, the inference-time ablation of ``moai predict``.
        strict: raise on the first document without exactly one usable image instead of reporting it.
    """

    is_simple = True

    def __init__(
        self,
        pretrained: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int | None = None,
        device: str | None = "cpu",
        max_new_tokens: int | str = 16,
        aux: str = "on",
        strict: bool | str = False,
        **unknown: Any,
    ) -> None:
        super().__init__()
        if unknown:
            raise ValueError(
                f"--model_args: unknown argument(s) {', '.join(sorted(unknown))} for moai "
                "(expected pretrained, batch_size, device, max_new_tokens, aux, strict)"
            )
        del max_batch_size  # only meaningful with --batch_size auto, which is refused
        self.batch_size = _positive_int(batch_size, "batch_size")
        self.max_new_tokens = _positive_int(max_new_tokens, "max_new_tokens")
        self.strict = _boolean(strict, "strict")
        from ..engine import Engine, parse_aux  # heavy: model and perception code, not needed to list models

        self.drop = parse_aux(str(aux))
        self.engine = Engine.load(
            None if pretrained in (None, "") else str(pretrained), device=device or "cpu"
        )
        self.problems: list[Problem] = []
        self._ignored_keys: set[str] = set()

    @property
    def device(self) -> Any:
        """The language model's torch device (the evaluator reads it in multi-process runs)."""
        return self.engine.model.device

    # -- generation --------------------------------------------------------------------------------------
    def generate_until(self, requests: list[Instance]) -> list[str]:
        """One answer per request, in request order; see the module docstring for the request format.
        Requests with equal generation settings are answered ``batch_size`` at a time; images are loaded
        one batch at a time."""
        answers = [""] * len(requests)
        groups: dict[Generation, list[tuple[int, list[str]]]] = {}
        for index, request in enumerate(requests):
            generation, until = self._settings(request)
            groups.setdefault(generation, []).append((index, until))
        bar = tqdm(total=len(requests), disable=self.rank != 0, desc="moai answering")
        for generation, group in groups.items():
            for start in range(0, len(group), self.batch_size):
                chunk = group[start : start + self.batch_size]
                ready = [
                    (i, until, image) for i, until in chunk if (image := self._image(requests[i])) is not None
                ]
                if ready:
                    self._answer(requests, ready, generation, answers)
                bar.update(len(chunk))
        bar.close()
        return answers

    def _answer(
        self,
        requests: list[Instance],
        ready: list[tuple[int, list[str], Image.Image]],
        generation: Generation,
        answers: list[str],
    ) -> None:
        """Answer one batch, ``(request index, stop strings, image)`` each, into ``answers``."""
        found = self.engine.answer(
            [image for _, _, image in ready],
            [str(requests[i].args[0]) for i, _, _ in ready],
            drop=self.drop,
            **generation.kwargs(),
        )
        for (i, until, _), answer in zip(ready, found):
            answers[i] = cut_at_stop(answer.text, until)
            self.cache_hook.add_partial("generate_until", requests[i].args[:2], answers[i])

    def _settings(self, request: Instance) -> tuple[Generation, list[str]]:
        """A request's generation settings and stop strings (its ``generation_kwargs``, the plugin's
        ``max_new_tokens`` where it sets none)."""
        args = request.args
        if len(args) != SIMPLE_ARGS:
            raise ValueError(
                f"request of task {request.task_name}: {len(args)} arguments, expected the {SIMPLE_ARGS} of a "
                "simple model's generate_until (context, generation_kwargs, doc_to_visual, doc_id, task, split)"
            )
        _, gen_kwargs, _, doc_id, task, split = args
        where = f"{task}/{split} doc {doc_id}"
        gen_kwargs = dict(gen_kwargs or {})
        self._warn_ignored(gen_kwargs, task)
        generation = Generation(
            max_new_tokens=_positive_int(
                gen_kwargs.get("max_new_tokens", self.max_new_tokens), f"{where}: max_new_tokens"
            ),
            temperature=float(gen_kwargs.get("temperature") or 0.0),
            top_p=None if gen_kwargs.get("top_p") is None else float(gen_kwargs["top_p"]),
            num_beams=_positive_int(gen_kwargs.get("num_beams") or 1, f"{where}: num_beams"),
        )
        return generation, stop_strings(gen_kwargs, where)

    def _image(self, request: Instance) -> Image.Image | None:
        """The request's one image; None for a bad document, which is reported (``strict``: raised)."""
        _, _, doc_to_visual, doc_id, task, split = request.args
        where = f"{task}/{split} doc {doc_id}"
        try:
            return single_image(self._visuals(doc_to_visual, task, split, doc_id), where)
        except ValueError as err:  # ImageLoadError is a ValueError
            if self.strict:
                raise
            message = str(err)
            reason = message[len(where) + 2 :] if message.startswith(f"{where}: ") else message
            self.problems.append(Problem(f"{task}/{split}", int(doc_id), reason))
            logger.error(f"moai: {where}: {reason} (answered with an empty string)")
            return None

    def _visuals(self, doc_to_visual: Callable[[Any], Any], task: str, split: str, doc_id: int) -> Any:
        """``doc_to_visual`` of the document the evaluator stored in ``task_dict``."""
        try:
            doc = self.task_dict[task][split][doc_id]
        except (KeyError, IndexError) as err:
            raise ValueError(f"{task}/{split} doc {doc_id}: not in the model's task_dict ({err!r})") from None
        return doc_to_visual(doc)

    def _warn_ignored(self, gen_kwargs: dict[str, Any], task: str) -> None:
        """Warn once per key about generation_kwargs the plugin does not use (e.g. ``image_aspect_ratio``)."""
        new = set(gen_kwargs) - KNOWN_GENERATION_KEYS - self._ignored_keys
        if new:
            self._ignored_keys |= new
            logger.warning(f"moai: task {task}: generation_kwargs {', '.join(sorted(new))} ignored")

    # -- unsupported request types ---------------------------------------------------------------------
    def loglikelihood(self, requests: list[Instance]) -> list[tuple[float, bool]]:
        raise NotImplementedError(
            "moai: loglikelihood requests (multiple-choice tasks scored by likelihood) are not supported; "
            "use a generate_until task (docs/eval.md, lmms-eval)"
        )

    def generate_until_multi_round(self, requests: list[Instance]) -> list[str]:
        raise NotImplementedError(
            "moai: generate_until_multi_round (multi-round tasks) is not supported; use a generate_until "
            "task (docs/eval.md, lmms-eval)"
        )


def _positive_int(value: Any, name: str) -> int:
    """``value`` as an int >= 1; ``ValueError`` naming the argument otherwise."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or (isinstance(value, float) and value != number):
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return number


def _boolean(value: Any, name: str) -> bool:
    """A bool from a bool or lmms-eval's argument string (true/false/1/0)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes"}:
        return True
    if text in {"false", "0", "no"}:
        return False
    raise ValueError(f"{name}: expected true or false, got {value!r}")
