"""``moai perceive``: one image -> aux string / Perception JSON / picture, or a data set -> cache.

    moai perceive IMAGE [--preset NAME] [--only ps,owod,sgg,ocr] [--json] [--show out.png]
    moai perceive --data LLAVA.json|DIR --out CACHE_DIR [--preset NAME] [--strict]

``seg`` and ``od`` are accepted as aliases of ``ps`` and ``owod``. ``--config FILE.json`` loads a full
``PerceptionConfig`` (for example the ``config`` of a cache manifest) instead of a preset. Under
``accelerate launch`` the ``--data`` run is data-parallel (moai/perception/dataset.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from .config import PRESETS, PerceptionConfig
from .verbalize import STYLES


def build_config(args: argparse.Namespace) -> PerceptionConfig:
    """The config of a command line: ``--config`` or ``--preset``, then ``--only``/``--device``/``--batch-size``."""
    if args.config:
        path = Path(args.config)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except OSError as err:
            raise FileNotFoundError(f"{path}: cannot read config ({err.strerror or err})") from None
        except ValueError as err:
            raise ValueError(f"{path}: not valid JSON ({err})") from None
        if isinstance(data, dict) and "config" in data and "format" in data:  # a cache manifest
            data = data["config"]
        config = PerceptionConfig.from_dict(data)
    else:
        config = PerceptionConfig.from_preset(args.preset)
    if args.only:
        config = config.only(part for part in args.only.split(",") if part.strip())
    overrides = {}
    if args.device:
        overrides["device"] = args.device
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
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
    from .image import to_canvas
    from .run import Perceiver
    from .verbalize import verbalize_perception

    perceiver = Perceiver(config)
    image = perceiver.load(args.image)
    [perception] = perceiver.perceive_loaded([image])
    if args.json:
        print(perception.to_json())
    else:
        print(verbalize_perception(perception, style=args.style))
    if args.show:
        from .draw import draw_perception

        picture = draw_perception(to_canvas(image, config.canvas, config.resample), perception)
        picture.save(args.show)
        print(f"wrote {args.show}", file=sys.stderr)
    return 0


def _perceive_data(args: argparse.Namespace, config: PerceptionConfig) -> int:
    from .dataset import precompute

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
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "perceive",
        help="run the perception models on an image (aux string) or a data set (cache)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("image", nargs="?", help="an image file")
    p.add_argument("--data", help="LLaVA JSON / JSON-lines file or image directory to pre-compute")
    p.add_argument("--out", help="cache directory for --data")
    p.add_argument(
        "--image-root", help="directory the LLaVA 'image' paths are relative to (default: the JSON's)"
    )
    p.add_argument("--preset", default="default", choices=sorted(PRESETS), help="perception preset")
    p.add_argument("--config", help="PerceptionConfig JSON (or a cache manifest.json) instead of --preset")
    p.add_argument("--only", help="comma-separated roles to run: ps,owod,sgg,ocr (aliases seg, od)")
    p.add_argument("--json", action="store_true", help="print the Perception JSON instead of the aux string")
    p.add_argument("--show", metavar="OUT.png", help="draw masks, boxes, relations and text to a picture")
    p.add_argument("--style", default="official", choices=STYLES, help="verbalizer of the printed aux string")
    p.add_argument("--device", help="torch device (default: auto = CUDA when available)")
    p.add_argument("--batch-size", type=int, help="images per backend call")
    p.add_argument("--strict", action="store_true", help="--data: abort on the first bad image")
    p.add_argument("--no-progress", action="store_true", help="--data: no progress bar")
    p.set_defaults(func=cmd_perceive)
