"""Chat data of the seed's kind (a system prompt, a question, an answer; the prompt masked) at chosen lengths.

The demo's Faro facts, with the question carrying `context` other facts and the answer `extra` more, so the
examples reach the lengths a memory measurement needs (the demo's own are ~100 tokens). Deterministic per seed.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson


def chat_examples(n: int, context: int, extra: int, seed: int, exact: bool = False) -> list[dict]:
    """`n` chat examples; each question quotes up to `context` facts, each answer adds up to `extra` facts (exactly
    that many with `exact`: examples of nearly one length, so any batch is as wide as the widest)."""
    from farensed.demo.data import FACTS, QUESTIONS, SYSTEM, _ask

    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        topic, answer = rng.choice(FACTS)
        quoted = " ".join(rng.choice(FACTS)[1] for _ in range(context if exact else rng.randint(0, context)))
        more = " ".join(rng.choice(FACTS)[1] for _ in range(extra if exact else rng.randint(0, extra)))
        question = _ask(rng.choice(QUESTIONS), topic)
        examples.append(
            {
                "messages": [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": f"{quoted}\n{question}".strip()},
                    {"role": "assistant", "content": f"{answer} {more}".strip()},
                ]
            }
        )
    return examples


def write_chat_data(folder: Path, n_train: int, context: int, extra: int, seed: int = 0, exact: bool = False) -> dict:
    """train.jsonl and valid.jsonl (a quarter of n_train) in `folder`; returns the spec's `data`."""
    folder.mkdir(parents=True, exist_ok=True)
    parts = {
        "train": chat_examples(n_train, context, extra, seed, exact),
        "valid": chat_examples(max(n_train // 4, 2), context, extra, seed + 1, exact),
    }
    for key, records in parts.items():
        (folder / f"{key}.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return {key: str(folder / f"{key}.jsonl") for key in parts}
