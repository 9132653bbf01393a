"""Fine-tuning (`elm-train finetune`): SFT, LoRA/DoRA through PEFT, DPO and RSO, on the pretraining `Trainer`.

`records` reads the files users bring and tells their format, `examples` tokenizes records into
masked examples (in OpenELM-Instruct's chat format, `model.chat`), `preference` holds the DPO and
RSO losses, `batches` feeds the trainer, and `run` assembles a fine-tuning run from its settings,
with PEFT's adapters from `model.adapters`.
"""
