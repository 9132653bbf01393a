"""What one work unit does: read -> NFC -> 2048-word chunks -> filters -> tokens.

The result depends only on the unit (its slice, the text rules, the tokenizer, the
source's filters), never on which worker ran it or when, which is what makes builds
byte-identical across worker counts and interruptions.

Order of the decisions for each chunk: CoreNet's ``too_few_chars``, then encoding with
BOS/EOS and CoreNet's ``too_few_tokens``, then the source's extra filters in manifest
order; the first that says no names the reason. A document is *kept* when at least one
of its chunks is kept, otherwise it is *dropped* under the reason of its first chunk.
Tokens are counted for every encoded chunk (kept, or dropped by a later rule); chunks
dropped by ``too_few_chars`` are never encoded, which is what makes that rule cheap.

Before any of that, whole documents are taken out: those deduplication removed, then (with a
manifest's ``decontaminate``) those sharing a word n-gram with a task item, looked for in the
document's whole normalised text, so an n-gram that a chunk boundary would cut is found too.
Either is dropped whole; its chunks are encoded only to count their tokens.
"""
from __future__ import annotations

import resource
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from corpus.cleaning.contamination import CONTAMINATED, Decontamination
from corpus.store.counts import UnitCounts
from corpus.text.filters import ChunkFilter
from corpus.text.readers import BadRecord, Record, read_slice
from corpus.text.rules import TOO_FEW_CHARS, TOO_FEW_TOKENS, CoreNetRules
from corpus.tokenizer.tokenizer import Tokenizer
from pipelines.plan import WorkUnit

# characters of text encoded per sentencepiece call: large enough to amortise the call, small in memory
_BATCH_CHARS = 1 << 20
_ENCODE_CHUNKS = 128


@dataclass
class UnitOutput:
    unit: WorkUnit
    chunks: list[np.ndarray] = field(default_factory=list)   # kept chunks, unless a sink took them
    origin_location: list[int] = field(default_factory=list)  # input location of each kept chunk's record
    origin_part: list[int] = field(default_factory=list)      # chunk number within that record
    counts: UnitCounts = field(default_factory=UnitCounts)
    quarantine: list[dict] = field(default_factory=list)
    contaminated_items: set[int] = field(default_factory=set)  # task items in the documents decontamination took
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_rss_mb: float = 0.0


