"""Small LLaVA-format data sets written into a temp dir for the training tests."""

from pathlib import Path

from moai.train.sample import COLOURS, write_dataset

__all__ = ["COLOURS", "write_config", "write_dataset"]


def write_config(root: Path, data: Path, **fields) -> Path:
    import yaml

    config = {
        "output_dir": str(root / "run"),
        "model": "tiny",
        "step": "step2",
        "data": [{"path": str(data)}],
        "batch_size": 4,
        "max_steps": 4,
        "lr": 1e-3,
        "min_lr": 1e-4,
        "progress": False,
        "tensorboard": False,
        **fields,
    }
    path = root / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
