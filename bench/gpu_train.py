"""Training engines on a GPU machine (run by bench/gpu.sh; bench/README.md, ``gpu.sh``).

FSDP and DeepSpeed ZeRO cannot run on the project's CPU-only machines. Here the same ``moai train`` loop runs
under ``accelerate launch`` with each shipped engine config (as many processes as GPUs), on the overfit
check's 16 records (moai/train/overfit.py), tiny preset, step 2, bf16, and its loss trajectory is compared
with a plain single-process run of the same global batch. A DeepSpeed engine is reported as skipped when
the ``deepspeed`` package is not installed; a failing engine is reported with the tail of its log.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from moai.train.curves import read_metrics
from moai.train.overfit import write_data

CONFIGS = Path(__file__).resolve().parent.parent / "moai" / "train" / "configs"
ENGINES = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3")


def _run(cmd: list[str], log: Path, timeout: int) -> int:
    with log.open("w") as f:
        try:
            return subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            return 124


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run)]


def train_engines(steps: int = 20, timeout: int = 300) -> dict:
    """Run each engine; return per engine: exit code, losses, max |Δ loss| against the single-process run."""
    gpus = max(torch.cuda.device_count(), 1)
    root = Path(tempfile.mkdtemp(prefix="moai-gpu-train-"))
    data = write_data(root, 16, seed=0)
    config = {
        "output_dir": str(root / "single"),
        "model": "tiny",
        "step": "step2",
        "mixer_layers": [0, 1, 2, 3],
        "data": [{"path": str(data)}],
        "batch_size": 16 // gpus if 16 % gpus == 0 else 16,
        "max_steps": steps,
        "lr": 3e-3,
        "min_lr": 3e-4,
        "precision": "bf16",
        "progress": False,
        "tensorboard": False,
    }
    results: dict = {"gpus": gpus, "steps": steps}
    single = dict(config, batch_size=config["batch_size"] * gpus)
    (root / "single.yaml").write_text(yaml.safe_dump(single))
    code = _run(
        [sys.executable, "-m", "moai.cli", "train", str(root / "single.yaml")], root / "single.log", timeout
    )
    reference = _losses(root / "single")
    results["single_process"] = {"exit_code": code, "final_loss": reference[-1] if reference else None}
    for engine in ENGINES:
        if engine.startswith("deepspeed"):
            try:
                import deepspeed  # noqa: F401
            except ImportError:
                results[engine] = {"skipped": "deepspeed is not installed"}
                continue
        run = root / engine
        (root / f"{engine}.yaml").write_text(yaml.safe_dump(dict(config, output_dir=str(run))))
        cmd = [
            sys.executable, "-m", "accelerate.commands.launch",
            "--config_file", str(CONFIGS / f"{engine}.yaml"),
            "--num_processes", str(gpus),
            "-m", "moai.cli", "train", str(root / f"{engine}.yaml"),
        ]  # fmt: skip
        log = root / f"{engine}.log"
        code = _run(cmd, log, timeout)
        losses = _losses(run)
        entry: dict = {"exit_code": code, "final_loss": losses[-1] if losses else None}
        if (run / "summary.json").is_file():  # what accelerate actually ran (a 1-GPU FSDP is still FSDP)
            entry["distributed_type"] = json.loads((run / "summary.json").read_text())["distributed_type"]
        if losses and len(losses) == len(reference):
            entry["max_abs_loss_diff_vs_single"] = max(abs(a - b) for a, b in zip(losses, reference))
        if code != 0:
            entry["log_tail"] = log.read_text()[-2000:]
        results[engine] = entry
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default="bench/results/gpu_train.json")
    parser.add_argument(
        "--timeout", type=int, default=300, help="seconds each training run may take (default: %(default)s)"
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_train.py needs a CUDA device")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    results = train_engines(args.steps, args.timeout)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({k: {kk: vv for kk, vv in v.items() if kk != "log_tail"} if isinstance(v, dict) else v
                      for k, v in results.items()}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
