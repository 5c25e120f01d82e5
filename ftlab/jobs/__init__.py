"""The job engine shared by `ftlab orchestrate` and `ftlab study`: jobs with dependencies, each run
in its own process (locally or as a Ray task), claimed under a lock file so concurrent drivers never
run one twice, and judged done by checking its output rather than by remembering that it ran."""
