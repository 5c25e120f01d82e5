"""Experiment tracking: ftlab's runs (a study and its jobs, an evaluation) logged to MLflow or W&B
besides its own files. `ftlab.tracking.trackers.sync` is the one entry point; a tracker that is
down or misconfigured costs one warning line, never a job, and the next sync logs what it missed."""
