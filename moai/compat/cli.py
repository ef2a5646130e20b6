"""``moai convert official`` and ``moai compat {keys,check,verbalize}``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def cmd_convert(args: argparse.Namespace) -> int:
    from .official import convert_checkpoint

    convert_checkpoint(args.src, args.out, gate_dtype=args.gate_dtype)
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """Check that the converter maps every official MoAI-7B key onto the ``moai-7b`` preset (meta device)."""
    from ..model.configuration import MoAIConfig
    from .official import check_official_keys

    path = Path(args.shapes)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    listing = json.loads(path.read_text())
    keys = listing["keys"] if isinstance(listing, dict) else listing
    pairs = keys.items() if isinstance(keys, dict) else [(k, s) for k, s in keys]
    mapped, total = check_official_keys(
        ((k, tuple(s)) for k, s in pairs), MoAIConfig.from_preset(args.preset)
    )
    print(f"{mapped}/{total} keys mapped")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from .parity import run_parity

    return run_parity(args.fixture, device=args.device, dtype=args.dtype)


def cmd_verbalize(args: argparse.Namespace) -> int:
    from .verbalize_golden import run

    return run(args.file, selection=args.selection)


def register(sub: argparse._SubParsersAction) -> None:
    convert = sub.add_parser("convert", help="convert a published checkpoint to this project's layout")
    convert_sub = convert.add_subparsers(dest="source", required=True)
    p = convert_sub.add_parser("official", help="an official MoAI checkpoint directory (or a parity fixture)")
    p.add_argument(
        "src", help="directory with config.json and safetensors shards / index / state_dict.safetensors"
    )
    p.add_argument("out", help="output directory (save_pretrained layout)")
    p.add_argument(
        "--gate-dtype",
        default="float16",
        choices=["float16", "bfloat16", "float32"],
        help="gate softmax dtype to store (official inference: float16)",
    )
    p.set_defaults(func=cmd_convert)

    compat = sub.add_parser("compat", help="checks against the official MoAI implementation")
    compat_sub = compat.add_subparsers(dest="check", required=True)
    p = compat_sub.add_parser(
        "keys", help="map the official MoAI-7B key/shape listing onto the moai-7b preset"
    )
    p.add_argument(
        "shapes", help="JSON listing of official keys and shapes (fixtures/moai7b_state_dict_shapes.json)"
    )
    p.add_argument("--preset", default="moai-7b")
    p.set_defaults(func=cmd_keys)
    p = compat_sub.add_parser("check", help="official-mode parity against a fixture directory")
    p.add_argument("fixture", help="directory in the format of fixtures/official_tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.set_defaults(func=cmd_check)
    p = compat_sub.add_parser("verbalize", help="official verbalizer against a golden JSONL file")
    p.add_argument("file")
    p.add_argument(
        "--selection",
        default="introselect",
        choices=["introselect", "numpy"],
        help="SGG top-k selection: numpy 1.26's algorithm (default) or the installed np.argpartition",
    )
    p.set_defaults(func=cmd_verbalize)
