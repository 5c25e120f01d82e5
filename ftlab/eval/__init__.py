"""Evaluation stage: answer extraction, task metrics, generation backends, the evaluator and its CLIs.

Importing the package registers the metrics document schema with ftlab.schema.
"""

from ftlab.eval import documents as _documents  # noqa: F401  (registers the "metrics" schema)
from ftlab.eval.documents import load_metrics_document

__all__ = ["load_metrics_document"]