class UnitProcessor:
    """Holds what every unit of one source needs, so a worker builds it once."""

    def __init__(self, rules: CoreNetRules, tokenizer: Tokenizer, filters: list[ChunkFilter], text_field: str):
        if tokenizer.vocab_size > np.iinfo(np.uint16).max + 1:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces; uint16 shards hold at most 65536")
        self.rules, self.tokenizer, self.filters, self.text_field = rules, tokenizer, filters, text_field

    def run(self, unit: WorkUnit, sink=None, removed: Mapping[int, tuple[str, str]] | None = None,
            decontaminate: Decontamination | None = None) -> UnitOutput:
        """Process one unit; kept chunks go to ``sink.add(chunk)`` (a shard writer) or to ``out.chunks``.

        ``removed``: records deduplication took out, ``position -> (reason, source of the copy kept)``, the
        position counting every record the reader yields (pipelines/dedup.py). ``decontaminate``: the tasks whose
        items no kept document may share an n-gram with.
        """
        started, cpu_started = time.perf_counter(), time.process_time()
        out = UnitOutput(unit)
        add = sink.add if sink is not None else out.chunks.append
        batch: list[Record] = []
        batch_chars = 0
        for position, item in enumerate(read_slice(unit.slice, self.text_field)):
            out.counts.documents_read += 1
            if isinstance(item, BadRecord):
                self._quarantine(out, item)
                continue
            if removed and position in removed:
                self._count_removed(item, out.counts, *removed[position])
                continue
            if decontaminate is not None:
                found = decontaminate.found_in(self.rules.normalize(item.text))
                if found.size:
                    self._count_removed(item, out.counts, CONTAMINATED)
                    out.contaminated_items.update(found.tolist())
                    continue
            batch.append(item)
            batch_chars += len(item.text)
            if batch_chars >= _BATCH_CHARS:
                self._process(batch, out, add)
                batch, batch_chars = [], 0
        if batch:
            self._process(batch, out, add)
        out.seconds = time.perf_counter() - started
        out.cpu_seconds = time.process_time() - cpu_started
        out.peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return out

    def _quarantine(self, out: UnitOutput, bad: BadRecord) -> None:
        sl = out.unit.slice
        where = "row" if sl.format == "parquet" else "byte"
        out.counts.quarantined += 1
        out.counts.quarantined_by_reason[bad.reason] += 1
        out.quarantine.append({"source": out.unit.source, "unit": out.unit.unit_id, "reason": bad.reason,
                               "file": sl.uri, where: bad.location, "detail": bad.detail,
                               "excerpt": bad.excerpt})

    def _count_removed(self, record: Record, counts: UnitCounts, reason: str, kept_in: str | None = None) -> None:
        """A document removed before the chunk rules is dropped whole; its tokens (every chunk, as encoded) are
        counted, and for a duplicate (``kept_in``: the source of the copy kept) the overlap figures too."""
        rules = self.rules.rules
        chunks = self.rules.split(self.rules.normalize(record.text))
        tokens = sum(len(ids) for i in range(0, len(chunks), _ENCODE_CHUNKS) for ids in
                     self.tokenizer.encode_arrays(chunks[i:i + _ENCODE_CHUNKS], bos=rules.add_bos, eos=rules.add_eos))
        counts.dropped[reason] += 1
        counts.tokens_dropped[reason] += tokens
        if kept_in is None:
            return
        counts.duplicate_of[kept_in] += 1
        counts.duplicate_tokens_of[kept_in] += tokens

    def _process(self, records: list[Record], out: UnitOutput, add) -> None:
        rules, counts = self.rules, out.counts
        # per candidate chunk: (record index in batch, part)
        candidates: list[tuple[int, int]] = []
        texts: list[str] = []
        first_reason: list[str | None] = [None] * len(records)
        kept_any = [False] * len(records)
        for r, record in enumerate(records):
            chunks = rules.split(rules.normalize(record.text))
            counts.chunks_split += len(chunks)
            for part, chunk in enumerate(chunks):
                if rules.has_enough_chars(chunk):
                    candidates.append((r, part))
                    texts.append(chunk)
                else:
                    counts.chunks_dropped[TOO_FEW_CHARS] += 1
                    if part == 0:
                        first_reason[r] = TOO_FEW_CHARS
        add_bos, add_eos = rules.rules.add_bos, rules.rules.add_eos
        for i in range(0, len(texts), _ENCODE_CHUNKS):  # a bounded group at a time: one book can be 1000s of chunks
            group = texts[i:i + _ENCODE_CHUNKS]
            # texts are normalised already: no second NFC pass
            encoded = self.tokenizer.encode_arrays(group, bos=add_bos, eos=add_eos)
            for (r, part), text, ids in zip(candidates[i:i + _ENCODE_CHUNKS], group, encoded):
                reason = None
                if not rules.has_enough_tokens(ids):
                    reason = TOO_FEW_TOKENS
                else:
                    for f in self.filters:
                        keep, detail = f.check(text)
                        if not keep:
                            reason = f.name
                            counts.drop_details[f"{f.name}:{detail or 'rejected'}"] += 1
                            break
                if reason is not None:
                    counts.chunks_dropped[reason] += 1
                    counts.tokens_dropped[reason] += len(ids)
                    if part == 0:
                        first_reason[r] = reason
                    continue
                kept_any[r] = True
                add(ids)
                out.origin_location.append(records[r].location)
                out.origin_part.append(part)
                counts.chunks_kept += 1
                counts.tokens += len(ids)
        for r in range(len(records)):
            if kept_any[r]:
                counts.kept += 1
            else:
                counts.dropped[first_reason[r]] += 1
