"""Evaluation stage. `evaluator` runs one model on its tasks (resolve, load, run each dataset entry
through its runner, write), `runners` is what a runner is, `fewshot` and `prompt_format` build what
the model is asked; `backends/` generate answers, `scoring/` judges them (answer kinds, extraction,
metrics, log-likelihood), `records/` holds what is written (the metrics document, per-task result
identity and the samples store). The commands are `ftlab/commands/evaluate.py`, `score.py`, `chat.py`.

The package imports nothing itself, so reading one of its light modules does not load the others."""
