"""`moai serve` under load: 16 concurrent clients, micro-batching (max batch 8) against max batch 1.

Both servers run in this process on 127.0.0.1 (a port the OS picks) with the bundled model; each client
loops over the bundled example images and one question per ShapesWorld category, for ``--seconds`` (and at
most ``--max-requests`` requests per mode). Perception results are cached per image by the engine, so this
measures the serving path (queueing, batching, generate). Writes bench/results/serve.json: per mode the
requests, failures, requests/s and p50/p95/p99 latency, and the throughput ratio batched / unbatched,
measured in the same run. Target (issue: serving): >= 4x at 16 clients, no failed request. Without HTTP it
also times one request and a batch of 8 with the engine's ``threads="auto"`` against torch's default threads.

    python bench/serve.py [--seconds 30] [--clients 16] [--threads auto|N] [--device cpu|cuda|auto] [--out FILE]
"""

from __future__ import annotations

import os

# as `make` and `import moai` do: idle OpenMP threads sleep, so a busy CPU does not collapse the timings
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import base64
import http.client
import json
import statistics
import threading
import time
from pathlib import Path

from timing import interleave, machine, median_ms

from moai.args import thread_setting, torch_device_or_auto
from moai.engine import Engine
from moai.serve.app import ServeSettings, create_app
from moai.serve.batcher import BatchSettings
from moai.serve.server import BackgroundServer

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = (
    "Is there a red square in the image?",
    "How many circles are there?",
    "What color is the circle?",
    "What shape is the red object?",
    "What word is written on the sign?",
    "Is the red square above the sign?",
)


def request_bodies(model_id: str) -> list[bytes]:
    images = sorted((ROOT / "examples").glob("*.png"))
    bodies = []
    for image in images:
        url = f"data:image/png;base64,{base64.b64encode(image.read_bytes()).decode()}"
        for question in QUESTIONS:
            content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": question}]
            body = {"model": model_id, "messages": [{"role": "user", "content": content}], "max_tokens": 16}
            bodies.append(json.dumps(body).encode())
    return bodies


def client_loop(
    url: str,
    bodies: list[bytes],
    offset: int,
    stop_at: float,
    budget: list[int],
    lock: threading.Lock,
    out: dict,
) -> None:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    i = offset
    while time.monotonic() < stop_at:
        with lock:
            if budget[0] <= 0:
                break
            budget[0] -= 1
        start = time.perf_counter()
        try:
            conn.request(
                "POST", "/v1/chat/completions", bodies[i % len(bodies)], {"Content-Type": "application/json"}
            )
            response = conn.getresponse()
            data = response.read()
            ok = response.status == 200 and json.loads(data)["choices"][0]["message"]["content"] is not None
        except (OSError, http.client.HTTPException, ValueError, KeyError):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(host, int(port), timeout=120)
        elapsed = time.perf_counter() - start
        with lock:
            out["latencies" if ok else "failures"].append(elapsed)
        i += 1
    conn.close()


