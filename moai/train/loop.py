"""The two-step MoAI training loop (paper arXiv 2403.07508 §3.3, settings §4), one explicit loop on accelerate.

    setup -> for step: micro-batches, global label count, forward/backward, clip, optimizer, schedule,
             log -> checkpoint every N -> final save

Equivalence across process counts: batches are drawn from a deterministic global stream (each rank takes
its slice), the loss is normalised by the *global* number of label tokens (across ranks and accumulation
micro-batches), and the step-1 expert draw is seeded from the step, so every rank draws the same experts.
DDP runs with unused-parameter detection (unchosen experts and the gates get no gradient in step 1).

SIGINT / SIGTERM: the current step finishes, a checkpoint is saved at it and `Interrupted` is raised (the
CLI prints one line and exits with 130 / 143); ``--resume`` continues from it without repeating a step.

The model a stage starts from is built in moai/train/build.py; checkpoints are written and restored in
moai/train/checkpoint.py.
"""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..model.constants import (
    IGNORE_INDEX,
)
from ..model.mixer import gate_statistics
from ..model.modeling import TRAINABLE_POLICIES, MoAIForConditionalGeneration
from ..model.processing import MoAIProcessor
from ..perception.settings import AuxSettings
from .build import build_model
from .checkpoint import (
    check_same_image_slot,
    gathered_state,
    is_sharded,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .curves import read_metrics
from .data import (
    AuxResolver,
    Collator,
    DataError,
    DataReport,
    Example,
    ImageDropout,
    Mixture,
    ModuleDropout,
    Problem,
    load_examples,
    split_turns,
)
from .lora import add_lora, merge_lora
from .referent import REFERENT_KEYS, ReferentHead, ReferentTarget


# -- optimizer ------------------------------------------------------------------------------------
def optimizer_groups(model: MoAIForConditionalGeneration, config: TrainConfig) -> list[dict[str, Any]]:
    """The trainable parameters as AdamW groups: the MoAI modules (compressor, experts, gates) at ``lr``, the
    others the policy trains at ``lr * other_lr_scale`` (one group when the scale is 1 or nothing else
    trains). The schedule (`lr_lambda`) scales every group alike."""
    names = set(model.moai_parameter_names())
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    moai = [p for name, p in trainable if name in names]
    others = [p for name, p in trainable if name not in names]
    if config.other_lr_scale == 1.0 or not others:
        return [{"name": "all", "params": [p for _, p in trainable], "lr": config.lr}]  # the model's order
    return [
        {"name": "moai", "params": moai, "lr": config.lr},
        {"name": "others", "params": others, "lr": config.lr * config.other_lr_scale},
    ]


def lr_lambda(config: TrainConfig) -> Callable[[int], float]:
    """Linear warm-up, then cosine from ``lr`` to ``min_lr`` at ``max_steps``."""
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0

    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        span = max(1, config.max_steps - config.warmup_steps)
        progress = min(1.0, (step - config.warmup_steps) / span)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# -- metrics --------------------------------------------------------------------------------------
def _restart_metrics(path: Path, last_step: int) -> None:
    """Keep the metric lines of steps ``<= last_step`` (all gone for 0), atomically: a resumed run appends
    from ``last_step + 1``, so no step is ever logged twice. Unparseable lines (a write cut by a kill)
    are dropped."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            step = json.loads(line)["step"]
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
        if isinstance(step, int) and step <= last_step:
            keep.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)


# -- signals --------------------------------------------------------------------------------------
class Interrupted(BaseException):
    """SIGINT or SIGTERM stopped the run; ``checkpoint`` holds the steps done (None: nothing new saved).

    A `BaseException`, as `KeyboardInterrupt` is, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int, step: int | None = None, checkpoint: Path | None = None) -> None:
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        name = signal.Signals(signum).name
        if checkpoint is None:
            self.summary = f"interrupted by {name}; nothing saved since the last checkpoint"
            super().__init__(self.summary)
        else:
            self.summary = f"interrupted by {name} at step {step}; checkpoint {checkpoint}"
            super().__init__(f"{self.summary} (continue with --resume)")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process ended by that signal (130, 143)."""
        return 128 + self.signum


class StopSignals:
    """Catch SIGINT and SIGTERM while training (main thread only; restored on exit).

    Before `defer` a signal raises `Interrupted` at once (nothing to save yet). After it, the first signal
    is only recorded (``received``): the loop finishes its step, saves a checkpoint and then stops; a
    second signal raises at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferred = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def defer(self) -> None:
        self._deferred = True

    def _handle(self, signum: int, _frame: object) -> None:
        if not self._deferred or self.received is not None:
            raise Interrupted(signum)
        self.received = signum


