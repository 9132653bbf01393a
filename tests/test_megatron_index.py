"""The `.idx` is Megatron's indexed-dataset index: megatron-core reads our shards unchanged, old indexes still open,
and a malformed index is refused with a message naming the file."""
from __future__ import annotations

import hashlib
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from corpus.store.shards import INDEX_FORMAT, LEGACY_INDEX_FORMAT, Shard
from corpus.store.writer import write_shard


@pytest.fixture(scope="module")
def megatron():
    """megatron-core's indexed_dataset module (a test-only dependency: the `dev` extra)."""
    return pytest.importorskip("megatron.core.datasets.indexed_dataset")


@pytest.fixture(scope="module")
def kjv_chunks(tokenizer) -> list[np.ndarray]:
    from corpus.mirror.text import kjv_chapters
    return [np.asarray(ids, dtype=np.uint16) for ids in tokenizer.encode([p.text for p in kjv_chapters()[:40]])]


@pytest.fixture
def shard_stem(tmp_path, kjv_chunks) -> Path:
    write_shard(tmp_path / "u", kjv_chunks[:6], {"source": "kjv", "unit": "u"})
    return tmp_path / "u"


def _megatron_dataset(megatron, stem: Path, shard: Shard):
    # megatron-core cannot memory-map an empty .bin (a unit that kept no chunk); it reads one with mmap=False
    return megatron.IndexedDataset(str(stem), mmap=shard.num_tokens > 0)


def _mapped(a: np.ndarray) -> bool:
    while a is not None:
        if isinstance(a, np.memmap):
            return True
        a = a.base if isinstance(a.base, np.ndarray) else None
    return False


# ---------------------------------------------------------------- megatron-core reads what the project writes

def test_megatron_reads_every_chunk_of_every_sample_build_shard_as_shard_does(sample_corpus, megatron):
    stems = sorted(p.with_suffix("") for p in (sample_corpus.out_dir / "shards").glob("*/*.idx"))
    assert len(stems) >= 13
    chunks = 0
    for stem in stems:
        shard = Shard.open(stem)
        ds = _megatron_dataset(megatron, stem, shard)
        assert len(ds) == len(shard), stem
        for i in range(len(shard)):
            assert np.array_equal(ds[i], shard.chunk(i)), (stem, i)
        assert ds.document_indices.tolist() == list(range(len(shard) + 1))
        meta = shard.sidecar()
        assert meta["index_format"] == INDEX_FORMAT == shard.index_format
        assert meta["sha256_idx"] == hashlib.sha256(stem.with_suffix(".idx").read_bytes()).hexdigest()
        chunks += len(shard)
    assert chunks > 100


def test_the_index_bytes_equal_megatrons_own_builder_for_the_same_chunks(tmp_path, kjv_chunks, megatron):
    import torch
    write_shard(tmp_path / "ours", kjv_chunks, {})
    builder = megatron.IndexedDatasetBuilder(str(tmp_path / "theirs.bin"), dtype=np.uint16)
    for chunk in kjv_chunks:
        builder.add_item(torch.from_numpy(chunk.astype(np.int64)))
        builder.end_document()
    builder.finalize(str(tmp_path / "theirs.idx"))
    for suffix in (".bin", ".idx"):
        assert (tmp_path / f"ours{suffix}").read_bytes() == (tmp_path / f"theirs{suffix}").read_bytes()


def test_offsets_are_token_offsets_with_a_leading_zero(shard_stem, kjv_chunks):
    shard = Shard.open(shard_stem)
    lengths = [len(c) for c in kjv_chunks[:6]]
    assert shard.offsets.tolist() == [0, *np.cumsum(lengths).tolist()]
    assert shard.chunk_lengths().tolist() == lengths and shard.num_tokens == sum(lengths) and len(shard) == 6
    assert shard.chunk(5).tolist() == kjv_chunks[5].tolist()


# ---------------------------------------------------------------- the legacy index (uint64 token offsets)

def _write_legacy(stem: Path, chunks: list[np.ndarray]) -> None:
    stem.parent.mkdir(parents=True, exist_ok=True)
    np.concatenate(chunks).astype("<u2").tofile(stem.with_suffix(".bin"))
    np.concatenate(([0], np.cumsum([len(c) for c in chunks]))).astype("<u8").tofile(stem.with_suffix(".idx"))


def test_a_legacy_offset_index_opens_with_the_same_chunks(shard_stem, tmp_path, kjv_chunks):
    _write_legacy(tmp_path / "old" / "u", kjv_chunks[:6])
    shutil.copy(shard_stem.with_suffix(".json"), tmp_path / "old" / "u.json")
    new, old = Shard.open(shard_stem), Shard.open(tmp_path / "old" / "u")
    assert (new.index_format, old.index_format) == (INDEX_FORMAT, LEGACY_INDEX_FORMAT)
    assert len(old) == len(new) and old.num_tokens == new.num_tokens
    assert old.offsets.tolist() == new.offsets.tolist()
    assert old.chunk_lengths().tolist() == new.chunk_lengths().tolist()
    assert all(np.array_equal(old.chunk(i), new.chunk(i)) for i in range(len(new)))
    assert old.sidecar() == new.sidecar()