def load_window(
    url: str, bodies: list[bytes], clients: int, seconds: float, budget: list[int], out: dict
) -> float:
    """``clients`` threads loop over the requests for ``seconds``; returns the wall time."""
    lock = threading.Lock()
    start = time.monotonic()
    threads = [
        threading.Thread(target=client_loop, args=(url, bodies, k * 5, start + seconds, budget, lock, out))
        for k in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.monotonic() - start


def summary(max_batch: int, out: dict, wall: float, calls: int) -> dict:
    lat = sorted(out["latencies"])

    def pct(q: float) -> float | None:
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None

    return {
        "max_batch": max_batch,
        "requests": len(lat),
        "failures": len(out["failures"]),
        "seconds": round(wall, 2),
        "requests_per_s": round(len(lat) / wall, 2) if wall else 0.0,
        "latency_ms": {
            "p50": pct(0.50),
            "p95": pct(0.95),
            "p99": pct(0.99),
            "mean": round(statistics.fmean(lat) * 1000, 1) if lat else None,
        },
        "generate_calls": calls,
    }


def run(engine: Engine, clients: int, seconds: float, window: float, max_requests: int) -> dict[int, dict]:
    """Both servers up at once; load windows alternate between them (1 8 8 1 1 8 ...), so drift in the
    machine's load falls on both."""
    apps = {
        mb: create_app(
            engine,
            ServeSettings(batching=BatchSettings(max_batch=mb, max_wait_s=0.01, max_queue=4 * clients)),
        )
        for mb in (1, 8)
    }
    bodies = request_bodies(ServeSettings().model_id)
    outs = {mb: {"latencies": [], "failures": []} for mb in apps}
    walls = dict.fromkeys(apps, 0.0)
    budgets = {mb: [max_requests] for mb in apps}
    with BackgroundServer(apps[1]) as url1, BackgroundServer(apps[8]) as url8:
        urls = {1: url1, 8: url8}
        for mb in apps:  # warm-up: every image perceived once (cached by the engine), the model warmed up
            load_window(urls[mb], bodies, 1, 60.0, [len(bodies)], {"latencies": [], "failures": []})
        warm = {mb: apps[mb].state.batcher.batches for mb in apps}
        rounds = max(1, round(seconds / window))
        for r in range(rounds):
            for mb in (1, 8) if r % 2 == 0 else (8, 1):
                walls[mb] += load_window(urls[mb], bodies, clients, window, budgets[mb], outs[mb])
        calls = {mb: apps[mb].state.batcher.batches - warm[mb] for mb in apps}
    return {mb: summary(mb, outs[mb], walls[mb], calls[mb]) for mb in apps}


def engine_ceiling(engine: Engine, most: int) -> dict:
    """In-process, no HTTP: one batch of 8 requests (prepare + greedy generate) against one request, interleaved,
    with ``threads="auto"`` and with torch's default threads (``threads=0``) on the same model.
    8 x t(1) / t(8) is the most micro-batching can gain on this machine."""
    from PIL import Image

    images = [Image.open(p).convert("RGB") for p in sorted((ROOT / "examples").glob("*.png"))]
    batch = [(images[i % len(images)], QUESTIONS[i % len(QUESTIONS)]) for i in range(8)]
    parts = (engine.model, engine.processor, engine.perceiver, engine.aux_settings)
    engines = {"auto": Engine(*parts, threads="auto"), "default": Engine(*parts, threads=0)}

    def answer(e: Engine, items: list) -> None:
        inputs, _, _ = e.prepare([i for i, _ in items], [q for _, q in items])
        e.generate(inputs, 16).cpu()  # .cpu(): on an accelerator, wait for the tokens

    def on_worker(e: Engine, n: int) -> None:  # the engine's generate thread, as the server runs it
        engine.worker.submit(answer, e, batch[:n]).result()

    calls = {(name, n): (lambda e=e, n=n: on_worker(e, n)) for name, e in engines.items() for n in (1, 8)}
    times = {key: median_ms(t) for key, t in interleave(calls, most=most, warmup=2).items()}
    out = {}
    for name in engines:
        one, eight = times[(name, 1)], times[(name, 8)]
        out[name] = {
            "one_request_ms": round(one, 1),
            "batch_of_8_ms": round(eight, 1),
            "ceiling_ratio": round(8 * one / eight, 2),
        }
    out["auto_speedup_one"] = round(times[("default", 1)] / times[("auto", 1)], 2)
    out["auto_speedup_eight"] = round(times[("default", 8)] / times[("auto", 8)], 2)
    return out


def accelerator(device: str) -> dict:
    """The accelerator's name, for the result's machine record (nothing on the CPU)."""
    import torch

    if not device.startswith("cuda"):
        return {}
    return {"accelerator": torch.cuda.get_device_name(torch.device(device))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="load time per mode (default: %(default)s)"
    )
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default: %(default)s)")
    parser.add_argument(
        "--window", type=float, default=5.0, help="seconds per load window (default: %(default)s)"
    )
    parser.add_argument(
        "--max-requests", type=int, default=5000, help="request cap per mode (default: %(default)s)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2 s per mode, writes only with --out"
    )
    parser.add_argument(
        "--threads",
        type=thread_setting,
        default="auto",
        help="the servers' engine threads (moai serve --threads; default: %(default)s)",
    )
    parser.add_argument(
        "--device",
        type=torch_device_or_auto,
        default="cpu",
        help="the servers' model device (moai serve --device; default: %(default)s)",
    )
    parser.add_argument("--out", help="result file (default: bench/results/serve.json; none with --quick)")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.window = 2.0, 1.0
    out = args.out or (None if args.quick else str(ROOT / "bench" / "results" / "serve.json"))
    engine = Engine.load(device=args.device, threads=args.threads)
    device = str(engine.model.device)
    ceiling = engine_ceiling(engine, most=5 if args.quick else 30)
    modes = run(engine, args.clients, args.seconds, args.window, args.max_requests)
    ratio = modes[8]["requests_per_s"] / modes[1]["requests_per_s"]
    result = {
        "clients": args.clients,
        "seconds_per_mode": args.seconds,
        "window_seconds": args.window,
        "model": "checkpoints/moai-tiny-shapes",
        "threads": args.threads,
        "device": device,
        "unbatched": modes[1],
        "batched": modes[8],
        "throughput_ratio_batched_over_unbatched": round(ratio, 2),
        "target_ratio": 4.0,
        "engine_only": ceiling,
        "machine": machine(**accelerator(device)),
    }
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2) + "\n")
    for name, mode in (("max batch 1", modes[1]), ("max batch 8", modes[8])):
        lat = mode["latency_ms"]
        print(
            f"{name}: {mode['requests']} requests ({mode['failures']} failed) in {mode['seconds']} s = "
            f"{mode['requests_per_s']} req/s; latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, p99 {lat['p99']} ms; "
            f"{mode['generate_calls']} generate calls"
        )
    print(
        f"throughput ratio (max batch 8 / max batch 1, {args.clients} clients): {ratio:.2f}x (target >= 4x)"
    )
    for name, what in (("auto", "engine's threads (auto)"), ("default", "torch's default threads")):
        c = ceiling[name]
        print(
            f"engine alone, {what}: one request {c['one_request_ms']} ms, a batch of 8 {c['batch_of_8_ms']} ms: "
            f"micro-batching can gain at most {c['ceiling_ratio']}x on this machine"
        )
    print(
        f"engine's threads over torch's default: {ceiling['auto_speedup_one']}x faster for one request, "
        f"{ceiling['auto_speedup_eight']}x for a batch of 8"
    )
    if out:
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