# -- the loop -------------------------------------------------------------------------------------
DISTRIBUTED_LEFTOVERS: list[Any] = []
"""The accelerator, DDP model and optimizer of each multi-process run, kept alive after `train` returns.
Freeing them destroys the gloo process group from the main thread, which holds the GIL while it joins the
group's worker thread, and that thread may be waiting for the GIL to release the tensors of the last
collective: a deadlock (seen in CI). Exiting normally with the group alive aborts instead ("terminate called
without an active exception"). So `moai train` ends a multi-process run with ``os._exit`` once its output is
flushed (moai/train/cli.py), and nothing tears the group down."""


def train(config: TrainConfig, *, resume: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run one training stage; return the summary (also written to ``output_dir/summary.json``).

    SIGINT / SIGTERM during the steps save a checkpoint at the last finished step and raise `Interrupted`
    (before the steps: `Interrupted` at once, nothing to save).
    """
    with StopSignals() as stop:
        return _train(config, resume, log, stop)


def make_accelerator(config: TrainConfig):
    """A fresh accelerate ``Accelerator`` for the config's precision (CPU when there is no GPU)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs

    use_cuda = torch.cuda.is_available()
    if config.precision == "fp16" and not use_cuda:
        raise ValueError("precision fp16 needs a GPU; use bf16 or fp32 on CPU")
    AcceleratorState._reset_state()  # a previous in-process run may have fixed another precision
    return Accelerator(
        cpu=not use_cuda,
        mixed_precision={"fp32": "no", "bf16": "bf16", "fp16": "fp16"}[config.precision],
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )


def aux_settings(config: TrainConfig, processor: MoAIProcessor) -> AuxSettings:
    """How this run's aux text was made, for the saved model (``aux_config.json``): the run's perception
    preset, or the one of the model it started from when the run names none."""
    start = Path(config.model)
    preset = config.perception_preset or (
        AuxSettings.load(start).perception_preset if start.is_dir() else AuxSettings().perception_preset
    )
    return AuxSettings(
        perception_preset=preset, verbalizer=config.verbalizer, map_style=_map_style(processor)
    )


def _map_style(processor: MoAIProcessor) -> str:
    """The panoptic colour-map style the processor's aux-map mode expects."""
    return "official" if processor.aux_map_mode == "official" else "corrected"


def _load_mixture(
    config: TrainConfig, processor: MoAIProcessor, collator: Collator, report: DataReport, say: Callable
) -> Mixture:
    """Validate every record (images decoded), resolve the aux inputs, drop (and report) the samples that
    truncation leaves unusable; under ``strict`` the first problem aborts with a `DataError`."""
    resolver = None
    if config.aux in ("cache", "perceive"):
        resolver = AuxResolver(
            config.aux,
            config.perception_cache,
            config.perception_preset,
            config.verbalizer,
            _map_style(processor),
        )
    files = []
    for source in config.data:
        examples = load_examples(source, strict=config.strict, report=report, log=say)
        if config.aux == "none":
            examples = [Example(**{**e.__dict__, "aux_text": "", "aux_map": None}) for e in examples]
        elif resolver is not None:
            examples, missing = resolver.resolve(examples)
            for problem in missing:
                if config.strict:
                    raise DataError(str(problem))
                report.problems.append(problem)
                say(f"skipped {problem}")
        if config.split_turns:  # after the aux is resolved: a record's turns share its aux text and map
            records, examples = len(examples), split_turns(examples)
            say(f"split_turns: {records} conversations of {source.path} -> {len(examples)} one-turn samples")
        usable = []
        for example in examples:
            reason = collator.check(example)
            if reason is None:
                usable.append(example)
                continue
            problem = Problem(example.source, example.line, reason)
            if config.strict:
                raise DataError(str(problem))
            report.fully_masked.append(problem)
            say(f"skipped {problem}")
        files.append(usable)
    if not any(files):
        names = ", ".join(s.path for s in config.data)
        first = (report.problems + report.fully_masked)[:1]
        raise ValueError(
            f"the data mixture is empty: no valid examples in {names}"
            + (f"; first problem {first[0]}" if first else "")
        )
    return Mixture(files, [s.weight for s in config.data], config.seed)


def _start(
    run: Path,
    resume: bool,
    model,
    optimizer,
    scheduler,
    main_process: bool,
    say: Callable,
    head: nn.Module | None = None,
) -> tuple[int, Path | None]:
    """(first step, checkpoint resumed from): the latest checkpoint under ``resume``, else step 0.

    ``metrics.jsonl`` keeps only the lines of the steps before the first one, so that no step is logged
    twice; a fresh start (no ``--resume``, or no checkpoint to resume from) starts it empty.
    """
    checkpoint = latest_checkpoint(run) if resume else None
    if resume and checkpoint is None:
        say(f"--resume: no checkpoint in {run / 'checkpoints'}, starting from step 0")
    start = 0 if checkpoint is None else load_checkpoint(checkpoint, model, optimizer, scheduler, head)
    if checkpoint is not None:
        say(f"resumed from {checkpoint} at step {start}")
    if main_process:
        _restart_metrics(run / "metrics.jsonl", start)
    return start, checkpoint


def _referent_target(config: TrainConfig, model: MoAIForConditionalGeneration):
    """The run's `ReferentTarget` (its head seeded by ``seed``), or None when ``referent_weight`` is 0."""
    if config.referent_weight == 0:
        return None
    if not any(source.scenes for source in config.data):
        raise ValueError("referent_weight > 0 needs the ground truth: give a data source its scenes")
    layers = model.config.text_config.num_hidden_layers
    if config.referent_layer > layers:
        raise ValueError(f"referent_layer {config.referent_layer}: the LLM has {layers} layers")
    mixers = model.config.mixer_config.layers
    # a policy that trains the MoAI modules alone has no trainable weight before the first mixer
    only_moai = set(TRAINABLE_POLICIES[config.trainable]) <= {"compressor", "mixers"}
    if only_moai and mixers and config.referent_layer <= min(mixers):
        raise ValueError(
            f"referent_layer {config.referent_layer}: reads the LLM's state before its first mixer (layer "
            f"{min(mixers)}), so with trainable {config.trainable} its loss trains nothing; use {min(mixers) + 1} or more"
        )
    with torch.random.fork_rng(devices=[]):  # drawn from the run's seed, the global generator left as it was
        torch.manual_seed(config.seed)
        head = ReferentHead(model.config.text_config.hidden_size)
    return ReferentTarget(head, config.referent_weight, config.referent_layer)


def _stop_signal(stop: StopSignals, accelerator) -> int | None:
    """The signal that asked the run to stop, agreed on by all processes (any one of them received it)."""
    local = stop.received or 0
    if accelerator.num_processes == 1:
        return local or None
    anyone = int(accelerator.reduce(torch.tensor(int(local > 0), device=accelerator.device), "sum"))
    return (local or signal.SIGTERM) if anyone else None


@dataclass
class StepMetrics:
    """What one optimizer step measured; sums over all processes."""

    loss: float
    """The step's loss (normalised by the global label count, so a sum over micro-batches and ranks)."""
    grad_norm: float | None
    """Gradient norm before clipping (None without clipping)."""
    label_tokens: int
    """Label tokens of the step (all micro-batches, all processes)."""
    tokens: int
    """Real (non-padding) tokens of the step, all processes."""
    gates: dict
    """`gate_statistics` of the last micro-batch of this process."""
    referent_loss: float | None = None
    """The referent target's mean squared error over the step's targets (None without the target)."""


def micro_batch_seed(seed: int, step: int, micro: int) -> int:
    """Seed of the step-1 expert draws of one micro-batch: the same on every rank and on a resumed run."""
    return seed * 1_000_003 + step * 101 + micro


def train_step(
    model: torch.nn.Module,
    batches: list[dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    accelerator,
    *,
    step: int,
    seed: int,
    max_grad_norm: float,
    referent: ReferentTarget | None = None,
) -> StepMetrics:
    """One optimizer step over this process's micro-batches: what `train` runs per step (and bench/train.py times).

    The loss of every micro-batch is normalised by the *global* label count (all ranks and micro-batches),
    so that accumulation and data parallelism equal one large batch; gradients are synchronised on the
    last micro-batch only; the mixers' step-1 generator is seeded per micro-batch (`micro_batch_seed`).
    Then: clip the gradient norm (``max_grad_norm`` > 0), optimizer step, schedule step, ``zero_grad``.
    ``referent``: add the referent target's loss (moai/train/referent.py), its squared errors normalised by the
    step's global target count; the batches then carry `REFERENT_KEYS`. Its head is not part of the DDP-wrapped
    model, so its gradients are averaged over the processes here, before the clip (`sync_head`).
    """
    unwrapped = accelerator.unwrap_model(model)
    world = accelerator.num_processes
    local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)
    count = accelerator.reduce(torch.tensor(local, device=accelerator.device), reduction="sum")
    generator = unwrapped.mixer_settings.generator
    step_loss = torch.zeros((), device=accelerator.device)
    targets = 0
    if referent is not None:
        local_targets = sum(len(b["referent_rows"]) for b in batches)
        targets = int(
            accelerator.reduce(torch.tensor(local_targets, device=accelerator.device), reduction="sum")
        )
    referent_sum = torch.zeros((), device=accelerator.device)
    gates: dict = {}
    for micro, batch in enumerate(batches):
        if generator is not None:
            generator.manual_seed(micro_batch_seed(seed, step, micro))
        sync = nullcontext() if micro == len(batches) - 1 else accelerator.no_sync(model)
        inputs = {k: v for k, v in batch.items() if k not in REFERENT_KEYS}
        with sync, accelerator.autocast():
            out = model(**inputs, num_items_in_batch=count, output_hidden_states=referent is not None)
            loss = out.loss
            if referent is not None and targets:
                hidden = out.hidden_states[referent.layer]  # [B, S, D]
                where = (batch["referent_rows"], batch["referent_cols"], batch["referent_xy"])
                referent_loss = referent.head(hidden, *where) / targets
                loss = loss + referent.weight * referent_loss
                referent_sum += referent_loss.detach()
            accelerator.backward(loss * world)  # DDP averages over ranks; the loss is a global mean
        step_loss += out.loss.detach()
        gates = gate_statistics(
            out.gate_weights, batch["mm_token_type_ids"], unwrapped.language_model.mixer_layers
        )
    if referent is not None and world > 1:
        sync_head(referent.head, accelerator)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = float(accelerator.clip_grad_norm_(params, max_grad_norm)) if max_grad_norm > 0 else None
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    real = torch.tensor(sum(int(b["attention_mask"].sum()) for b in batches), device=accelerator.device)
    return StepMetrics(
        loss=float(accelerator.reduce(step_loss, reduction="sum")),
        grad_norm=grad_norm,
        label_tokens=int(count),
        tokens=int(accelerator.reduce(real, "sum")),
        gates=gates,
        referent_loss=float(accelerator.reduce(referent_sum, reduction="sum"))
        if referent is not None
        else None,
    )


def sync_head(head: torch.nn.Module, accelerator) -> None:
    """Average the referent head's gradients over the processes, as DDP averages the wrapped model's: each
    process's loss is multiplied by the process count before its backward, so the mean is the gradient of the
    global loss. A process whose batches held no target has none yet: zeros."""
    for p in head.parameters():
        grad = torch.zeros_like(p) if p.grad is None else p.grad
        p.grad = accelerator.reduce(grad, reduction="mean")


def _train(
    config: TrainConfig, resume: bool, log: Callable[[str], None], stop: StopSignals
) -> dict[str, Any]:
    """`train` with its signal handlers installed: setup, data check, the steps, the final save."""
    if not config.data:
        raise ValueError("config.data is empty: list at least one LLaVA data file")
    run = Path(config.output_dir)
    if resume and latest_checkpoint(run) is not None:  # every rank, before rank 0 rewrites config.yaml
        check_same_image_slot(config, run)
    accelerator = make_accelerator(config)
    main_process = accelerator.is_main_process
    say = log if main_process else (lambda _msg: None)
    if run.exists() and not run.is_dir():
        raise ValueError(f"output_dir {run} exists and is not a directory")
    if main_process:
        run.mkdir(parents=True, exist_ok=True)
        config.save(run / "config.yaml")

    model, processor = build_model(config)
    if config.trainable.endswith("+lora"):
        add_lora(model, config)
    n_trainable = model.set_trainable(config.trainable)
    n_total = sum(p.numel() for p in model.parameters())
    say(f"parameters: {n_total:,} total, {n_trainable:,} trainable ({config.trainable}); step {config.step}")
    if n_trainable == 0:
        raise ValueError(
            f"trainable policy {config.trainable!r} leaves nothing to train for step {config.step}"
        )
    if config.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    report = DataReport()
    dropout = None
    if config.module_dropout > 0:
        if config.aux not in ("cache", "perceive"):
            raise ValueError(
                f"config.module_dropout needs the perception of each sample (aux: cache or perceive), "
                f"not aux: {config.aux}"
            )
        dropout = ModuleDropout(config.module_dropout, config.seed, config.verbalizer, _map_style(processor))
    for i, source in enumerate(config.data):
        if source.drop_modules and config.aux not in ("cache", "perceive"):
            raise ValueError(
                f"data[{i}].drop_modules needs the perception of each sample (aux: cache or perceive), "
                f"not aux: {config.aux}"
            )
    referent = _referent_target(config, model)
    collator = Collator(
        processor,
        config.max_length,
        model.config.use_aux_map and bool(model.config.mixer_config.layers),
        dropout,
        ImageDropout(config.image_dropout, config.seed) if config.image_dropout > 0 else None,
        config.image_slot,
        referents=referent is not None,
    )
    mixture = _load_mixture(config, processor, collator, report, say)
    say(f"data: {report.counts()}")

    groups = optimizer_groups(model, config)
    if referent is not None:
        referent.head.to(accelerator.device)
        groups.append({"name": "referent_head", "params": list(referent.head.parameters()), "lr": config.lr})
    say(
        "learning rates: "
        + ", ".join(f"{g['name']} {g['lr']:g} ({sum(p.numel() for p in g['params']):,})" for g in groups)
    )
    optimizer = torch.optim.AdamW(
        groups, lr=config.lr, betas=config.betas, eps=config.adam_eps, weight_decay=config.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(config))
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if config.trainable.endswith("+lora") and is_sharded(unwrapped):
        raise ValueError(
            f"trainable {config.trainable!r}: merging LoRA adapters into FSDP2-sharded weights is not supported; "
            "train it with ddp.yaml or one process"
        )
    head = referent.head if referent is not None else None
    start, resumed_from = _start(run, resume, unwrapped, optimizer, scheduler, main_process, say, head)
    metrics_path = run / "metrics.jsonl"

    writer = None
    if main_process and config.tensorboard:
        try:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(str(run / "tensorboard"))
        except ImportError:
            say("tensorboard not installed: metrics go to metrics.jsonl only")
    bar = None
    if main_process and config.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.max_steps, initial=start, desc=f"train {config.step}", unit="step")

    def save(step: int) -> Path:
        """A checkpoint at ``step`` (written by the main process; every process waits for it)."""
        accelerator.wait_for_everyone()
        gathered = gathered_state(unwrapped, optimizer)
        if main_process:
            save_checkpoint(
                run, step, unwrapped, optimizer, scheduler, config.keep_checkpoints, gathered, head
            )
        accelerator.wait_for_everyone()
        return run / "checkpoints" / f"step-{step:07d}"

    world, rank = accelerator.num_processes, accelerator.process_index
    per_step = config.batch_size * world
    model.train()
    logged = (
        [r["loss"] for r in read_metrics(run) if r.get("step") == start] if start and main_process else []
    )
    last_loss = logged[-1] if logged else float("nan")  # a resumed run with no step left ends with it
    started = time.perf_counter()
    stop.defer()  # from here on a signal stops the run after the current step, with a checkpoint
    done = start
    try:
        for step in range(start, config.max_steps):
            t0 = time.perf_counter()
            batches = []
            for micro in range(config.grad_accum):
                base = (step * config.grad_accum + micro) * per_step + rank * config.batch_size
                positions = [base + j for j in range(config.batch_size)]
                examples = [mixture[p] for p in positions]
                batch = collator(examples, positions)
                batches.append({k: v.to(accelerator.device) for k, v in batch.items()})
            metrics = train_step(
                model,
                batches,
                optimizer,
                scheduler,
                accelerator,
                step=step,
                seed=config.seed,
                max_grad_norm=config.max_grad_norm,
                referent=referent,
            )
            last_loss = metrics.loss
            elapsed = time.perf_counter() - t0
            done = step + 1
            if main_process and (done % config.log_every == 0 or done == config.max_steps):
                record = {
                    "step": done,
                    "loss": last_loss,
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": metrics.grad_norm,
                    "tokens_per_s": metrics.tokens / elapsed,
                    "samples_per_s": per_step * config.grad_accum / elapsed,
                    "label_tokens": metrics.label_tokens,
                    "gates": metrics.gates,
                    **({"referent_loss": metrics.referent_loss} if referent is not None else {}),
                }
                with metrics_path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                if writer is not None:
                    writer.add_scalar("train/loss", last_loss, done)
                    writer.add_scalar("train/lr", record["lr"], done)
                    for layer, stats in metrics.gates.items():
                        for name, value in stats.items():
                            writer.add_scalar(f"gates/{layer}/{name}", value, done)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last_loss:.4f}")
            if done == config.max_steps:
                break  # the final save below; a signal now no longer stops anything
            saved = config.save_every and done % config.save_every == 0
            if saved:
                save(done)
            signum = _stop_signal(stop, accelerator)
            if signum is not None:
                checkpoint = run / "checkpoints" / f"step-{done:07d}" if saved else save(done)
                raise Interrupted(signum, done, checkpoint)
    except DataError as err:  # an image unreadable since the check: keep the steps done, then stop
        if done > start:
            raise DataError(f"{err}; steps up to {done} saved in {save(done)}") from None
        raise
    finally:
        if bar is not None:
            bar.close()
        if writer is not None:
            writer.close()
    accelerator.wait_for_everyone()
    summary = {
        "step": config.step,
        "steps": config.max_steps,
        "start_step": start,
        "resumed_from": str(resumed_from) if resumed_from is not None else None,
        "final_loss": last_loss,
        "trainable_params": n_trainable,
        "total_params": n_total,
        "processes": world,
        "distributed_type": str(accelerator.distributed_type.value),
        "seconds": time.perf_counter() - started,
        "data": report.counts(),
        "bad_records": [str(p) for p in report.problems],
        "fully_masked": [str(p) for p in report.fully_masked],
    }
    gathered = gathered_state(unwrapped, optimizer)
    if main_process:
        save_checkpoint(
            run, config.max_steps, unwrapped, optimizer, scheduler, config.keep_checkpoints, gathered, head
        )
        if config.trainable.endswith("+lora"):
            say(f"merged {merge_lora(unwrapped)} LoRA adapters into the LLM weights of final/")
        # FSDP2: the whole weights gathered above, not the model's shards
        unwrapped.save_pretrained(run / "final", state_dict=None if gathered is None else dict(gathered[0]))
        processor.save_pretrained(run / "final")
        aux_settings(config, processor).save(run / "final")
        (run / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        say(f"done: {config.max_steps} steps, final loss {last_loss:.4f}; model in {run / 'final'}")
        say(f"summary: {summary['data']}")
    if world > 1:
        accelerator.wait_for_everyone()  # rank 0 must finish writing before the others go
        DISTRIBUTED_LEFTOVERS.append((accelerator, model, optimizer))
    return summary
