"""A local copy of a corpus on an object store, for readers that memory-map shards (the sampler, training).

:func:`cache_corpus` makes ``<cache>/<protocol>/<bucket>/<prefix>/`` look like a corpus folder:
``corpus.json`` as the store holds it now, and ``shards/<source>/<unit>.{bin,idx}`` of every unit
the ledger lists as finished, or with ``sources`` only of those sources (what a run samples: a
source of weight 0 is never read, so it is not copied; its chunk count comes from corpus.json). Each file is downloaded once into a temporary file beside its
place, hashed on the way, and put in place only when its sha256 equals the unit's ledger entry.
A file already there is hashed again each time a process syncs, so a cache left half-written by
a killed process, or damaged since, is fetched again, never trusted; files of units the ledger
no longer lists are removed. A lock on the folder makes the processes of one machine download
each file once between them.

:func:`local_unit` is the one-unit version, for readers that open a few units at a time (inspect, the
contamination scan): the unit where it lies, or a checked copy of it in a scratch folder.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from corpus.store import location
from corpus.store.files import atomic_write_bytes, held_lock, sha256_file
from corpus.store.layout import CORPUS_JSON, SHARDS_DIR, CorpusDir, NotACorpus
from corpus.store.location import ObjectPath

_SUFFIXES = ((".bin", "sha256_bin"), (".idx", "sha256_idx"))
_LOCK = ".sync.lock"


class CacheError(ValueError):
    """An object of the store does not match its own ledger entry: the store's copy is damaged, not the cache."""


@dataclass
class CachedCorpus:
    """What a sync found: the local folder to read, and how many files it took from the store or the cache."""
    source: ObjectPath
    folder: Path
    downloaded: int = 0
    reused: int = 0
    removed: int = 0
    not_copied: int = 0  # files of finished units of the sources not asked for


def cache_folder(root: ObjectPath, cache_root: str | Path) -> Path:
    """Where a corpus's local copy lives: the URI's protocol and path under ``cache_root``."""
    parts = [p for p in root.path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise ValueError(f"{root}: a corpus URI with '.' or '..' in its path cannot be cached")
    return Path(cache_root).joinpath(root.protocol, *parts)


def cache_corpus(root: ObjectPath, cache_root: str | Path,
                 sources: Callable[[dict], Collection[str] | None] | None = None) -> CachedCorpus:
    """Bring the local copy of the corpus at ``root`` up to date with its ledger, for the sources that
    ``sources(corpus_json)`` names (default, or None from it: all); see the module docstring. The choice is made
    from the corpus.json this sync reads, so the store's copy is fetched once.

    Raises :class:`NotACorpus` when ``root`` holds no corpus.json, :class:`CacheError` when a
    downloaded object's hash differs from its ledger entry (run ``elm-corpus verify`` on the URI).
    """
    corpus = CorpusDir(root)
    folder = cache_folder(root, cache_root)
    folder.mkdir(parents=True, exist_ok=True)
    result = CachedCorpus(root, folder)
    with held_lock(folder / _LOCK):
        _remove_temporaries(folder)
        try:
            index = location.read_bytes(corpus.corpus_json_path)
        except FileNotFoundError:
            raise NotACorpus(f"{root} holds no {CORPUS_JSON}: not a built corpus (build it with 'elm-corpus build "
                             f"MANIFEST --out {root}')") from None
        chosen = sources(json.loads(index)) if sources is not None else None
        wanted: set[Path] = set()
        for (source, unit), entry in sorted(corpus.ledger_entries().items()):
            if not _plain_name(source) or not _plain_name(unit):
                raise CacheError(f"{root}: ledger entry {source}/{unit} has a name that is no file name")
            local_stem = folder / SHARDS_DIR / source / unit
            for suffix, key in _SUFFIXES:
                local, remote = local_stem.with_suffix(suffix), corpus.shard_stem(source, unit).with_suffix(suffix)
                wanted.add(local)  # kept if a run that samples the source cached it, but checked only when asked for
                if chosen is not None and source not in chosen:
                    result.not_copied += 1
                    continue
                if local.is_file() and sha256_file(local) == entry.get(key):
                    result.reused += 1
                    continue
                try:
                    location.download(remote, local, sha256=entry.get(key))
                except ValueError as e:
                    raise CacheError(f"{e}: the store's copy is damaged; run 'elm-corpus verify {root}'") from None
                result.downloaded += 1
        result.removed = _remove_unlisted(folder / SHARDS_DIR, wanted)
        # corpus.json last: a reader that finds it finds every shard it lists in place
        atomic_write_bytes(folder / CORPUS_JSON, index)
    return result


def local_unit(corpus: CorpusDir, source: str, unit: str, entry: dict, scratch: Path) -> Path:
    """The unit's shard stem on the local disk: where it is, or (object store) a copy in ``scratch`` of its ``.bin``,
    ``.idx`` (each checked against the ledger ``entry``'s sha256) and sidecar."""
    stem = corpus.shard_stem(source, unit)
    if not corpus.remote:
        return Path(stem)
    local = scratch / source / unit
    local.parent.mkdir(parents=True, exist_ok=True)
    for suffix, sha in ((".bin", entry.get("sha256_bin")), (".idx", entry.get("sha256_idx")), (".json", None)):
        location.download(stem.with_suffix(suffix), local.with_suffix(suffix), sha256=sha)
    return local


def _plain_name(name: str) -> bool:
    return bool(name) and name not in (".", "..") and "/" not in name and not name.startswith(".")


def _remove_temporaries(folder: Path) -> None:
    """Downloads a killed process left half done (no other process downloads while the lock is held)."""
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if name.startswith(".") and name.endswith(".tmp"):
                os.unlink(os.path.join(dirpath, name))


def _remove_unlisted(shards: Path, wanted: set[Path]) -> int:
    """Remove cached shard files of units the ledger no longer lists (a rebuilt or repaired corpus)."""
    removed = 0
    if shards.is_dir():
        for path in shards.rglob("*"):
            if path.is_file() and path.suffix in (".bin", ".idx") and path not in wanted:
                path.unlink()
                removed += 1
    return removed
