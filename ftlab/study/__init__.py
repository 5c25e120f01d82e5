"""Studies: a grid of recipes trained, quantized and evaluated as one job graph, ending in a verdict.

`analysis` computes the verdict's statistics from collected per-item outcomes; `report` renders it.
"""
