"""Planning: every input file is cut into bounded work units that cover it exactly once."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from corpus.manifest import Source
from corpus.text.readers import read_slice
from pipelines.plan import MAX_COMPRESSED_PARTS, WorkUnit, plan_file, plan_source

STDLIB = Path(json.__file__).parent.parent


def texts(n: int) -> list[str]:
    return [p.read_text(errors="replace") for p in sorted(STDLIB.glob("*.py"))[:n]]


def source(fmt: str, field: str = "text") -> Source:
    return Source(name="s", group="redpajama", upstream={"files": ["unused"]}, format=fmt,
                  text_field=field, tokens=1)


def read_all(units: list[WorkUnit], field: str = "text") -> list[str]:
    return [r.text for u in units for r in read_slice(u.slice, field)]


def test_one_large_jsonl_file_spreads_over_many_units_that_read_it_once(tmp_path):
    docs = texts(60)
    path = tmp_path / "book.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    units = plan_file(source("jsonl"), 0, str(path), unit_bytes=path.stat().st_size // 9)
    assert len(units) >= 9
    assert read_all(units) == docs
    assert units[-1].slice.end is None


def test_unit_ids_sort_in_input_order(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / f"f{i}.jsonl"
        p.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts(12)))
        paths.append(str(p))
    units = plan_source(source("jsonl"), paths, unit_bytes=20_000)
    ids = [u.unit_id for u in units]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert ids[0] == "00000-00000" and ids[-1].startswith("00002-")


def test_parquet_units_are_groups_of_whole_row_groups(tmp_path):
    docs = texts(40)
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": docs}), path, row_group_size=5)
    units = plan_file(source("parquet", "content"), 0, str(path), unit_bytes=60_000)
    spans = [u.slice.row_groups for u in units]
    assert spans[0][0] == 0 and spans[-1][1] == 8
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert len(units) > 1
    assert read_all(units, "content") == docs


def test_a_compressed_file_is_cut_into_at_most_a_few_open_ended_units(tmp_path):
    docs = texts(80)
    path = tmp_path / "a.json.gz"
    path.write_bytes(gzip.compress("".join(json.dumps({"text": t}) + "\n" for t in docs).encode()))
    units = plan_file(source("json.gz"), 0, str(path), unit_bytes=1000)
    assert len(units) == MAX_COMPRESSED_PARTS
    assert units[-1].slice.end is None
    assert read_all(units) == docs


def test_an_unreadable_parquet_footer_makes_one_whole_file_unit_with_a_note(tmp_path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 not really parquet")
    (unit,) = plan_file(source("parquet"), 3, str(path), unit_bytes=1 << 20)
    assert unit.unit_id == "00003-00000" and unit.slice.row_groups is None
    assert "parquet footer" in unit.plan_note


def test_a_source_whose_files_cannot_be_listed_is_named_in_the_error(tmp_path):
    from corpus.manifest import parse_manifest
    from pipelines.plan import PlanError, plan_build
    manifest = parse_manifest(
        "name: m\nsources:\n  - name: web\n    group: refinedweb\n"
        f"    upstream: {{list: \"{tmp_path}/missing-urls.txt\", match: parquet}}\n    format: parquet\n    tokens: 1M\n")
    with pytest.raises(PlanError, match="source 'web': cannot list .*missing-urls.txt"):
        plan_build(manifest)
