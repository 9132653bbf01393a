"""The live stream of a source yields exactly the chunks a build writes, in the same order."""
from __future__ import annotations

import gzip
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from corpus.store.layout import source_shards
from corpus.manifest import load_manifest
from pipelines.stream import StreamError, stream_units
from stream_chunks import stream_chunks

MANIFEST = Path(__file__).resolve().parent.parent / "manifests" / "openelm.yaml"


@pytest.mark.parametrize("source", ["redpajama-c4", "dolma-wiki"])
def test_streamed_chunks_equal_the_built_shards_in_order(sample_corpus, sample_mirror, source):
    built = [s.chunk(i) for s in source_shards(sample_corpus.out_dir, source) for i in range(len(s))]
    streamed = list(stream_chunks(MANIFEST, source, sample=True, workers=2, window=2, mirror_root=str(sample_mirror)))
    assert len(streamed) == len(built) > 0
    assert all(a.dtype == np.uint16 and np.array_equal(a, b) for a, b in zip(streamed, built))


def test_the_held_out_split_is_whole_units_and_the_train_split_is_the_rest_in_order(sample_mirror, ray_session):
    def chunks(split):
        return list(stream_chunks(MANIFEST, "dolma-wiki", sample=True, workers=2, window=2,
                                  mirror_root=str(sample_mirror), split=split, val_fraction=0.001))
    every, train, val = chunks(None), chunks("train"), chunks("val")
    held = stream_units(load_manifest(MANIFEST), "dolma-wiki", sample=True, mirror_root=str(sample_mirror),
                        split="val", val_fraction=0.001)
    assert len(held) == 1 and train and val  # 2 units: one held out, however small the fraction
    # the full stream is the train split with the held-out unit's chunks spliced back in at its place: no chunk
    # is in both splits (the mirror's inputs repeat a few documents, so equal contents can still occur in both)
    cut = next((i for i, (a, b) in enumerate(zip(every, train)) if not np.array_equal(a, b)), len(train))
    assert len(every) == len(train) + len(val)
    assert all(np.array_equal(a, b) for a, b in zip(every, train[:cut] + val + train[cut:]))


def test_a_one_unit_source_holds_out_nothing(sample_mirror):
    manifest = load_manifest(MANIFEST)
    def units(split):
        return stream_units(manifest, "redpajama-books", sample=True, mirror_root=str(sample_mirror), split=split,
                            val_fraction=0.5)
    assert units("val") == [] and len(units("train")) == 1


def test_a_unit_whose_worker_is_killed_once_is_rerun_and_the_stream_is_unchanged(sample_mirror, ray_session):
    psutil = pytest.importorskip("psutil")

    def chunks():
        return list(stream_chunks(MANIFEST, "dolma-gutenberg", sample=True, workers=2, window=1,
                                  mirror_root=str(sample_mirror)))

    killed: list[int] = []
    streaming = threading.Event()

    def kill_the_first_unit_worker():
        """SIGKILL a worker frozen (SIGSTOP) while its title still says it runs a unit: the kill lands mid-unit."""
        while streaming.is_set() and not killed:
            for p in psutil.process_iter(["pid", "cmdline"]):
                if "ray::tokenize_unit" in " ".join(p.info["cmdline"] or []):
                    try:
                        p.send_signal(signal.SIGSTOP)
                        if "ray::tokenize_unit" in " ".join(p.cmdline()):
                            p.send_signal(signal.SIGKILL)
                            killed.append(p.pid)
                            return
                        p.send_signal(signal.SIGCONT)  # it finished the unit meanwhile: look again
                    except psutil.NoSuchProcess:
                        pass
            time.sleep(0.002)

    uninterrupted = chunks()
    streaming.set()
    killer = threading.Thread(target=kill_the_first_unit_worker)
    killer.start()
    try:
        interrupted = chunks()
    finally:
        streaming.clear()
        killer.join()
    assert killed  # a worker died running a unit, and Ray reran the unit
    assert len(interrupted) == len(uninterrupted) > 0
    assert all(np.array_equal(a, b) for a, b in zip(interrupted, uninterrupted))


def test_a_unit_that_fails_for_good_names_its_source_unit_input_and_cause_in_one_line(tmp_path, ray_session):
    (tmp_path / "a.json.gz").write_bytes(gzip.compress(b'{"text": "short"}\n'))
    (tmp_path / "b.json.gz").write_bytes(b"not gzip")
    manifest = tmp_path / "m.yaml"
    manifest.write_text(f"name: m\nsources:\n  - name: d\n    group: dolma\n    upstream: {{files: [\"{tmp_path}/*.json.gz\"]}}\n"
                        "    format: json.gz\n    tokens: 1M\n")
    with pytest.raises(StreamError) as failed:
        list(stream_chunks(manifest, "d", workers=2))
    assert str(failed.value) == (f"source d, unit d/00001-00000, input file://{tmp_path}/b.json.gz bytes 0..end: "
                                 "gzip.BadGzipFile: Not a gzipped file (b'no')")
