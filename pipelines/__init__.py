"""The corpus pieces run on Ray: cut inputs into work units (`plan`), what one unit does (`unit`),
the worker side of a task (`worker`), one runner that starts Ray and keeps N tasks in flight
(`runner`), the resumable build driver (`build`), the live stream (`stream`) and that stream as
the corpus a training job reads (`live_corpus`); and the `elm-corpus` command (`cli`, printing
through `views`). Imports `corpus` only.
"""
