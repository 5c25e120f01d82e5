"""Registered task names, which run names keep as they are (`ftlab.naming.dataset_component`).

Each task's definition (source, answer kind, prompt, gold) is a `Task` in `ftlab/data/tasks.py`,
registered against a name here; `tests/kinds/test_kinds.py` checks the two lists are equal.
"""

from __future__ import annotations

from ftlab.registry import Registry

TASK_NAMES: Registry[str] = Registry("task")
for _name in ("openmath", "arc", "boolq", "squad_v2", "synthetic-arith"):
    TASK_NAMES.add(_name, _name)
