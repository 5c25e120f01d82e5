"""Training stage: SFT / pre-training with TRL's SFTTrainer and peft (`ftlab.train.runner.run_training`).

The package imports nothing itself, so light modules (settings, the PEFT kinds, the training-time
base quantization) load without the runner and its torch/transformers imports."""
