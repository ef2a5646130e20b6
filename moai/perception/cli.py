"""``moai perceive``: one image -> aux string / Perception JSON / picture, or a data set -> cache.

    moai perceive IMAGE [--preset NAME] [--only ps,owod,sgg,ocr] [--json] [--show out.png]
    moai perceive --data LLAVA.json|DIR --out CACHE_DIR [--preset NAME] [--strict]

``seg`` and ``od`` are accepted as aliases of ``ps`` and ``owod``. ``--config FILE.json`` loads a full
``PerceptionConfig`` (for example the ``config`` of a cache manifest) instead of a preset;
``--checkpoint ROLE=PATH`` points a backend at a local model directory and ``--max-pixels N`` raises the
decompression-bomb limit. Under ``accelerate launch`` the ``--data`` run is data-parallel
(moai/perception/dataset.py). A bad input is one line naming it (docs/perception.md, Bad input).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from PIL import Image

from ..args import positive_int, torch_device_or_auto
from ..io import DEFAULT_MAX_PIXELS, read_json
from .config import PRESETS, PerceptionConfig
from .dataset import precompute
from .draw import draw_perception
from .image import load_for, to_canvas
from .run import Perceiver, check_config
from .types import canonical_role
from .verbalize import STYLES, verbalize_perception


def role_path(text: str) -> tuple[str, str]:
    """``ROLE=PATH`` of ``--checkpoint`` (role aliases ``seg``/``od`` accepted)."""
    role, sep, path = text.partition("=")
    if not sep or not role.strip() or not path.strip():
        raise argparse.ArgumentTypeError(f"expected ROLE=PATH (e.g. ps=./mask2former), got {text!r}")
    try:
        return canonical_role(role), path.strip()
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def picture_path(text: str) -> str:
    """An output picture whose extension Pillow can write (``--show``)."""
    fmt = Image.registered_extensions().get(Path(text).suffix.lower())
    if fmt is None or fmt not in Image.SAVE:
        raise argparse.ArgumentTypeError(f"{text!r}: not a picture file name Pillow can write (e.g. out.png)")
    return text


def read_config_file(path: Path) -> PerceptionConfig:
    """A ``PerceptionConfig`` JSON file or a cache ``manifest.json``; errors name the file and the reason."""
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a PerceptionConfig JSON file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    data = read_json(path, "a PerceptionConfig JSON object or a cache manifest.json")
    if isinstance(data, dict) and "config" in data and "format" in data:  # a cache manifest
        data = data["config"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a PerceptionConfig (a JSON {type(data).__name__}, not an object)")
    try:
        return PerceptionConfig.from_dict(data)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{path}: not a valid PerceptionConfig ({err})") from None


def with_checkpoints(config: PerceptionConfig, checkpoints: list[tuple[str, str]]) -> PerceptionConfig:
    """Set the ``checkpoint`` option of each named role's backend (``--checkpoint ROLE=PATH``)."""
    for role, path in checkpoints:
        backend = getattr(config, role)
        if backend is None:
            raise ValueError(f"--checkpoint {role}={path}: no {role} backend in this config (see --only)")
        options: dict[str, Any] = {**backend.options, "checkpoint": path}
        config = replace(config, **{role: replace(backend, options=options)})
    return config


def build_config(args: argparse.Namespace) -> PerceptionConfig:
    """The config of a command line: ``--config`` or ``--preset``, then the per-run overrides."""
    config = read_config_file(Path(args.config)) if args.config else PerceptionConfig.from_preset(args.preset)
    if args.only:
        config = config.only(part for part in args.only.split(",") if part.strip())
    config = with_checkpoints(config, args.checkpoint or [])
    overrides: dict[str, Any] = {}
    if args.device:
        overrides["device"] = args.device
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    if args.max_pixels:
        overrides["max_pixels"] = args.max_pixels
    return replace(config, **overrides) if overrides else config


def cmd_perceive(args: argparse.Namespace) -> int:
    if (args.image is None) == (args.data is None):
        raise ValueError("give either IMAGE or --data DATA (with --out CACHE_DIR)")
    config = build_config(args)
    if args.data is not None:
        return _perceive_data(args, config)
    if args.out or args.strict or args.image_root:
        raise ValueError("--out, --strict and --image-root go with --data")
    return _perceive_image(args, config)


