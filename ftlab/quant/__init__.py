"""Quantization stage: the engine interface (`engine_api`), the engines, the registry that looks
them up (`registry`), the pipeline, calibration and fidelity. A method's name, spec and run-name tag
live below the foundation, in `ftlab/kinds/quant.py`.

The package imports nothing itself, so reading one of its modules does not load the others."""
