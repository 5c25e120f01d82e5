"""Every name of the names layer (ftlab/kinds/) has exactly one behaviour definition in its stage,
and every behaviour definition is registered against a name there."""

from __future__ import annotations

from ftlab.data.tasks import TASKS
from ftlab.kinds.peft import PEFT_NAMES
from ftlab.kinds.quant import PTQ_METHODS, TRAINING_METHODS
from ftlab.kinds.tasks import TASK_NAMES
from ftlab.quant.engine_api import ENGINES
from ftlab.train.base_quant import BASE_QUANTS
from ftlab.train.peft_methods import PEFT_KINDS


def test_peft_kinds():
    assert PEFT_KINDS.names() == PEFT_NAMES.names()
    assert all(kind.name == name for name, kind in PEFT_KINDS.items())


def test_quant_methods():
    import ftlab.quant.registry  # noqa: F401  (imports every engine)

    assert ENGINES.names() == list(PTQ_METHODS)
    assert BASE_QUANTS.names() == list(TRAINING_METHODS)


def test_tasks():
    assert TASKS.names() == TASK_NAMES.names()
    assert all(task.name == name for name, task in TASKS.items())


def test_trackers():
    from ftlab.kinds.tracking import TRACKER_NAMES
    from ftlab.tracking.trackers import TRACKERS

    assert TRACKERS.names() == TRACKER_NAMES.names()
    assert all(tracker.name == name for name, tracker in TRACKERS.items())
