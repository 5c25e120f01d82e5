"""The `ftlab` subcommands, one module per command: `ftlab X` is `ftlab/commands/X.py`, which
provides `add_arguments(parser)` and `run(args) -> int` (its one-line help is `ftlab.cli.SUMMARY`).
The command framework (`ftlab/cli.py`) imports a command's module only when that command runs.

The package imports nothing itself."""
