# Copyright 2026 The moai authors. SPDX-License-Identifier: MIT
"""The benchmarks `moai eval` scores (docs/eval.md): one module per benchmark, each with ``NAME``,
``load``, ``prompt`` and ``score`` (`moai.eval.common.Benchmark`)."""

from __future__ import annotations

from types import ModuleType

from . import (
    ai2d,
    gqa,
    hallusionbench,
    mmbench,
    mmbench_cn,
    mme,
    pope,
    qbench,
    scienceqa,
    seed,
    shapesworld,
    textvqa,
)

#: Benchmark name -> module, in the order `moai eval` lists them.
BENCHMARKS: dict[str, ModuleType] = {
    module.NAME: module
    for module in (
        mme,
        pope,
        mmbench,
        mmbench_cn,
        seed,
        scienceqa,
        textvqa,
        ai2d,
        qbench,
        hallusionbench,
        gqa,
        shapesworld,
    )
}


def get_benchmark(name: str) -> ModuleType:
    """The module of benchmark ``name``; ``ValueError`` naming the valid ones otherwise."""
    try:
        return BENCHMARKS[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r} (expected one of: {', '.join(BENCHMARKS)})") from None
