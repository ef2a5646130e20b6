"""Training-step throughput and memory on CPU: batch 8 vs batch 1 (the official MoAI code trains at batch 1).

Second line of ``make bench`` (writes bench/results/train.json); ``--quick`` for a smoke run that prints only
(one round, memory for tiny only). One step is ``moai.train.loop.train_step``. What is timed against what,
and how to read it: bench/README.md.
"""

from __future__ import annotations

import os

# as `make` and `import moai` do: idle OpenMP threads sleep, so a busy CPU does not collapse the timings
# (bench/threads.py); set before torch loads, unless the environment says otherwise
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import ctypes
import gc
import json
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from timing import clock, interleave, machine, now, paired_ratio, ratio, write

from moai.model.constants import IGNORE_INDEX
from moai.train.build import build_model
from moai.train.config import DataSource, TrainConfig
from moai.train.data import Collator, load_examples
from moai.train.loop import lr_lambda, make_accelerator, train_step
from moai.train.sample import write_dataset

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results" / "train.json"
BATCHES = (1, 8)
# name -> (TrainConfig.step, TrainConfig.trainable); the backbone (no mixers) trains PLoRA only: the model's
# set_trainable leaves the compressor frozen where no mixer runs
POLICIES = {
    "moai": ("step2", "moai"),
    "moai+plora": ("step2", "moai+plora"),
    "backbone+plora": ("base", "moai+plora"),
}
BASELINE = "backbone+plora"
N_EXAMPLES = 8  # one batch of 8; batch 1 takes the first
# the backbone (context) is timed at these batch sizes: at mid, a batch-8 step costs tens of seconds here
CONTEXT_BATCHES = {"tiny": (1, 8)}
CONTEXT_BATCHES_DEFAULT = (1,)
# rounds: at least MIN_ROUNDS; no new one after BUDGET_S seconds of timing. A mid round (five steps, two at
# batch 8) took ~100 s at load average 8 on the 2-core machine, so mid runs its minimum there.
MIN_ROUNDS, MIN_ROUNDS_DEFAULT = {"tiny": 5}, 2
BUDGET_S, BUDGET_S_DEFAULT = {"tiny": 20.0, "mid": 60.0}, 60.0
WARMUP_B8_BELOW_S = 1.0  # warm up at batch 8 too when the slowest batch-1 warm-up step is below this


# ---------------------------------------------------------------------------------------------------------
# Set-up and one training step (moai.train.loop.train_step on one process)
# ---------------------------------------------------------------------------------------------------------
def train_config(preset: str, step: str, trainable: str, data: Path) -> TrainConfig:
    return TrainConfig(
        model=preset, step=step, trainable=trainable, data=[DataSource(str(data))], progress=False
    )


class Model:
    """A model built like the loop builds it, its collated batches, and the collation time."""

    def __init__(self, preset: str, step: str, data: Path) -> None:
        config = train_config(preset, step, "moai", data)
        self.model, processor = build_model(config)
        self.model.train()
        mixers = bool(self.model.config.mixer_config.layers)
        collator = Collator(processor, config.max_length, self.model.config.use_aux_map and mixers)
        examples = load_examples(config.data[0], log=lambda _msg: None)
        assert len(examples) == N_EXAMPLES and all(collator.check(e) is None for e in examples)
        self.batches: dict[int, dict[str, torch.Tensor]] = {}
        self.collate_s: dict[int, float] = {}
        for bs in BATCHES:
            self.collate_s[bs], self.batches[bs] = clock(collator, examples[:bs])


def _trainable(model: torch.nn.Module, name: str) -> list[torch.nn.Parameter]:
    model.set_trainable(POLICIES[name][1])
    return [p for p in model.parameters() if p.requires_grad]


class Trainer:
    """One (model, trainable policy): its AdamW, schedule and accelerator, stepped by the loop's `train_step`."""

    def __init__(self, holder: Model, name: str, data: Path, preset: str) -> None:
        self.holder, self.name = holder, name
        step, policy = POLICIES[name]
        self.config = train_config(preset, step, policy, data)
        self.params = _trainable(holder.model, name)
        self.n_trainable = sum(p.numel() for p in self.params)
        c = self.config
        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, betas=c.betas, weight_decay=c.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(c))
        self.accelerator = make_accelerator(c)
        self.steps = 0

    def init_state(self) -> None:
        """Create AdamW's moments with an all-zero gradient (weights unchanged: zero update, no decay), so
        that no timed or measured step is AdamW's first."""
        for p in self.params:
            p.grad = torch.zeros_like(p)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, bs: int) -> float:
        model, batch, c = self.holder.model, self.holder.batches[bs], self.config
        _trainable(model, self.name)  # the two MoAI policies share one model object
        seconds, _ = clock(
            train_step,
            model,
            [batch],
            self.optimizer,
            self.scheduler,
            self.accelerator,
            step=self.steps,
            seed=c.seed,
            max_grad_norm=c.max_grad_norm,
        )
        self.steps += 1
        return seconds