def _perceive_image(args: argparse.Namespace, config: PerceptionConfig) -> int:
    check_config(config)  # a missing extra or a bad option first, then the image, then the models load
    image = load_for(config, args.image)
    perceiver = Perceiver(config)
    [perception] = perceiver.perceive_loaded([image])
    if args.json:
        print(perception.to_json())
    else:
        print(verbalize_perception(perception, style=args.style))
    if args.show:
        picture = draw_perception(to_canvas(image, config.canvas, config.resample), perception)
        picture.save(args.show)
        print(f"wrote {args.show}", file=sys.stderr)
    return 0


def _perceive_data(args: argparse.Namespace, config: PerceptionConfig) -> int:
    if not args.out:
        raise ValueError("--data needs --out CACHE_DIR")
    if args.json or args.show:
        raise ValueError("--json and --show go with a single IMAGE")
    summary = precompute(
        args.data,
        args.out,
        config,
        image_root=args.image_root,
        strict=args.strict,
        progress=not args.no_progress,
    )
    print(summary.line())
    _leave_process_group()
    return 0


def _leave_process_group() -> None:
    """Wait for the other ranks, then destroy the gloo group accelerate's ``PartialState`` opened: a rank that
    exits with a live group can abort ("terminate called without an active exception")."""
    import torch.distributed as dist  # heavy: torch

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "perceive",
        help="run the perception models on an image (aux string) or a data set (cache)",
        description="Run the perception models (PS, OWOD, SGG, OCR; docs/perception.md) on one image and "
        "print its aux string, Perception JSON or a picture, or pre-compute a data set into a cache.",
    )
    p.add_argument("image", nargs="?", help="an image file (or use --data)")
    p.add_argument(
        "--data",
        help="LLaVA JSON list, JSON-lines file (.jsonl) or image directory to pre-compute (default: none)",
    )
    p.add_argument("--out", help="cache directory for --data (default: none, required with --data)")
    p.add_argument(
        "--image-root",
        help="directory the LLaVA 'image' paths are relative to (default: the directory of the --data file)",
    )
    p.add_argument(
        "--preset",
        default="default",
        choices=sorted(PRESETS),
        help="perception preset (default: %(default)s)",
    )
    p.add_argument(
        "--config",
        help="PerceptionConfig JSON (or a cache manifest.json) instead of --preset (default: none)",
    )
    p.add_argument(
        "--only",
        help="comma-separated roles to run: ps,owod,sgg,ocr, aliases seg, od (default: every role of the config)",
    )
    p.add_argument(
        "--checkpoint",
        action="append",
        type=role_path,
        metavar="ROLE=PATH",
        help="load the ROLE backend (ps, owod, sgg) from a local directory or file instead of its default "
        "hub id, e.g. ps=./mask2former (repeatable; default: the config's)",
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        metavar="N",
        help=f"refuse images with more than N pixels, a decompression-bomb guard "
        f"(default: the config's, {DEFAULT_MAX_PIXELS:,} = Pillow's limit)",
    )
    p.add_argument(
        "--json",
        action="store_true",
        help="print the Perception JSON instead of the aux string (default: off)",
    )
    p.add_argument(
        "--show",
        type=picture_path,
        metavar="OUT.png",
        help="draw masks, boxes, relations and text to a picture (default: none)",
    )
    p.add_argument(
        "--style",
        default="official",
        choices=STYLES,
        help="verbalizer of the printed aux string (default: %(default)s)",
    )
    p.add_argument(
        "--device",
        type=torch_device_or_auto,
        help="torch device of the neural backends: auto, cpu, cuda, cuda:1, ... "
        "(default: the config's, auto = CUDA when available)",
    )
    p.add_argument(
        "--batch-size", type=positive_int, help="images per backend call, >= 1 (default: the config's, 4)"
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="--data: abort on the first bad record or image instead of reporting and skipping it "
        "(default: off)",
    )
    p.add_argument("--no-progress", action="store_true", help="--data: no progress bar (default: off)")
    p.set_defaults(func=cmd_perceive)