def test_big_indexes_of_both_formats_are_memory_mapped(tmp_path):
    chunks = [np.full(1 + i % 3, i % 50000, dtype=np.uint16) for i in range(140_000)]  # an .idx over 1 MiB
    write_shard(tmp_path / "new", chunks, {})
    _write_legacy(tmp_path / "old", chunks)
    new, old = Shard.open(tmp_path / "new"), Shard.open(tmp_path / "old")
    assert _mapped(new.sequence_lengths) and _mapped(new.sequence_pointers) and _mapped(old.offsets)
    assert np.array_equal(new.offsets, old.offsets)
    assert new.chunk(139_999).tolist() == old.chunk(139_999).tolist() == chunks[-1].tolist()


# ---------------------------------------------------------------- malformed indexes are refused, naming the file

def _patch(data: bytearray, n: int, what: str) -> bytearray:
    """One corruption of a Megatron index of ``n`` sequences (fields at the offsets docs/formats.md gives)."""
    lengths, pointers, documents = 34, 34 + 4 * n, 34 + 12 * n
    if what == "header":
        data[:9] = b"MMIDIDY\x00\x00"
    elif what == "cut header":
        del data[20:]
    elif what == "version":
        struct.pack_into("<Q", data, 9, 2)
    elif what == "dtype":
        struct.pack_into("<B", data, 17, 4)  # int32
    elif what == "sequence count":
        struct.pack_into("<Q", data, 18, n + 1)
    elif what == "document count":
        struct.pack_into("<Q", data, 26, n + 2)
    elif what == "truncated":
        del data[-8:]
    elif what == "pointer":
        struct.pack_into("<q", data, pointers + 8 * 2, struct.unpack_from("<q", data, pointers + 8 * 2)[0] + 2)
    elif what == "negative length":
        struct.pack_into("<i", data, lengths + 4, -1)
    elif what == "past bin":  # the last chunk one token longer than .bin holds; every pointer still agrees
        last = lengths + 4 * (n - 1)
        struct.pack_into("<i", data, last, struct.unpack_from("<i", data, last)[0] + 1)
    elif what == "documents":
        struct.pack_into("<q", data, documents + 8 * n, n - 1)
    return data


@pytest.mark.parametrize("what, says", [
    ("header", "not a shard index"),
    ("cut header", "cut short"),
    ("version", "version 2"),
    ("dtype", "dtype code 4 (int32)"),
    ("sequence count", "7 sequences and 7 documents"),
    ("document count", "6 sequences and 8 documents"),
    ("truncated", "6 sequences and 7 documents"),
    ("pointer", "sequence 2 starts at byte"),
    ("negative length", "sequence 1 has a negative length"),
    ("past bin", "holds"),
    ("documents", "document indices"),
])
def test_a_malformed_megatron_index_raises_naming_the_file(shard_stem, what, says):
    idx = shard_stem.with_suffix(".idx")
    idx.write_bytes(bytes(_patch(bytearray(idx.read_bytes()), 6, what)))
    with pytest.raises(ValueError, match=re.escape(says)) as e:
        Shard.open(shard_stem)
    assert str(idx) in str(e.value)


def test_an_index_whose_bin_lost_its_tail_is_refused(shard_stem):
    bin_path = shard_stem.with_suffix(".bin")
    bin_path.write_bytes(bin_path.read_bytes()[:-2])
    with pytest.raises(ValueError, match="holds") as e:
        Shard.open(shard_stem)
    assert str(shard_stem.with_suffix(".idx")) in str(e.value)


@pytest.mark.parametrize("offsets, says", [
    ([5, 10], "does not start at 0"),
    ([0, 10, 4], "go backwards at chunk 1"),
    ([0, 7], "holds 6 tokens"),
])
def test_a_malformed_legacy_index_raises_naming_the_file(tmp_path, offsets, says):
    np.arange(6, dtype="<u2").tofile(tmp_path / "u.bin")
    np.asarray(offsets, dtype="<u8").tofile(tmp_path / "u.idx")
    with pytest.raises(ValueError, match=re.escape(says)) as e:
        Shard.open(tmp_path / "u")
    assert str(tmp_path / "u.idx") in str(e.value)


def test_an_index_of_neither_format_raises_naming_the_file(tmp_path):
    (tmp_path / "u.bin").write_bytes(b"")
    (tmp_path / "u.idx").write_bytes(b"\x00" * 12)
    with pytest.raises(ValueError, match="not a shard index") as e:
        Shard.open(tmp_path / "u")
    assert str(tmp_path / "u.idx") in str(e.value)
