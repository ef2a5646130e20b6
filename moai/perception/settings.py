"""How a model's aux text is made: saved beside its weights as ``aux_config.json`` (docs/perception.md).

``moai train`` writes it into ``final/`` from the run's config, and the inference engine (``moai.engine``)
reads it, so a model is always fed aux text made the way it was trained on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from .verbalize import MAP_STYLES, STYLES

AUX_FILE = "aux_config.json"
"""File of a model directory naming the perception preset, verbalizer and colour-map style."""


@dataclass
class AuxSettings:
    """Perception preset, verbalizer and colour-map style of a model."""

    perception_preset: str = "default"
    """Perception preset (``moai/perception/config.py``) the model was trained with."""
    verbalizer: str = "official"
    """Verbalization style (``official`` | ``v2`` | ``compact`` | ``compact-all`` | ``compact-text-first``, docs/verbalization.md)."""
    map_style: str = "corrected"
    """Panoptic colour-map style (``official`` float map or ``corrected`` uint8 colours)."""

    def __post_init__(self) -> None:
        if self.verbalizer not in STYLES:
            raise ValueError(
                f"aux settings: verbalizer {self.verbalizer!r} is not one of {', '.join(STYLES)}"
            )
        if self.map_style not in MAP_STYLES:
            raise ValueError(f"aux settings: map_style {self.map_style!r} is not official or corrected")

    def save(self, directory: str | Path) -> Path:
        path = Path(directory) / AUX_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> AuxSettings:
        """The directory's ``aux_config.json`` (the defaults when it has none); unknown keys are errors."""
        path = Path(directory) / AUX_FILE
        if not path.is_file():
            return cls()
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        unknown = sorted(set(data) - set(cls.__dataclass_fields__)) if isinstance(data, dict) else None
        if unknown is None or unknown:
            raise ValueError(f"{path}: expected a mapping of {sorted(cls.__dataclass_fields__)}")
        return cls(**data)
