"""Fine-tuning (`elm-train finetune`): an objective (SFT, DPO, RSO, ORPO) times an adapter (none, LoRA, DoRA through
PEFT), on the pretraining `Trainer`.

`records` reads the files users bring and tells their format, `examples` tokenizes records into
masked examples (in OpenELM-Instruct's chat format, `model.chat`), `objectives` holds the losses
in one registry, `batches` feeds the trainer, and `run` assembles a fine-tuning run from its
settings (`config`), with PEFT's adapters from `model.adapters`.
"""
