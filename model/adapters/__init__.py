"""Adapters: how a model's weights are parameterised for fine-tuning (LoRA, DoRA through PEFT), and the file
names of adapter folders. Part of the model core, so that fine-tuning, evaluation (`--adapter`) and export all
reach them from below.
"""
