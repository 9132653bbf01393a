"""Evaluation with lm-evaluation-harness: the project's model as a harness LM (`lm`), Apple's published
numbers for OpenELM's task sets (`tasks`; the sets and the loading of tasks are corpus.tasks'), and a run of the harness on any model
folder (`harness`) that `elm-train eval` starts. The harness does the tasks, prompts and metrics; only
the model's side (log-likelihoods, rolling log-likelihoods, generation) is written here, and what is read from the
harness's answers afterwards: every multiple-choice item's acc, acc_norm and bpb (`item_scores`), and what a run's
corpus held of the tasks (`contamination`).
"""
