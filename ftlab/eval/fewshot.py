"""k-shot examples (`eval.num_fewshot`): drawn once per task, deterministically, never from the rows
being evaluated.

Registered tasks draw from their train split (its first FEWSHOT_POOL rows; hub tasks stream, and
openmath's train split has a million rows); a custom file, having no split, draws from its own
rows that are not evaluated. Rows whose question equals an evaluated question are left out of the
pool either way. The k examples are a seeded sample (eval.seed) and every question of the task
gets the same ones, as in MMLU's original protocol: a fixed set is reproducible from the config
alone, and its tokens are a prefix all prompts share, computed once.
"""

from __future__ import annotations

import random

from ftlab.errors import FtlabError

FEWSHOT_POOL = 1000


def draw_shots(ref: str, task, evaluated: list, k: int, seed: int, *, workspace=None, source_dir=None) -> list:
    """`k` examples (ftlab.data.loading.Example) for task `ref`; [] when k is 0."""
    from ftlab.data.loading import is_custom_file, load_examples  # lazy: ftlab.data.loading imports numpy
    from ftlab.data.tasks import TASKS  # lazy: ftlab.data.tasks imports numpy

    if k <= 0:
        return []
    if is_custom_file(ref) and ref not in TASKS:
        used = {ex.index for ex in evaluated}
        pool = [ex for ex in load_examples(ref, "test", answer_kind=task.answer_kind) if ex.index not in used]
        where = f"the rows of {ref} that are not evaluated (lower eval.limit to free some)"
    else:
        pool = load_examples(ref, "train", workspace=workspace, limit=FEWSHOT_POOL, source_dir=source_dir)
        where = f"the train split of {task.name}"
    questions = {ex.question for ex in evaluated}
    pool = [ex for ex in pool if ex.question not in questions]
    if len(pool) < k:
        raise FtlabError(f"eval.num_fewshot={k}, but {where} has only {len(pool)} usable example(s); "
                         "lower eval.num_fewshot")
    return random.Random(seed).sample(pool, k)
