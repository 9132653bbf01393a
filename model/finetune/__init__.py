"""Fine-tuning (`elm-train finetune`): SFT, LoRA/DoRA through PEFT, DPO and RSO, on the pretraining `Trainer`.

`records` reads the files users bring and tells their format, `chat` is OpenELM-Instruct's chat
template, `examples` tokenizes records into masked examples, `adapters` puts PEFT's adapters
into the model and keeps them in checkpoints, `preference` holds the DPO and RSO losses,
`batches` feeds the trainer, and `run` assembles a fine-tuning run from its settings.
"""
