"""Evaluation text that a `--sample` build never trains on, and the tasks made of it.

The sample mirror is cut from a pool of real text (corpus.mirror.text); a `--sample` build reads every document
of the mirror, so nothing in the mirror itself is held out. What no mirror document holds is left over in the pool:
`passages` finds it, `cloze` cuts multiple-choice cloze items from it, `task_folder` writes them as lm-eval tasks.
"""
