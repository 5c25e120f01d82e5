"""Datasets: the task registry, loaders (local parquet, hub, custom files), validation, prompts."""

from ftlab.data.loading import Example, load_examples
from ftlab.data.tasks import TASKS, Task, get_task

__all__ = ["Example", "TASKS", "Task", "get_task", "load_examples"]
