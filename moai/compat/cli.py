"""``moai convert official`` and ``moai compat {keys,check,verbalize}`` (docs/official.md §1 and §5).

Every input is checked where it is read; a bad one raises ``ValueError`` / ``OSError`` naming the file and
the reason, which ``moai.cli.main`` prints as one line with exit code 2.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..args import torch_device
from ..io import read_json
from .verbalize_golden import run_file

#: The files of a parity fixture directory (tests/fixtures/README.md).
FIXTURE_TENSORS = ("state_dict.safetensors", "inputs.safetensors", "expected.safetensors")


# The commands import .official, .parity and the model when they run: they load torch and transformers
# (seconds), which `moai --help` and the other subcommands should not wait for.


def cmd_convert(args: argparse.Namespace) -> int:
    from .official import convert_checkpoint  # heavy: torch, transformers

    convert_checkpoint(args.src, args.out, gate_dtype=args.gate_dtype)
    return 0


def _require_file(path: Path, what: str) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not {what}")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found (expected {what})")


def key_shapes(listing: Any, path: Path) -> Iterator[tuple[str, tuple[int, ...]]]:
    """``(key, shape)`` pairs of an official listing: ``{"keys": {key: shape}}``, ``{key: shape}`` or pairs."""
    keys = listing["keys"] if isinstance(listing, dict) and "keys" in listing else listing
    if isinstance(keys, dict):
        pairs = list(keys.items())
    elif isinstance(keys, list) and all(isinstance(p, list) and len(p) == 2 for p in keys):
        pairs = [(k, s) for k, s in keys]
    else:
        raise ValueError(
            f'{path}: not a key/shape listing (expected {{"keys": {{key: shape}}}} or [[key, shape], ...])'
        )
    for key, shape in pairs:
        if not isinstance(key, str) or not isinstance(shape, list):
            raise ValueError(f"{path}: entry {key!r}: expected a key and a list of sizes, got {shape!r}")
        if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise ValueError(f"{path}: entry {key!r}: shape {shape!r} is not a list of sizes >= 0")
        yield key, tuple(shape)


def cmd_keys(args: argparse.Namespace) -> int:
    """Check that the converter maps every official MoAI-7B key onto the ``moai-7b`` preset (meta device)."""
    # heavy: torch, transformers
    from ..model.configuration import MoAIConfig
    from .official import check_official_keys

    path = Path(args.shapes)
    _require_file(path, "a JSON key/shape listing")
    config = MoAIConfig.from_preset(args.preset)
    pairs = list(key_shapes(read_json(path, "a JSON key/shape listing"), path))
    if not pairs:
        raise ValueError(f"{path}: the listing has no keys")
    mapped, total = check_official_keys(pairs, config)
    print(f"{mapped}/{total} keys mapped")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Official-mode parity; the fixture's files are checked (present, JSON, safetensors) before it runs."""
    # heavy: torch, transformers
    from .official import check_safetensors
    from .parity import run_parity

    fixture = Path(args.fixture)
    if not fixture.is_dir():
        raise FileNotFoundError(f"{fixture}: not a directory (give a parity fixture directory)")
    _require_file(fixture / "config.json", "a parity fixture's config.json")
    read_json(fixture / "config.json", "an official MoAI config")
    for name in FIXTURE_TENSORS:
        _require_file(fixture / name, f"a parity fixture's {name}")
        check_safetensors(fixture / name)
    return run_parity(fixture, device=args.device, dtype=args.dtype)


def cmd_verbalize(args: argparse.Namespace) -> int:
    return run_file(args.file, selection=args.selection)


def register(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="convert a published checkpoint to this project's layout")
    convert_sub = convert.add_subparsers(dest="source", required=True, metavar="SOURCE")
    p = convert_sub.add_parser("official", help="an official MoAI checkpoint directory (or a parity fixture)")
    p.add_argument(
        "src", help="directory with config.json and safetensors shards / index / state_dict.safetensors"
    )
    p.add_argument(
        "out",
        help="output directory (save_pretrained layout); must not exist or be empty, and is created only "
        "when the conversion succeeds",
    )
    p.add_argument(
        "--gate-dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help="gate softmax dtype to store (official inference: float16; default: %(default)s)",
    )
    p.set_defaults(func=cmd_convert)

    compat = sub.add_parser("compat", help="checks against the official MoAI implementation")
    compat_sub = compat.add_subparsers(dest="check", required=True, metavar="CHECK")
    p = compat_sub.add_parser(
        "keys", help="map the official MoAI-7B key/shape listing onto the moai-7b preset"
    )
    p.add_argument(
        "shapes",
        help="JSON listing of official keys and shapes (tests/fixtures/moai7b_state_dict_shapes.json)",
    )
    p.add_argument(
        "--preset",
        default="moai-7b",
        help="model preset to map onto: tiny | mid | moai-7b (default: %(default)s)",
    )
    p.set_defaults(func=cmd_keys)
    p = compat_sub.add_parser("check", help="official-mode parity against a fixture directory")
    p.add_argument("fixture", help="directory in the format of tests/fixtures/official_tiny")
    p.add_argument(
        "--device",
        default="cpu",
        type=torch_device,
        help="torch device to run the converted model on, e.g. cpu, cuda, cuda:1 (default: %(default)s)",
    )
    p.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16", "float16"],
        help="model dtype; thresholds apply to float32 only, other dtypes report differences "
        "(default: %(default)s)",
    )
    p.set_defaults(func=cmd_check)
    p = compat_sub.add_parser("verbalize", help="official verbalizer against a golden JSONL file")
    p.add_argument(
        "file",
        help="golden JSON-lines file, one case per line, e.g. tests/fixtures/verbalize_public.jsonl "
        "(format: tests/fixtures/README.md)",
    )
    p.add_argument(
        "--selection",
        default="introselect",
        choices=["introselect", "numpy"],
        help="SGG top-k selection: introselect = numpy 1.26's order on any machine, numpy = the installed "
        "np.argpartition (default: %(default)s)",
    )
    p.set_defaults(func=cmd_verbalize)