# ---------------------------------------------------------------------------------------------------------
# Memory: one configuration per fresh process
# ---------------------------------------------------------------------------------------------------------
def _status_kb(field: str) -> int | None:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)
    return int(match.group(1)) if match else None


def _trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so the set-up RSS is tight


def child_memory(preset: str, name: str, bs: int, data: Path) -> dict[str, Any]:
    holder = Model(preset, POLICIES[name][0], data)
    trainer = Trainer(holder, name, data, preset)
    _trim()
    setup_kb = _status_kb("VmRSS")
    try:  # reset the peak-RSS high-water mark (Linux >= 4.0); else fall back on ru_maxrss (monotonic)
        Path("/proc/self/clear_refs").write_text("5")
        method = "VmHWM after clear_refs"
    except OSError:
        method = "ru_maxrss (not reset: a set-up peak above the step peak hides the step)"
    trainer.init_state()  # AdamW moments are part of the working set: allocated after the reference RSS
    seconds = trainer.step(bs)
    peak_kb = _status_kb("VmHWM") if method.startswith("VmHWM") else None
    if peak_kb is None:
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    mb = 1 / 1024
    return {
        "rss_after_setup_mb": round(setup_kb * mb, 1),
        "peak_rss_mb": round(peak_kb * mb, 1),
        "step_working_set_mb": round((peak_kb - setup_kb) * mb, 1),
        "step_s": round(seconds, 3),
        "method": method,
    }


