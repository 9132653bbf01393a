"""The corpus on disk, the one place its formats are defined: atomic files and locks (`files`),
the uint16 token shards (`shards`) and their writer (`writer`), the folder layout with its
ledger of finished and failed units (`layout`), the counts every unit records (`counts`) and
corpus.json assembled from the ledger (`index`). Formats: docs/formats.md.
"""
