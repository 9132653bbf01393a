"""The corpus on disk, the one place its formats are defined: atomic files and locks (`files`),
the uint16 token shards (`shards`) and their writer (`writer`), the folder layout with its
ledger of finished and failed units (`layout`), the counts every unit records (`counts`),
corpus.json assembled from the ledger (`index`) and the files checked against all of those
(`verify`). Formats: docs/formats.md.
"""
