"""Fine-tune (or snapshot / pre-train) one model: edit the block below and run.

    uv run python Fine-tuning/01_Train.py                     # uses the block
    uv run python Fine-tuning/01_Train.py --config run.yaml   # a YAML file on top of the block
    uv run python Fine-tuning/01_Train.py peft.r=8 train.max_steps=20   # key=value on top of both

The output lands in Models/<base>-<dataset>_<method>_<peft>_<quant>/ (see docs/ARCHITECTURE.md).
All logic lives in ftlab.train; `ftlab train` is the same command.
"""

# ============================== edit here ==============================
MODEL_NAME = "smollm2-135m-instruct"  # hub id, local folder, .gguf, built-in name or scratch:<preset>
DATASET_CHOICE = "synthetic-arith"    # task name or data file; None = save an untrained base snapshot
FINETUNING = "SFT"                    # SFT, or PT (pre-training, e.g. scratch:<preset> models)
PEFT_CONFIG = "LoRa"                  # NoPeft, LoRa, rsLoRa, DoRa, VeRa, PiSSA, OLoRa, LoftQ
QUANT_METHOD = "NoQuant"              # NoQuant, or QLORA (4-bit NF4 base; QUANT_BITS = 8 for int8)
QUANT_BITS = 4
TRUNC_TRAIN = 512                     # use only the first N training rows; None = all

LORA_RANK = 16                        # VeRA: rank of the shared random projections (e.g. 256)
LORA_ALPHA = None                     # None = 2 * rank
LORA_DROPOUT = 0.05
TARGET_MODULES = ["all-linear"]       # all-linear, qkvo, or module names like ["q_proj", "v_proj"]

BATCH_SIZE = 8
GRAD_ACCUM = 1
LEARNING_RATE = 2e-4
EPOCHS = 1
MAX_STEPS = -1                        # > 0 overrides EPOCHS
MAX_LENGTH = 512
MERGE_AFTER_TRAIN = False             # True: save the merged full model instead of the adapter
# =======================================================================

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ftlab.commands.train import main_script  # noqa: E402

BASE = {
    "model": {"name": MODEL_NAME},
    "data": {"dataset": DATASET_CHOICE, "trunc_train": TRUNC_TRAIN, "max_length": MAX_LENGTH},
    "peft": {"method": PEFT_CONFIG, "r": LORA_RANK, "alpha": LORA_ALPHA, "dropout": LORA_DROPOUT,
             "target_modules": TARGET_MODULES},
    "quant": {"method": QUANT_METHOD, "bits": QUANT_BITS},
    "train": {"method": FINETUNING, "batch_size": BATCH_SIZE, "grad_accum": GRAD_ACCUM,
              "learning_rate": LEARNING_RATE, "epochs": EPOCHS, "max_steps": MAX_STEPS,
              "merge_after_train": MERGE_AFTER_TRAIN},
}

if __name__ == "__main__":
    sys.exit(main_script(BASE))
