"""Training stage: SFT / pre-training with TRL's SFTTrainer and peft (see runner.run_training).

`run_training` is imported on first use, so light modules (the PEFT kind registry that config
validation and naming read) load without the runner.
"""

__all__ = ["run_training"]


def __getattr__(name: str):
    if name == "run_training":
        from ftlab.train.runner import run_training

        return run_training
    raise AttributeError(f"module 'ftlab.train' has no attribute {name!r}")
