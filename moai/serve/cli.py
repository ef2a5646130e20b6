"""``moai serve [--host 127.0.0.1] [--port 8000]``: the OpenAI-compatible server (docs/serve.md)."""

from __future__ import annotations

import argparse

from ..args import add_model_device, non_negative_float, port_number, positive_int, thread_setting


def cmd_serve(args: argparse.Namespace) -> int:
    # heavy: torch, transformers, fastapi, uvicorn (imported when the command runs)
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError:
        raise ValueError("moai serve needs fastapi and uvicorn: pip install 'moai-vlm[serve]'") from None
    # heavy: the engine (torch, transformers) and the app (fastapi)
    from ..compat.resolve import resolve_model
    from ..engine import DEFAULT_MODEL, Engine
    from .app import ServeSettings, create_app
    from .batcher import BatchSettings
    from .protocol import ServeLimits

    hosts = tuple(h.strip() for h in (args.allow_remote_images or "").split(",") if h.strip())
    engine = Engine.load(resolve_model(args.model), device=args.device, threads=args.threads)
    model_id = args.model_id or (args.model.rstrip("/").split("/")[-1] if args.model else DEFAULT_MODEL.name)
    settings = ServeSettings(
        model_id=model_id,
        limits=ServeLimits(allow_remote_images=hosts, max_tokens=args.max_tokens),
        batching=BatchSettings(
            max_batch=args.max_batch, max_wait_s=args.max_wait_ms / 1000, max_queue=args.max_queue
        ),
    )
    print(
        f"moai serve: model {model_id!r} on http://{args.host}:{args.port}/v1 (max batch {args.max_batch})",
        flush=True,
    )
    uvicorn.run(create_app(engine, settings), host=args.host, port=args.port, log_level="info")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``moai serve`` to the ``moai`` subcommands."""
    p = sub.add_parser("serve", help="OpenAI-compatible chat-completions server (micro-batched)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=port_number, default=8000, help="port to listen on (default: %(default)s)")
    p.add_argument(
        "--model", help="a saved MoAI directory (default: the bundled checkpoints/moai-tiny-shapes)"
    )
    add_model_device(p)
    p.add_argument("--model-id", help="the model name clients send (default: the model directory's name)")
    p.add_argument(
        "--max-batch",
        type=positive_int,
        default=8,
        help="most requests per generate call (default: %(default)s)",
    )
    p.add_argument(
        "--max-wait-ms",
        type=non_negative_float,
        default=10.0,
        help="how long a request waits for others to batch with (default: %(default)s)",
    )
    p.add_argument(
        "--max-queue",
        type=positive_int,
        default=64,
        help="most waiting requests before 429 (default: %(default)s)",
    )
    p.add_argument(
        "--max-tokens",
        type=positive_int,
        default=256,
        help="largest max_tokens a request may ask (default: %(default)s)",
    )
    p.add_argument(
        "--threads",
        type=thread_setting,
        default="auto",
        help="intra-op threads of generate: auto (one thread for a small forward), N, or 0 for torch's "
        "setting (default: %(default)s)",
    )
    p.add_argument(
        "--allow-remote-images",
        metavar="HOST,...",
        help="hosts http(s):// image URLs may come from (default: none, only data: URLs)",
    )
    p.set_defaults(func=cmd_serve)
