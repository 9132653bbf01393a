"""Ids assembled per space-delimited segment: sentencepiece's ids, with most of its work skipped.

The build's encoder (:meth:`corpus.tokenizer.tokenizer.Tokenizer.encode_arrays`). Natural text
and code repeat most of their segments, so a bounded cache of ids per segment serves most of
a text; :func:`segment_split_reason` says whether a model's ids may be assembled this way.
"""
from __future__ import annotations

import re
from typing import Iterable

import numpy as np
import sentencepiece as spm

from corpus.tokenizer import hf_twin
from corpus.tokenizer.hf_twin import WS  # sentencepiece's visible space

# The cache, per model and process, starts over when it would pass either bound (~60 MB at most)
SEGMENT_CACHE_ENTRIES = 1 << 18
SEGMENT_CACHE_CHARS = 1 << 22
SEGMENT_CACHE_MAX_CHARS = 256  # a longer segment (base64, a minified line) is encoded every time


def segment_split_reason(model_bytes: bytes) -> str | None:
    """None if this model's ids for a text are the concatenation of its ids per segment, else why not.

    A segment is a run of spaces and the non-space characters after it (``"  foo,"``). Cutting
    there is exact when the normalizer maps character by character (``identity``, no extra-space
    removal), spaces become prefix ``▁``, and no piece holds a ``▁`` after another character: then
    no BPE merge can join the two sides of a cut, and each side's merges happen in the same order
    alone as in the whole text. The same cut is the Hugging Face twin's pre-tokenizer
    (:mod:`corpus.tokenizer.hf_twin`).
    """
    from sentencepiece import sentencepiece_model_pb2 as pb

    reason = hf_twin.supported(model_bytes)
    if reason is not None:
        return reason
    m = pb.ModelProto()
    m.ParseFromString(model_bytes)
    for i, p in enumerate(m.pieces):
        if WS in p.piece.lstrip(WS):
            return f"piece {i} {p.piece!r} has a space after another character"
    if not any(p.piece == WS and p.type == pb.ModelProto.SentencePiece.NORMAL for p in m.pieces):
        return f"no piece is {WS!r} alone, so ids cannot show where a segment starts"
    return None


class SegmentEncoder:
    """sentencepiece ids assembled from a cache of per-segment ids.

    Text is cut into segments where a space follows a non-space character (see
    :func:`segment_split_reason`); a segment seen before costs a dictionary lookup. The
    segments of a text not seen before are joined and encoded by sentencepiece in one call
    (dummy prefix off: each segment's own ``▁`` is its prefix), and the ids are cut back into
    segments where a piece starting with ``▁`` follows a piece ending in another character.
    Natural text and code repeat most of their segments, so most encoding work is skipped.
    The cache is bounded and starts over when full, which changes speed, never ids.
    """

    def __init__(self, model_bytes: bytes, bos_id: int, eos_id: int, dtype=np.uint16,
                 entries: int = SEGMENT_CACHE_ENTRIES, chars: int = SEGMENT_CACHE_CHARS,
                 max_chars: int = SEGMENT_CACHE_MAX_CHARS):
        from sentencepiece import sentencepiece_model_pb2 as pb
        m = pb.ModelProto()
        m.ParseFromString(model_bytes)
        m.normalizer_spec.add_dummy_prefix = False
        self.sp = spm.SentencePieceProcessor()
        self.sp.LoadFromSerializedProto(m.SerializeToString())
        self.bos_id, self.eos_id, self.dtype = bos_id, eos_id, np.dtype(dtype)
        self.entries, self.chars, self.max_chars = entries, chars, max_chars
        # per id: does its text start with a space / end in another character (bytes and unk stand for characters)
        text_piece = [p.type in (pb.ModelProto.SentencePiece.NORMAL, pb.ModelProto.SentencePiece.USER_DEFINED)
                      for p in m.pieces]
        self._opens = np.array([t and p.piece.startswith(WS) for t, p in zip(text_piece, m.pieces)])
        self._closes = np.array([not t or not p.piece.endswith(WS) for t, p in zip(text_piece, m.pieces)])
        self._split = re.compile(f"{WS}+[^{WS}]*").findall
        self._cache: dict[str, bytes] = {}
        self._cached_chars = 0
        self._too_long: list[str] = []
        self._ends: dict[tuple[bool, bool], tuple[bytes, bytes]] = {}
        self.lookups = self.misses = 0

    def encode(self, texts: Iterable[str], bos: bool = True, eos: bool = True) -> list[np.ndarray]:
        dtype, key = self.dtype, (bos, eos)
        if key not in self._ends:
            self._ends[key] = (np.array([self.bos_id] if bos else [], dtype).tobytes(),
                               np.array([self.eos_id] if eos else [], dtype).tobytes())
        head, tail = self._ends[key]
        cache, split = self._cache, self._split
        out = []
        for text in texts:  # every loop over segments below runs in C
            if not text:  # sentencepiece adds no dummy prefix to empty text
                out.append(np.frombuffer(head + tail, dtype))
                continue
            segs = split(WS + text.replace(" ", WS))
            self.lookups += len(segs)
            missing = set(segs).difference(cache)
            if missing:
                self._add(missing, segs)
                parts = list(map(cache.__getitem__, segs))
                for s in self._too_long:  # needed for this text only
                    del cache[s]
            else:
                parts = list(map(cache.__getitem__, segs))
            out.append(np.frombuffer(b"".join((head, *parts, tail)), dtype))
        return out

    def _add(self, missing: set[str], segs: list[str]) -> None:
        """Encode the segments not cached and cache them (those too long only until the caller is done)."""
        new_chars = sum(map(len, missing))
        if len(self._cache) + len(missing) > self.entries or self._cached_chars + new_chars > self.chars:
            self._cache.clear()  # start over; this text's other segments are then new too
            self._cached_chars = 0
            missing = set(segs)
        self.misses += len(missing)
        # Only a text's last segment can be spaces alone; joined to the next it would merge with it.
        words = [s for s in missing if s[-1] != WS]
        found = {s: np.asarray(self.sp.encode(s), self.dtype).tobytes() for s in missing if s[-1] == WS}
        if words:
            ids = np.asarray(self.sp.encode("".join(words)), self.dtype)
            cuts = (np.flatnonzero(self._opens[ids[1:]] & self._closes[ids[:-1]]) + 1).tolist()
            if len(cuts) + 1 != len(words):
                raise RuntimeError(f"{len(words)} segments came back as {len(cuts) + 1} runs of ids")
            found.update(zip(words, [ids[a:b].tobytes() for a, b in zip([0, *cuts], [*cuts, len(ids)])]))
        self._too_long = [s for s in found if len(s) > self.max_chars]
        self._cache.update(found)
        self._cached_chars += sum(map(len, found)) - sum(map(len, self._too_long))
