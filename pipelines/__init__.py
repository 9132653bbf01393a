"""The corpus pieces run on Ray: cut inputs into work units (`plan`), what one unit does (`unit`),
the worker side of a task (`worker`), one runner that starts Ray and keeps N tasks in flight
(`runner`), the resumable build driver (`build`) and the live stream that feeds a trainer
(`stream`); and the `elm-corpus` command (`cli`, printing through `views`). Imports `corpus`
only.
"""
