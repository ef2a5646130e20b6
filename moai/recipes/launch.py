"""One `moai train` stage of a recipe, in this process or data-parallel over several CPU processes.

On a CPU, two processes of one thread each train a small model faster than one process of two threads: the
ShapesWorld recipe's steps ran 1.25-1.4 times faster on the 2-core machine (docs/shapesworld.md, "The recipe on
two processes"). The processes are `torchrun` workers of ``moai train`` (gloo, the loop's data-parallel path:
the same global batch, losses normalised by the global counts), so the model is the one-process model up to the
order of the float sums (tests/test_referent.py, tests/test_recipe.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..train.config import TrainConfig


def default_processes() -> int:
    """2 on a CPU machine with at least two cores, else 1 (a GPU machine trains in one process)."""
    # heavy: torch
    import torch

    if torch.cuda.is_available():
        return 1
    return 2 if (os.cpu_count() or 1) >= 2 else 1


def rank_config(config: TrainConfig, processes: int) -> TrainConfig:
    """``config`` for each of ``processes`` data-parallel processes: its batch split evenly over them (the
    loop's ``batch_size`` is a process's), so that a step sees the same ``config.batch_size`` samples."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if config.batch_size % processes:
        raise ValueError(
            f"{config.output_dir}: batch_size {config.batch_size} does not split over {processes} processes"
        )
    return dataclasses.replace(config, batch_size=config.batch_size // processes)


def launch_command(config_path: Path, processes: int) -> list[str]:
    """The `torchrun` command that runs ``moai train config_path`` on ``processes`` local processes."""
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
    return [*run, "-m", "moai.cli", "train", str(config_path)]


def _run(command: list[str], processes: int, say: Callable[[str], None], what: Path) -> None:
    """Run ``command`` with the machine's cores shared among its ``processes`` (``OMP_NUM_THREADS``), its
    output through ``say`` line by line; a failure is a `RuntimeError` naming ``what`` and the exit status."""
    threads = max(1, (os.cpu_count() or processes) // processes)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    say(f"{processes} processes, {threads} thread(s) each (torchrun)")
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        for line in proc.stdout:
            say(line.rstrip("\n"))
    if proc.returncode != 0:
        raise RuntimeError(f"{what}: {processes} processes exited with status {proc.returncode}")


def train_stage(config: TrainConfig, processes: int = 1, say: Callable[[str], None] = print) -> dict:
    """Train ``config`` (its ``batch_size`` the global batch) on ``processes`` processes; its summary.

    One process: `moai.train.loop.train` here. Several: ``config`` split by `rank_config`, written to
    ``output_dir/launch.yaml``, and run by `launch_command` (`_run`: the cores shared among the processes,
    their output through ``say``); the summary is the run's summary.json, and its config.yaml is ``config``
    (the global batch) again afterwards. A failed run is a `RuntimeError` naming the stage's directory and the
    exit status."""
    if processes == 1:
        from ..train.loop import train  # heavy: torch, transformers

        return train(config, log=say)
    per_rank = rank_config(config, processes)
    run = Path(config.output_dir)
    run.mkdir(parents=True, exist_ok=True)
    per_rank.save(run / "launch.yaml")
    say(f"moai train, {per_rank.batch_size} samples a process")
    _run(launch_command(run / "launch.yaml", processes), processes, say, run)
    config.save(run / "config.yaml")  # the run as one process would train it, for `moai train` to rerun
    return json.loads((run / "summary.json").read_text())
