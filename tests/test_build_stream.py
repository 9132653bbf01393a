"""The live stream of a source yields exactly the chunks a build writes, in the same order."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from corpus.store.layout import source_shards
from pipelines.stream import StreamError, stream_source

MANIFEST = Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml"


@pytest.mark.parametrize("source", ["redpajama-c4", "dolma-wiki"])
def test_streamed_chunks_equal_the_built_shards_in_order(sample_corpus, sample_mirror, source):
    built = [s.chunk(i) for s in source_shards(sample_corpus.out_dir, source) for i in range(len(s))]
    streamed = list(stream_source(MANIFEST, source, sample=True, workers=2, window=2, mirror_root=str(sample_mirror)))
    assert len(streamed) == len(built) > 0
    assert all(a.dtype == np.uint16 and np.array_equal(a, b) for a, b in zip(streamed, built))


def test_a_unit_that_cannot_be_read_stops_the_stream_naming_it(tmp_path, ray_session):
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(b'{"text": "short"}\n'))
    (tmp_path / "b.json.gz").write_bytes(b"not gzip")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: m\nsources:\n  - name: d\n    group: dolma\n    upstream: {{files: [\"{tmp_path}/*.json.gz\"]}}\n"
                        "    format: json.gz\n    tokens: 1M\n")
    with pytest.raises(StreamError, match="d/00001-00000"):
        list(stream_source(manifest, "d", workers=2))
