"""How chunks become training sequences of ``sequence_length + 1`` tokens.

- ``pack`` (default): the source's chunks, each with its BOS and EOS, are concatenated
  and cut into windows; sequence ``k`` is tokens ``[k*L, k*L + L + 1)``, so consecutive
  sequences share one token and every token after the first is a target exactly once.
  No padding; attention is not masked at chunk boundaries (EOS -> BOS is a target).
- ``corenet``: one chunk per sequence, truncated to ``L + 1`` tokens and right-padded,
  with the padded positions excluded from the loss. The chunk's tail beyond ``L + 1``
  tokens is never trained on, as in CoreNet.

A sequence's *cost*, what the mixture counts, is its number of loss targets.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from corpus.mixing.chunk_streams import ChunkStream

MODES = ("pack", "corenet")
IGNORE_INDEX = -100


class PackedSequences:
    def __init__(self, stream: ChunkStream, sequence_length: int):
        self.stream, self.length = stream, sequence_length

    def cost(self, k: int) -> int:
        return self.length

    def fill(self, k: int, out: np.ndarray) -> int:
        """Write sequence ``k`` into ``out`` (``L + 1`` slots); return how many tokens are real."""
        p, want = k * self.length, self.length + 1
        i, start = self.stream.locate(p)
        offset, filled = p - start, 0
        while filled < want:
            piece = self.stream.chunk(i)[offset:offset + want - filled]
            out[filled:filled + len(piece)] = piece
            filled += len(piece)
            i, offset = i + 1, 0
        return want

    def origin(self, k: int, position: int) -> tuple[int, int]:
        """The chunk ordinal and the offset in that chunk of token ``position`` of sequence ``k``."""
        p = k * self.length + position
        i, start = self.stream.locate(p)
        return i, p - start

    def epochs(self, items: int) -> float:
        return self.stream.epochs(tokens=items * self.length)


class ChunkSequences:
    def __init__(self, stream: ChunkStream, sequence_length: int, pad_id: int):
        self.stream, self.length, self.pad_id = stream, sequence_length, pad_id

    def cost(self, k: int) -> int:
        return self._cost(self.stream.length(k))

    def cost_ahead(self, k: int) -> int:
        """``cost(k)`` of a live stream, read without forgetting the chunks before ``k``."""
        return self._cost(self.stream.length_ahead(k))

    def _cost(self, chunk_length: int) -> int:
        return max(0, min(chunk_length, self.length + 1) - 1)

    def fill(self, k: int, out: np.ndarray) -> int:
        tokens = self.stream.chunk(k)[:self.length + 1]
        m = len(tokens)
        out[:m] = tokens
        out[m:] = self.pad_id
        return m

    def origin(self, k: int, position: int) -> tuple[int, int]:
        return k, position

    def epochs(self, items: int) -> float:
        return self.stream.epochs(chunks=items)


def split_inputs_and_labels(windows: np.ndarray, real) -> tuple[np.ndarray, np.ndarray]:
    """Inputs are each window minus its last token; labels are the window shifted by one,
    with ``IGNORE_INDEX`` wherever the target is padding.

    ``windows``: one window (``L + 1``) with ``real`` its count of real tokens, or a batch
    (``B x (L + 1)``) with ``real`` an array of counts, one per row.
    """
    labels = windows[..., 1:].copy()
    width = windows.shape[-1]
    if windows.ndim == 1:
        if real < width:
            labels[max(real - 1, 0):] = IGNORE_INDEX
    else:
        for row in np.flatnonzero(real < width).tolist():
            labels[row, max(int(real[row]) - 1, 0):] = IGNORE_INDEX
    return windows[..., :-1], labels
