"""Training stage: SFT / pre-training with TRL's SFTTrainer and peft (see runner.run_training)."""

from ftlab.train.runner import run_training

__all__ = ["run_training"]
