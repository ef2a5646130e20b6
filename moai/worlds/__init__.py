"""Synthetic worlds to train and measure MoAI on a CPU (docs/shapesworld.md).

``moai.worlds.shapes`` generates ShapesWorld scenes, their ground truth and questions; ``moai.worlds.score``
scores answer files. The package sits beside ``moai.model`` (layer 1, docs/architecture.md): it needs
only ``moai.io`` and ``moai.args``, so the demo, training and tests can render scenes.
"""

from .score import Score, normalize_answer, score_files
from .shapes import CATEGORIES, Question, Scene, Shape, Sign, generate, render, write_world

__all__ = [
    "CATEGORIES",
    "Question",
    "Scene",
    "Score",
    "Shape",
    "Sign",
    "generate",
    "normalize_answer",
    "render",
    "score_files",
    "write_world",
]
