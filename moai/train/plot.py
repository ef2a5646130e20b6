"""``moai train --plot RUN_DIR``: loss curve and the average gate weight of each expert over training."""

from __future__ import annotations

from pathlib import Path

from ..model.constants import EXPERT_NAMES
from .curves import read_metrics


def plot_run(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Write ``RUN_DIR/training.png`` (or ``out``) from ``metrics.jsonl``; return its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: not a training run directory")
    records = read_metrics(run_dir)
    if not records:
        raise ValueError(f"{path} has no metrics yet")
    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_gate) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot(steps, [r["loss"] for r in records], label="loss")
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_yscale("log")
    ax_loss.set_title("training loss")
    for name in EXPERT_NAMES:  # average over mixer layers
        values = []
        for r in records:
            layer_values = [stats[name] for stats in r.get("gates", {}).values() if name in stats]
            values.append(sum(layer_values) / len(layer_values) if layer_values else float("nan"))
        ax_gate.plot(steps, values, label=name)
    ax_gate.set_xlabel("step")
    ax_gate.set_ylabel("average gate weight")
    ax_gate.set_ylim(0, 1)
    ax_gate.set_title("expert gate weights (mean over mixer layers)")
    ax_gate.legend(ncol=2, fontsize=8)
    fig.tight_layout()
    target = Path(out) if out else run_dir / "training.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