def measure_memory(preset: str, name: str, bs: int, data: Path, threads: int) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", f"{preset}:{name}:{bs}", "--data", str(data)]
    cmd += ["--threads", str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"memory child {preset}/{name}/b{bs} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def analytic_memory(trainer: Trainer, holder: Model, bs: int) -> dict[str, float]:
    """What the working set must hold at least: gradients + AdamW moments (fp32), and the full-sequence
    logits (the loss runs the LM head over every position, labelled or not)."""
    vocab = holder.model.config.text_config.vocab_size
    seq = holder.batches[bs]["input_ids"].shape[1]
    mb = 4 / 2**20
    return {
        "grads_mb": round(trainer.n_trainable * mb, 1),
        "adamw_moments_mb": round(2 * trainer.n_trainable * mb, 1),
        "logits_mb_per_copy": round(bs * seq * vocab * mb, 1),
    }


# ---------------------------------------------------------------------------------------------------------
# Timing: all configurations of a preset interleaved in this process
# ---------------------------------------------------------------------------------------------------------
def bench_preset(
    preset: str,
    data: Path,
    reps: int,
    min_reps: int,
    budget_s: float,
    context_batches: tuple[int, ...],
    memory: bool,
    mem_jobs: int,
    threads: int,
) -> dict[str, Any]:
    """Time one preset: one warm-up step per configuration (batch 1 always, batch 8 only when a batch-1
    step is cheap), then up to ``reps`` interleaved rounds (at least ``min_reps``; none starts after
    ``budget_s`` seconds); then the memory subprocesses."""
    t0 = time.perf_counter()
    load_start = os.getloadavg()[0]
    holders = {"step2": Model(preset, "step2", data), "base": Model(preset, "base", data)}
    trainers = {name: Trainer(holders[step], name, data, preset) for name, (step, _) in POLICIES.items()}
    for trainer in trainers.values():
        trainer.init_state()
    configs = [(n, bs) for n in POLICIES for bs in BATCHES if n != BASELINE or bs in context_batches]
    t_build = time.perf_counter() - t0
    warm = [(n, bs) for n, bs in configs if bs == 1]
    slowest_b1 = max(trainers[n].step(bs) for n, bs in warm)
    if slowest_b1 < WARMUP_B8_BELOW_S:  # else a batch-8 step is long next to its first-call costs
        warm += [(n, bs) for n, bs in configs if bs != 1]
        for name, bs in configs:
            if bs != 1:
                trainers[name].step(bs)
    times = interleave(
        {(n, bs): lambda t=trainers[n], bs=bs: t.step(bs) for n, bs in configs},
        reps,
        min_reps,
        budget_s,
        warmup=0,
        self_timed=True,  # the step leaves re-flagging the trainable set out
        progress=lambda done, s: print(f"  [{preset}] round {done}: {s:.0f} s", flush=True),
    )
    done = len(times[configs[0]])
    t_timing = time.perf_counter() - t0 - t_build
    load_end = os.getloadavg()[0]

    out: dict[str, Any] = {}
    for name in POLICIES:
        trainer, holder = trainers[name], trainers[name].holder
        entry: dict[str, Any] = {"trainable_params": trainer.n_trainable}
        for bs in BATCHES:
            if (name, bs) not in times:
                continue
            med = statistics.median(times[(name, bs)])
            entry[f"batch{bs}"] = {
                "step_s": round(med, 4),
                "samples_per_s": round(bs / med, 3),
                "step_s_min": round(min(times[(name, bs)]), 4),
                "step_s_max": round(max(times[(name, bs)]), 4),
                "analytic_memory": analytic_memory(trainer, holder, bs),
            }
        if (name, 8) in times:
            b1, b8 = times[(name, 1)], times[(name, 8)]
            entry["ratio_b8_over_b1"] = {
                "samples_per_s": round(8 * ratio(b1, b8), 3),
                "samples_per_s_paired_median": round(8 * paired_ratio(b1, b8), 3),
            }
        out[name] = entry
    context = {
        name: {
            f"batch{bs}": round(ratio(times[(name, bs)], times[(BASELINE, bs)]), 3) for bs in context_batches
        }
        for name in POLICIES
        if name != BASELINE
    }
    m, base = holders["step2"].model, holders["base"].model
    batch = holders["step2"].batches
    info = {
        "shapes": {
            f"batch{bs}": {
                "sequence": int(batch[bs]["input_ids"].shape[1]),
                "label_tokens": int((batch[bs]["labels"][:, 1:] != IGNORE_INDEX).sum()),
                "aux_text_tokens": int(batch[bs]["aux_input_ids"].shape[1]),
            }
            for bs in BATCHES
        }
        | {
            "image_tokens": m.config.num_image_tokens,
            "image_size": m.config.image_size,
            "mixer_layers": list(m.config.mixer_config.layers),
        },
        "parameters_total": {
            "moai": sum(p.numel() for p in m.parameters()),
            "backbone": sum(p.numel() for p in base.parameters()),
        },
        "collate_ms": {f"batch{bs}": round(1e3 * holders["step2"].collate_s[bs], 1) for bs in BATCHES},
    }
    del holders, trainers, m, base, batch  # free this process's models before the memory processes run
    gc.collect()
    _trim()

    t_mem = time.perf_counter()
    if memory:  # RSS is per process: the children may run side by side (after the timing, never during it)
        print(f"  [{preset}] memory: {len(configs)} fresh processes, {mem_jobs} at a time ...", flush=True)
        with ThreadPoolExecutor(mem_jobs) as pool:
            jobs = {c: pool.submit(measure_memory, preset, c[0], c[1], data, threads) for c in configs}
        for (name, bs), job in jobs.items():
            out[name][f"batch{bs}"]["memory"] = job.result()
        for name in POLICIES:
            if "ratio_b8_over_b1" in out[name]:
                ws = [out[name][f"batch{bs}"]["memory"]["step_working_set_mb"] for bs in BATCHES]
                out[name]["ratio_b8_over_b1"]["step_working_set_mb"] = (
                    round(ws[1] / ws[0], 2) if ws[0] else None
                )
    return info | {
        "warmup_steps": [f"{n}/batch{bs}" for n, bs in warm],
        "rounds": done,
        "min_rounds": min_reps,
        "timing_budget_s": budget_s,
        "memory_measured": memory,
        "configs": out,
        "step_time_ratio_moai_over_backbone_plora": context,
        "load_average_1m": {"start": round(load_start, 2), "end_timing": round(load_end, 2)},
        "seconds": {
            "build": round(t_build, 1),
            "timing": round(t_timing, 1),
            "memory": round(time.perf_counter() - t_mem, 1),
            "total": round(time.perf_counter() - t0, 1),
        },
    }


def print_report(results: dict[str, Any]) -> None:
    print()
    head = f"{'preset':<6} {'config':<15} {'batch':>5} {'step s':>8} {'samples/s':>10}"
    print(head + f" {'work set MB':>11} {'peak RSS MB':>11}")
    for preset, r in results.items():
        for name, entry in r["configs"].items():
            for bs in BATCHES:
                e = entry.get(f"batch{bs}")
                if e is None:
                    continue
                line = f"{preset:<6} {name:<15} {bs:>5} {e['step_s']:>8.3f} {e['samples_per_s']:>10.2f}"
                if "memory" in e:
                    m = e["memory"]
                    line += f" {m['step_working_set_mb']:>11.0f} {m['peak_rss_mb']:>11.0f}"
                print(line)
    print()
    print("batch 8 vs batch 1, same configuration (samples/s ratio of medians; paired = median of per-round")
    print("ratios; memory = ratio of step working sets):")
    for preset, r in results.items():
        for name, entry in r["configs"].items():
            r8 = entry.get("ratio_b8_over_b1")
            if r8 is None:
                continue
            mem = f", memory {r8['step_working_set_mb']:.2f}x" if "step_working_set_mb" in r8 else ""
            print(
                f"  {preset:<6} {name:<15} {r8['samples_per_s']:.2f}x "
                f"(paired {r8['samples_per_s_paired_median']:.2f}x){mem}"
            )
    print()
    print(f"context: step time of MoAI step2 / {BASELINE} (no mixers, compressor, aux-map pass), same batch:")
    for preset, r in results.items():
        for name, rc in r["step_time_ratio_moai_over_backbone_plora"].items():
            print(f"  {preset:<6} {name:<15} " + ", ".join(f"{k} {v:.2f}x" for k, v in rc.items()))
    print()
    for preset, r in results.items():
        la = r["load_average_1m"]
        print(
            f"{preset}: {r['rounds']} rounds, load average {la['start']} -> {la['end_timing']}, "
            f"collate ms {r['collate_ms']}, seconds {r['seconds']}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--presets", default="tiny,mid", help="comma-separated presets (default tiny,mid)")
    parser.add_argument(
        "--quick", action="store_true", help="one round per preset; prints, writes only with --out"
    )
    parser.add_argument("--reps", type=int, default=None, help="most interleaved rounds per preset")
    parser.add_argument(
        "--budget-s", type=float, default=None, help="no new round after this many timing seconds"
    )
    parser.add_argument(
        "--context-batches",
        default=None,
        help=f"batch sizes at which {BASELINE} is timed (default: 1,8 for tiny, 1 otherwise)",
    )
    parser.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure memory in fresh processes (default: yes; with --quick only for tiny)",
    )
    parser.add_argument(
        "--mem-jobs", type=int, default=3, help="memory subprocesses run at a time (default 3)"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default {RESULTS})")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # preset:config:batch
    parser.add_argument("--data", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.child:
        preset, name, bs = args.child.split(":")
        print(json.dumps(child_memory(preset, name, int(bs), args.data)))
        return 0

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    reps = args.reps or (1 if args.quick else 12)
    out = args.out if args.out is not None else (None if args.quick else RESULTS)

    start = time.perf_counter()
    info = machine(
        load_average=[round(x, 2) for x in os.getloadavg()],
        dtype="float32",
        device="cpu",
    )
    print(
        f"torch {info['torch']}, {info['torch_threads']} threads, OMP_WAIT_POLICY={info['omp_wait_policy']}, "
        f"load average {info['load_average']}; at most {reps} rounds per preset"
    )
    results = {}
    with tempfile.TemporaryDirectory(prefix="moai-bench-train-") as tmp:
        data = write_dataset(Path(tmp), n=N_EXAMPLES)
        for preset in presets:
            min_reps = 1 if args.quick else min(reps, MIN_ROUNDS.get(preset, MIN_ROUNDS_DEFAULT))
            budget_s = 0.0 if args.quick else BUDGET_S.get(preset, BUDGET_S_DEFAULT)
            budget_s = args.budget_s if args.budget_s is not None else budget_s
            context = (
                tuple(int(b) for b in args.context_batches.split(","))
                if args.context_batches
                else CONTEXT_BATCHES.get(preset, CONTEXT_BATCHES_DEFAULT)
            )
            print(f"[{preset}] building, warming up, timing (budget {budget_s:.0f} s) ...", flush=True)
            memory = args.memory if args.memory is not None else (not args.quick or preset == "tiny")
            results[preset] = bench_preset(
                preset,
                data,
                reps,
                min_reps,
                budget_s,
                context,
                memory,
                args.mem_jobs,
                torch.get_num_threads(),
            )
            print(f"[{preset}] done in {results[preset]['seconds']['total']} s", flush=True)
    print_report(results)
    elapsed = time.perf_counter() - start
    print(f"\ntotal {elapsed:.0f} s")

    if out is not None:
        info["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        payload = {
            "benchmark": "bench/train.py, read with bench/README.md",
            "date": now(),
            "machine": info,
            "method": {
                "quick": args.quick,
                "max_rounds": reps,
                "min_rounds": 1 if args.quick else MIN_ROUNDS | {"default": MIN_ROUNDS_DEFAULT},
                "timing_budget_s": (
                    args.budget_s
                    if args.budget_s is not None
                    else (0 if args.quick else BUDGET_S | {"default": BUDGET_S_DEFAULT})
                ),
            },
            "presets": results,
            "total_seconds": round(elapsed, 1),
        }
        write(out, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
