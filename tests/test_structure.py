"""Package structure (docs/architecture.md).

The import graph runs one way: io/args <- model, worlds <- verbalize <- perception <- compat, train, engine <- demo, predict, ask, serve, web, recipes <- cli,
checked twice: statically (every import statement, function-local ones included) and by importing each layer
in a fresh interpreter and looking at ``sys.modules``. No process-wide mutable state but the perception
backend registry: callers keep their ``Perceiver``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "moai"

#: Layer of each group of modules; a module may import its own group and lower layers only.
LAYERS = {
    "moai": 0,  # the package root: __version__ and lazy attributes only
    "moai.io": 0,
    "moai.args": 0,
    "moai.model": 1,
    "moai.worlds": 1,
    "moai.verbalize": 2,
    "moai.perception": 3,
    "moai.compat": 4,
    "moai.train": 4,
    "moai.engine": 4,
    "moai.demo": 5,
    "moai.predict": 5,
    "moai.ask": 5,
    "moai.serve": 5,
    "moai.web": 5,
    "moai.recipes": 5,
    "moai.eval": 5,
    "moai.cli": 6,
}


def group(module: str) -> str:
    """The longest ``LAYERS`` key that is ``module`` or a package above it."""
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in LAYERS:
            return name
    raise AssertionError(f"{module}: not in a known layer")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """``(line, absolute module)`` of every ``moai`` import in the file, at any depth."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names if alias.name.split(".")[0] == "moai"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] == "moai":
                out.append((node.lineno, target))
    return out


def test_every_import_points_down_or_sideways_within_its_group():
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path)
        if name == "moai":  # the package root imports its model classes lazily (PEP 562 __getattr__)
            continue
        here = group(name)
        for line, target in imported_modules(path):
            there = group(target)
            if there != here and LAYERS[there] >= LAYERS[here]:
                wrong.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {here} imports {target}")
    assert not wrong, "\n".join(wrong)


def function_local_imports(tree: ast.Module) -> set[int]:
    """Line numbers of the import statements inside functions."""
    lines = set()
    for func in ast.walk(tree):
        if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
            lines |= {n.lineno for n in ast.walk(func) if isinstance(n, ast.Import | ast.ImportFrom)}
    return lines


def explained(lines: list[str], lineno: int) -> bool:
    """The import on ``lineno`` says ``# heavy: ...`` on its line or above its block of imports."""
    if "# heavy" in lines[lineno - 1]:
        return True
    above = lineno - 2
    while above >= 0 and (not lines[above].strip() or lines[above].strip().startswith(("import ", "from "))):
        above -= 1
    return above >= 0 and lines[above].strip().startswith("# heavy")


def test_function_local_imports_only_delay_heavy_modules():
    """A ``moai`` import inside a function is there to keep start-up fast, and says so (``# heavy: ...``)."""
    unexplained = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        local = function_local_imports(ast.parse("\n".join(lines)))
        moai_lines = {line for line, _ in imported_modules(path)}
        for line in sorted(local & moai_lines):
            if not explained(lines, line):
                unexplained.append(f"{path.relative_to(PACKAGE.parent)}:{line}")
    assert not unexplained, "function-local moai imports without a '# heavy: ...' reason:\n" + "\n".join(
        unexplained
    )


LOADED = (
    "import json, sys, {module}; print(json.dumps(sorted(m for m in sys.modules if m.startswith('moai'))))"
)


@pytest.mark.parametrize("module", ["moai.io", "moai.model.processing", "moai.verbalize", "moai.perception"])
def test_importing_a_layer_loads_nothing_above_it(module):
    result = subprocess.run(
        [sys.executable, "-c", LOADED.format(module=module)],
        capture_output=True,
        text=True,
        check=True,
        cwd=PACKAGE.parent,
        timeout=600,
    )
    loaded = json.loads(result.stdout)
    above = [m for m in loaded if LAYERS[group(m)] > LAYERS[group(module)]]
    assert not above, f"importing {module} loads {above}"
    if module == "moai.verbalize":
        assert not [m for m in loaded if group(m) == "moai.model"]  # verbalization needs no model


def test_no_global_state_but_the_backend_registry():
    users = [
        str(path.relative_to(PACKAGE.parent))
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.Global)
    ]
    assert set(users) == {"moai/perception/registry.py"}, users  # loading the built-in backends once


class CountingPerceiver:
    """Stands in for ``Perceiver``: counts how often models would be built."""

    built = 0

    def __init__(self, config: object) -> None:
        CountingPerceiver.built += 1

    def __call__(self, images: list) -> list:
        return [None for _ in images]


def test_perceive_keeps_no_models_and_the_training_resolver_keeps_its_own(monkeypatch):
    from moai.perception import run
    from moai.train import data

    monkeypatch.setattr(run, "Perceiver", CountingPerceiver)
    monkeypatch.setattr(data, "Perceiver", CountingPerceiver)
    CountingPerceiver.built = 0
    run.perceive(["a.png"], "default")
    run.perceive(["a.png"], "default")
    assert CountingPerceiver.built == 2  # nothing kept between calls
    resolver = data.AuxResolver("perceive", None, "default", "official", "corrected")
    example = data.Example("x", Path("a.png"), (), "", None, "d.jsonl", 1)
    for _ in range(3):
        assert resolver.resolve([example]) == (
            [],
            [data.Problem("d.jsonl", 1, "not in perception cache: a.png")],
        )
    assert CountingPerceiver.built == 3  # one for the resolver, reused


#: Tensor factories whose result lands on the CPU unless a ``device=`` says otherwise.
FACTORIES = {"tensor", "arange", "zeros", "ones", "full", "empty", "eye", "linspace"}
#: Model modules that build tensors outside a forward pass: the processor works on the CPU before ``.to``.
HOST_SIDE = {"processing.py", "configuration.py"}


def test_tensors_made_in_the_model_name_their_device():
    """A ``torch.tensor(...)`` in a forward pass without ``device=`` is a CPU tensor, and mixing it with the
    hidden states crashes on an accelerator (the step-1 expert one-hot did, first seen on a GPU run). Every
    factory call in moai/model outside ``__init__`` and a ``nn.Parameter(...)`` names its device."""
    bare = []
    for path in sorted((PACKAGE / "model").glob("*.py")):
        if path.name in HOST_SIDE:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef) or func.name == "__init__":
                continue
            parameters = {
                id(inner)
                for node in ast.walk(func)
                if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Parameter"
                for inner in ast.walk(node)
            }
            for node in ast.walk(func):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in FACTORIES
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"
                    and id(node) not in parameters
                    and not any(k.arg == "device" for k in node.keywords)
                ):
                    bare.append(f"moai/model/{path.name}:{node.lineno} torch.{node.func.attr}")
    assert not bare, "tensors made without a device in the model: " + ", ".join(sorted(set(bare)))
