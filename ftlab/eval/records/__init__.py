"""What evaluation writes and reads back: the metrics document (`documents`: builder, check,
upgraders) and per-task result identity and the samples store (`results`). The package imports
nothing itself."""
