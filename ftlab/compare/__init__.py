"""Comparison of evaluated models: `load_metrics()` gives the same tidy frame `ftlab compare` prints."""

from ftlab.compare.frame import add_deltas, filter_frame, load_metrics, wide_table

__all__ = ["load_metrics", "filter_frame", "add_deltas", "wide_table"]
