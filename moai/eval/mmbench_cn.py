# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""MMBench-CN dev, the Chinese edition of MMBench (Liu et al., arXiv 2307.06281; docs/eval.md).

Read and scored as `moai.eval.mmbench` (same TSV columns, same CircularEval); the file is LLaVA-1.5's
``playground/data/eval/mmbench_cn/mmbench_dev_cn_20231003.tsv`` (or the TSV ``path`` names), and the
prompt ends with MMBench-CN's own instruction, 请直接回答选项字母。 ("answer with the option's letter
directly"), as in MoAI's evaluation.
"""

from __future__ import annotations

from pathlib import Path

from . import mmbench
from .common import Example, Examples
from .parse import OPTION_LETTER_CN, choice_prompt

NAME = "mmbench_cn"
TSV_FILE = "mmbench_dev_cn_20231003.tsv"

score = mmbench.score


def load(path: Path) -> Examples:
    """``DIR/mmbench_dev_cn_20231003.tsv``, or the TSV file ``path`` names."""
    path = Path(path)
    return mmbench.load_file(path if path.is_file() else path / TSV_FILE)


def prompt(example: Example) -> str:
    """As `moai.eval.mmbench.prompt`, with MMBench-CN's Chinese instruction."""
    return choice_prompt(example.question, example.meta["options"], OPTION_LETTER_CN)
