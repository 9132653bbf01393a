"""The chunk-by-chunk shard writer the build uses writes exactly what write_shard writes."""
from __future__ import annotations

import struct

import numpy as np

from corpus.store.writer import ShardWriter
from corpus.store.shards import Shard


from corpus.store.writer import write_shard
def test_streamed_shard_files_equal_write_shard_files(tmp_path, tokenizer):
    texts = ["In the beginning God created the heaven and the earth.", "def f(x):\n    return x + 1\n", ""]
    chunks = [np.asarray(ids, dtype=np.uint16) for ids in tokenizer.encode(texts)]
    expected = write_shard(tmp_path / "a" / "u", chunks, {"source": "s", "unit": "u"})
    writer = ShardWriter(tmp_path / "b" / "u")
    for c in chunks:
        writer.add(c)
    got = writer.close({"source": "s", "unit": "u"})
    assert got == expected
    for suffix in (".bin", ".idx", ".json"):
        assert (tmp_path / "b" / f"u{suffix}").read_bytes() == (tmp_path / "a" / f"u{suffix}").read_bytes()
    assert Shard.open(tmp_path / "b" / "u").chunk(1).tolist() == chunks[1].tolist()


def test_an_aborted_writer_leaves_nothing(tmp_path):
    writer = ShardWriter(tmp_path / "u")
    writer.add(np.arange(10, dtype=np.uint16))
    writer.abort()
    assert list(tmp_path.iterdir()) == []


def test_an_empty_shard_has_one_offset(tmp_path):
    meta = ShardWriter(tmp_path / "u").close({})
    assert meta["chunks"] == 0 and meta["tokens"] == 0
    # a Megatron index of no sequences: header, version 1, uint16 (code 8), 0 sequences, 1 document boundary: 0
    assert (tmp_path / "u.idx").read_bytes() == b"MMIDIDX\x00\x00" + struct.pack("<QBQQq", 1, 8, 0, 1, 0)
    assert Shard.open(tmp_path / "u").offsets.tolist() == [0]
