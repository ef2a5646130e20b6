"""``moai serve``: an OpenAI-compatible chat-completions server over the engine, with micro-batching.

protocol.py (requests and their limits) -> batcher.py (queue, micro-batches, ``generate``) -> app.py (the HTTP
routes) -> server.py (uvicorn in a thread, for tests and benchmarks) -> cli.py (the command).
"""
