"""Data ablations: small proxy models trained on candidate corpora (variants) with several seeds, evaluated on the
same tasks, and judged with intervals. The spec and what a rerun may reuse (`spec`), the statistics over seeds and
items (`intervals`), and the report that ranks the variants (`report`). Running the builds, the trials and their
evaluations is the orchestrator's; it hands this package what they produced.
"""
