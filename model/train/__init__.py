"""Training OpenELM: the settings of a run, the optimizer and loss, ranks and devices, the data door, the run
folder with its checkpoints and metrics, and the `Trainer` whose short loop a pretraining or fine-tuning run
reuses. `model.train.data` is the one module here that reaches the data side (corpus.mixing, corpus.store,
pipelines); `model.pretrain` assembles the pretraining run that `elm-train` starts.
"""
