"""The README's Python API snippet runs as written and answers both questions."""

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_snippet_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "README has no python block"
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert len(scope["answers"]) == 2 and all(isinstance(a, str) for a in scope["answers"])
    assert scope["ids"].shape[1] == scope["inputs"]["input_ids"].shape[1] + 8
    assert scope["out"].logits.shape[:2] == scope["inputs"]["input_ids"].shape
