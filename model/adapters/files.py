"""The file names of adapters: PEFT's adapter folder (inside an adapter run's checkpoint) and mlx-lm's.

Apart from `lora.py`, which imports PEFT, so that a plain export names them without importing it.
"""
ADAPTER_DIR = "adapter"                          # the PEFT folder inside a checkpoint of an adapter run
ADAPTER_WEIGHTS = "adapter_model.safetensors"    # PEFT's
ADAPTER_CONFIG = "adapter_config.json"           # PEFT's and mlx-lm's
PEFT_PREFIX = "base_model.model."                # PEFT's key prefix in a saved adapter (PeftModel -> LoraModel -> model)
MLX_ADAPTER_WEIGHTS = "adapters.safetensors"     # mlx-lm's
