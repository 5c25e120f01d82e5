"""Datasets: the task registry (`tasks`), loaders (`loading`: local parquet, hub, custom files),
validation and preparation (`prepare`), prompts (`prompts`), the synthetic generator.

The package imports nothing itself, so reading one of its modules does not load the others."""
