"""Evaluation tasks as data: which lm-eval tasks a name means (the project's sets; a group's or a tag's tasks,
`groups`), lm-eval's task manager and the offline check of a task's data (`manager`), and the texts of a task's
items that a model is scored on (`items`).

`elm-train eval` (model.eval) runs the harness on these tasks; `elm-corpus contamination` (corpus.cleaning) looks
for their items in a corpus. Both load tasks here, so the two always see the same tasks, from the same data.
"""
