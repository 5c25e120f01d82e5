"""`synthetic-arith`: seeded multi-digit arithmetic and comparisons with exact integer answers.

Train and test come from different seeds and the test set excludes any question that also
appears in the training stream, so held-out accuracy measures generalisation, not recall.
"""

from __future__ import annotations

import random

TRAIN_SEED = 1_000_003
TEST_SEED = 2_000_003
DEFAULT_SIZES = {"train": 5000, "test": 500}


def _one(rng: random.Random) -> tuple[str, int, str]:
    kind = rng.choices(["add", "sub", "mul", "cmp"], weights=[4, 3, 2, 1])[0]
    if kind == "add":
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return f"What is {a} + {b}?", a + b, kind
    if kind == "sub":
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return f"What is {a} - {b}?", a - b, kind
    if kind == "mul":
        a, b = rng.randint(10, 99), rng.randint(2, 9)
        return f"What is {a} * {b}?", a * b, kind
    a, b = rng.sample(range(1000, 9999), 2)
    return f"Which number is larger, {a} or {b}?", max(a, b), kind


def _stream(seed: int, n: int, exclude: set[str] | None = None) -> list[dict]:
    rng = random.Random(seed)
    rows, seen = [], set(exclude or ())
    while len(rows) < n:
        q, ans, kind = _one(rng)
        if q in seen:
            continue
        seen.add(q)
        rows.append({"question": q, "answer": str(ans), "kind": kind})
    return rows


def generate(split: str, n: int | None = None) -> list[dict]:
    if split not in DEFAULT_SIZES:
        raise ValueError(f"synthetic-arith has splits train and test, not {split!r}")
    n = n or DEFAULT_SIZES[split]
    if split == "train":
        return _stream(TRAIN_SEED, n)
    # Exclude exactly the training set: excluding a larger stream would remove whole question
    # kinds with small answer spaces (2-digit x 1-digit products) from the test split.
    train_q = {r["question"] for r in _stream(TRAIN_SEED, DEFAULT_SIZES["train"])}
    return _stream(TEST_SEED, n, exclude=train_q)
