"""Where the project keeps its data: ``$ELM_CORPUS_DATA`` if set, else ``./data``.

Corpora go to ``data_root()/corpora/<name>``, the offline sample mirror to
``data_root()/sample``, local copies of corpora on object stores (for training) to
``data_root()/cache``. Resolved at call time so a changed environment is honoured.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "ELM_CORPUS_DATA"


def data_root() -> Path:
    value = os.environ.get(DATA_ENV)
    return Path(value).expanduser() if value else Path("data")


def corpora_root() -> Path:
    return data_root() / "corpora"


def mirror_root() -> Path:
    """The offline sample mirror (``elm-corpus build --sample`` reads it)."""
    return data_root() / "sample"


def cache_root() -> Path:
    """Local copies of the shards of corpora on object stores, which training memory-maps (``--corpus-cache``)."""
    return data_root() / "cache"


def corpus_name(manifest_name: str, sample: bool) -> str:
    """The corpus a manifest builds: its name, or ``<name>-sample`` when built from the sample mirror."""
    return f"{manifest_name}-sample" if sample else manifest_name


def default_corpus_dir(manifest_name: str, sample: bool) -> Path:
    return corpora_root() / corpus_name(manifest_name, sample)
