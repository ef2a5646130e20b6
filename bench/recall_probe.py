"""Does the bundled model's LLM, trained from scratch, learn to look a thing up in its own context?

    python bench/recall_probe.py [--model moai|llama] [--pairs 4:8] [--queries 1] [--steps 3000] [--lr 1e-3]

Associative recall, text only (no image, no aux): a sequence of key-value token pairs, then keys asked
again; the answer to each asked key is the value that followed it earlier (``k3 v3 k1 v1 k7 v7 | k1 -> v1``).
Keys and values are distinct token ids of the ``shapes`` preset's vocabulary, drawn afresh every sample,
so nothing can be memorised: the answer is only in the context. This is the skill the aux text asks of a
model (find the asked word, read what stands beside it; docs/shapesworld.md, "Looking a thing up in
context: associative recall"), in its barest form.

The model is the ``shapes`` preset's LLM from random weights (``--width`` / ``--layers`` change it), either
inside `MoAIForConditionalGeneration` (``--model moai``, text-only input) or as transformers'
`LlamaForCausalLM` built from the same ``text_config`` (``--model llama``): the two should learn alike, which
checks that nothing in our decoder stands in the way. Trained with AdamW (linear warm-up, then constant
``--lr``) on fresh samples every step, the loss on the asked values only; scored every ``--every`` steps on
500 held-out samples (the argmax at each asked key, teacher-forced). Chance is 1 / ``--values``; "no
lookup" is what counting alone gets on the same samples (the value most frequent in the context among those
not yet asked): a model at that level has learnt the counts, not the lookup.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from transformers import LlamaForCausalLM  # noqa: E402

from moai.model.configuration import MoAIConfig  # noqa: E402
from moai.model.modeling import MoAIForConditionalGeneration  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from aux_match_probe import int_pair, resize_llm  # noqa: E402

HELD_OUT = 500
FIRST_ID = 10
"""Token ids below this (the special tokens of the ``shapes`` vocabulary) are never drawn."""


def sample(
    rng: random.Random, pairs: int, queries: int, keys: int, values: int, shared: int = 0
) -> tuple[list[int], list[int]]:
    """One sequence and its labels: ``pairs`` (key, value) pairs of distinct keys, a separator, then
    ``queries`` of those keys each followed by its value; labels are -100 except at the asked values.

    Keys are drawn from ``keys`` ids and values from the next ``values`` ids; or, with ``shared`` > 0, both
    from one pool of ``shared`` ids (each value not one of the sample's keys), so that every token of the
    pool is met as a key and as a value."""
    separator = FIRST_ID
    if shared:
        pool = range(FIRST_ID + 1, FIRST_ID + 1 + shared)
        key_ids = rng.sample(pool, pairs)
        value_ids = []
        for _ in key_ids:
            while (value := rng.choice(pool)) in key_ids:
                pass
            value_ids.append(value)
    else:
        key_ids = rng.sample(range(FIRST_ID + 1, FIRST_ID + 1 + keys), pairs)
        value_ids = [rng.randrange(FIRST_ID + 1 + keys, FIRST_ID + 1 + keys + values) for _ in key_ids]
    tokens = [t for kv in zip(key_ids, value_ids) for t in kv] + [separator]
    labels = [-100] * len(tokens)
    for i in rng.sample(range(pairs), queries):
        tokens += [key_ids[i], value_ids[i]]
        labels += [-100, value_ids[i]]
    return tokens, labels


def no_lookup_accuracy(items: list[tuple[list[int], list[int]]]) -> float:
    """Accuracy (%) of answering without looking the key up: the value most frequent among the context's
    values not yet asked (the best guess from counts alone; a model at this level has not learnt recall)."""
    hits = total = 0
    for tokens, labels in items:
        pairs = tokens.index(FIRST_ID) // 2
        left = Counter(tokens[1 : 2 * pairs : 2])
        for answer in (lab for lab in labels if lab != -100):
            hits += left.most_common(1)[0][0] == answer
            total += 1
            left[answer] -= 1
            if not left[answer]:
                del left[answer]
    return 100 * hits / total


def batch(items: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
    """Equal-length samples (one pair count a batch) as tensors: no padding."""
    return {
        "input_ids": torch.tensor([t for t, _ in items]),
        "labels": torch.tensor([lab for _, lab in items]),
    }


def build(kind: str, width: int, layers: int) -> torch.nn.Module:
    """The ``shapes`` preset's LLM, ``width`` wide (heads of 32, MLP three times the width) and ``layers``
    deep, random weights, inside our model or as transformers' Llama."""
    config = MoAIConfig.from_preset("shapes")
    resize_llm(config.text_config, width, layers)
    return MoAIForConditionalGeneration(config) if kind == "moai" else LlamaForCausalLM(config.text_config)


def loss_and_hits(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int, int]:
    """Cross-entropy on the asked values, and how many of them the argmax gets right (of how many)."""
    logits = model(input_ids=inputs["input_ids"]).logits[:, :-1]  # (batch, length - 1, vocab)
    target = inputs["labels"][:, 1:]
    asked = target != -100
    loss = torch.nn.functional.cross_entropy(logits[asked], target[asked])
    hits = int((logits[asked].argmax(-1) == target[asked]).sum())
    return loss, hits, int(asked.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", choices=("moai", "llama"), default="moai", help="whose decoder (default moai)"
    )
    parser.add_argument(
        "--width", type=int, default=128, help="LLM width, a multiple of 32 (default 128: shapes)"
    )
    parser.add_argument("--layers", type=int, default=4, help="LLM layers (default 4: the shapes preset's)")
    parser.add_argument("--pairs", default="4:8", help="key-value pairs a sample, MIN:MAX (default 4:8)")
    parser.add_argument("--queries", type=int, default=1, help="keys asked a sample (default 1)")
    parser.add_argument("--keys", type=int, default=40, help="distinct key tokens (default 40)")
    parser.add_argument("--values", type=int, default=12, help="distinct value tokens (default 12)")
    parser.add_argument(
        "--shared",
        type=int,
        default=0,
        help="draw keys and values from one pool of this many ids instead (--keys, --values unused), e.g. "
        "309: every token of the shapes vocabulary but the special ones (default 0: separate pools)",
    )
    parser.add_argument("--steps", type=int, default=3000, help="training steps (default 3000)")
    parser.add_argument("--every", type=int, default=250, help="score every N steps (default 250)")
    parser.add_argument("--batch-size", type=int, default=64, help="samples a step (default 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate after warm-up (default 1e-3)")
    parser.add_argument("--warmup", type=int, default=100, help="linear warm-up steps (default 100)")
    parser.add_argument("--seed", type=int, default=0, help="sampling and init seed (default 0)")
    parser.add_argument(
        "--init",
        type=Path,
        help="start from the weights --save wrote (same --model, --width, --layers; default: random)",
    )
    parser.add_argument("--save", type=Path, help="write the trained weights here (default: nothing written)")
    args = parser.parse_args(argv)
    try:
        low, high = int_pair(args.pairs)
    except ValueError:
        parser.error(f"--pairs {args.pairs!r}: expected MIN:MAX, e.g. 4:8")
    if not 1 <= args.queries <= low <= high <= args.keys:
        parser.error(
            f"--pairs {args.pairs} --queries {args.queries}: need 1 <= queries <= MIN <= MAX <= --keys"
        )
    if args.width < 32 or args.width % 32 or args.layers < 1:
        parser.error(f"--width {args.width} --layers {args.layers}: width a multiple of 32, layers >= 1")
    vocab = MoAIConfig.from_preset("shapes").text_config.vocab_size
    if FIRST_ID + 1 + args.keys + args.values > vocab:
        parser.error(f"--keys {args.keys} --values {args.values}: more tokens than the vocabulary's {vocab}")
    if args.shared and not high < args.shared <= vocab - FIRST_ID - 1:
        parser.error(
            f"--shared {args.shared}: need MAX pairs < SHARED <= {vocab - FIRST_ID - 1} (the vocabulary)"
        )

    torch.manual_seed(args.seed)
    model = build(args.model, args.width, args.layers)
    if args.init:  # a curriculum: an earlier run's weights, e.g. trained on fewer pairs
        if not args.init.is_file():
            parser.error(f"--init {args.init}: no such file (write one with --save)")
        try:
            model.load_state_dict(torch.load(args.init, weights_only=True))
        except RuntimeError as error:
            parser.error(f"--init {args.init}: not this model's weights ({str(error).splitlines()[0]})")
    rng, held_rng = random.Random(args.seed), random.Random(10_000 + args.seed)
    draw = (args.queries, args.keys, args.values, args.shared)
    held_out = [
        [sample(held_rng, pairs, *draw) for _ in range(HELD_OUT // (high - low + 1))]
        for pairs in range(low, high + 1)
    ]
    print(
        f"{args.model} LLM {args.width} wide, {args.layers} layers "
        f"({sum(p.numel() for p in model.parameters()):,} parameters); pairs {low}-{high}, "
        f"{args.queries} asked, "
        + (f"{args.shared} ids" if args.shared else f"{args.keys} keys, {args.values} values")
        + f" (chance {100 / (args.shared - high if args.shared else args.values):.1f} %, "
        f"no lookup {no_lookup_accuracy([s for group in held_out for s in group]):.1f} %)"
    )

    @torch.no_grad()
    def accuracy() -> float:
        model.eval()
        hits = total = 0
        for group in held_out:
            for start in range(0, len(group), 100):
                _, h, n = loss_and_hits(model, batch(group[start : start + 100]))
                hits, total = hits + h, total + n
        model.train()
        return 100 * hits / total

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    print("  step   loss  accuracy")
    print(f"{0:6d}      -  {accuracy():8.1f}", flush=True)
    start, running = time.time(), None
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * min(1.0, step / max(args.warmup, 1))
        pairs = rng.randint(low, high)
        loss, _, _ = loss_and_hits(model, batch([sample(rng, pairs, *draw) for _ in range(args.batch_size)]))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        running = loss.item() if running is None else 0.9 * running + 0.1 * loss.item()
        if step % args.every == 0 or step == args.steps:
            print(f"{step:6d}  {running:.3f}  {accuracy():8.1f}   ({time.time() - start:.0f} s)", flush=True)
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
