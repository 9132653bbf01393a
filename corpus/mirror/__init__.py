"""The offline sample mirror: a few hundred real documents per source in each upstream's own
files, names and record shapes, so `elm-corpus build --sample` runs the real pipeline with no
network. Text that installs offline (`text`), the documents cut from it (`documents`), each
upstream's shape (`upstream`), and writing, indexing and reading back the mirror (`mirror`).
"""
