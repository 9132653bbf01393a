"""Chunks back to text: decode a shard's chunks and say exactly where each came from.

Every kept chunk's sidecar entry ``origin`` names the input record (byte offset of a
JSON line in the decompressed stream, or parquet row) and which 2048-word part of that
record it is, so a chunk can be traced to the bytes it was made from.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from corpus.store.cache import local_unit
from corpus.store.layout import CorpusDir, read_corpus_json
from corpus.store.shards import Shard
from corpus.tokenizer.tokenizer import Tokenizer, load_tokenizer


@dataclass
class ChunkView:
    source: str
    unit: str
    shard: Path          # the .bin file
    index: int           # chunk number within the shard
    token_offset: int    # where the chunk starts in the .bin, in tokens
    num_tokens: int
    input_uri: str
    location_kind: str   # "byte" (JSON lines) or "row" (parquet)
    location: int | None
    part: int | None     # which 2048-word chunk of the record
    text: str

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["shard"] = str(self.shard)
        return d


def _shard_stem(path: str | Path) -> Path:
    path = Path(path)
    stem = path.with_suffix("") if path.suffix in (".bin", ".idx", ".json") else path
    if not stem.with_suffix(".idx").exists():
        raise FileNotFoundError(f"{path}: no shard there (looked for {stem.with_suffix('.idx')})")
    return stem


def _tokenizer_for(stem: Path, sidecar: dict) -> Tokenizer:
    """The tokenizer the shard was written with: the corpus's, checked against the sidecar's hash."""
    corpus_json = CorpusDir(stem.parents[2]).corpus_json_path if len(stem.parents) > 2 else None
    described = {}
    if corpus_json is not None and corpus_json.exists():
        described = read_corpus_json(corpus_json.parent).get("tokenizer") or {}
    return _checked_tokenizer(stem, sidecar, described)


def _checked_tokenizer(stem: Path, sidecar: dict, described: dict) -> Tokenizer:
    """The tokenizer corpus.json describes (`described`), refused unless it is the one the sidecar names."""
    want = sidecar.get("tokenizer_sha256")
    spec, normalize = described.get("spec", "default"), described.get("normalize", "NFC")
    tokenizer = load_tokenizer(spec, normalize)
    if want and tokenizer.sha256 != want:
        raise ValueError(f"{stem}: written with tokenizer {want[:12]}, but {spec!r} is {tokenizer.sha256[:12]}; "
                         f"the text would decode wrongly")
    return tokenizer


def _view(shard: Shard, sidecar: dict, index: int, tokenizer: Tokenizer) -> ChunkView:
    origin = sidecar.get("origin") or {}
    records, parts = origin.get("record") or [], origin.get("part") or []
    source_input = sidecar.get("input") or {}
    begin, length = shard.spans([index])
    return ChunkView(
        source=sidecar.get("source", shard.stem.parent.name), unit=sidecar.get("unit", shard.stem.name),
        shard=shard.stem.with_suffix(".bin"), index=index, token_offset=int(begin[0]), num_tokens=int(length[0]),
        input_uri=source_input.get("uri", "?"), location_kind=origin.get("location", "byte"),
        location=int(records[index]) if index < len(records) else None,
        part=int(parts[index]) if index < len(parts) else None,
        text=tokenizer.decode(shard.chunk(index)))


def chunk_at(shard_path: str | Path, index: int) -> ChunkView:
    """Chunk ``index`` of one shard (named by its .bin, .idx, .json or stem)."""
    stem = _shard_stem(shard_path)
    shard = Shard.open(stem)
    if not 0 <= index < len(shard):
        raise ValueError(f"{stem.with_suffix('.bin')} holds {len(shard)} chunks; --index must be 0.."
                         f"{len(shard) - 1}")
    sidecar = shard.sidecar()
    return _view(shard, sidecar, index, _tokenizer_for(stem, sidecar))


def draw_chunks(corpus_dir: str | Path, source: str | None = None, n: int = 3, seed: int = 0) -> list[ChunkView]:
    """``n`` chunks drawn uniformly without replacement from the finished units (of ``source``), in corpus order.

    The chunk counts come from the ledger, so only the units drawn from are opened; a corpus on an
    object store has just those units' shards and sidecars fetched, each checked against its ledger entry.
    """
    folder = CorpusDir(corpus_dir)
    entries = folder.ledger_entries()  # (source, unit) -> entry
    finished = sorted(entries)
    sources = sorted({s for s, _ in finished})
    if source is not None:
        if source not in sources:
            raise ValueError(f"{corpus_dir}: no finished units of source {source!r}; sources with some: "
                             f"{', '.join(sources) or 'none yet'}")
        sources = [source]
    units = [key for key in finished if key[0] in sources]
    counts = np.array([int(entries[key]["chunks"]) for key in units], dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        raise ValueError(f"{corpus_dir}: no chunks to inspect yet" + (f" in source {source!r}" if source else ""))
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total), replace=False))
    starts = np.concatenate([[0], np.cumsum(counts)])
    with tempfile.TemporaryDirectory(prefix="elm-inspect-") as scratch:
        out, tokenizer, opened = [], None, {}
        for pick in picks.tolist():
            k = int(np.searchsorted(starts, pick, side="right") - 1)
            if k not in opened:
                opened[k] = Shard.open(local_unit(folder, *units[k], entries[units[k]], Path(scratch)))
            shard = opened[k]
            sidecar = shard.sidecar()
            if tokenizer is None:
                described = read_corpus_json(corpus_dir).get("tokenizer") or {}
                tokenizer = _checked_tokenizer(shard.stem, sidecar, described)
            view = _view(shard, sidecar, pick - int(starts[k]), tokenizer)
            view.shard = folder.shard_stem(*units[k]).with_suffix(".bin")  # the store's, not the scratch copy
            out.append(view)
    return out
