"""Readers: listing upstream files and streaming one slice of one file, bad records included."""
from __future__ import annotations

import gzip
import io
import json
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from corpus.manifest import Upstream
from corpus.text.readers import BadRecord, Record, Slice, list_files, read_slice

STDLIB = Path(json.__file__).parent.parent  # real text that ships with Python


def real_texts(n: int) -> list[str]:
    return [p.read_text(errors="replace") for p in sorted(STDLIB.glob("*.py"))[:n]]


def jsonl_bytes(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}) + "\n" for t in texts).encode()


def records(sl: Slice, field: str = "text") -> list:
    return list(read_slice(sl, field))


def test_byte_ranges_read_every_line_exactly_once(tmp_path):
    texts = real_texts(30)
    data = jsonl_bytes(texts)
    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    line_starts = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A][:-1]
    # cuts inside lines, exactly on line starts and one byte after a line start
    cuts = sorted({len(data) // 7, line_starts[5], line_starts[9] + 1, len(data) // 2, len(data) - 3})
    bounds = [0] + cuts + [None]
    got = []
    for a, b in zip(bounds, bounds[1:]):
        got += records(Slice(str(path), "jsonl", start=a, end=b))
    assert [r.text for r in got] == texts
    assert [r.location for r in got] == line_starts


def test_a_line_belongs_to_the_range_its_first_byte_is_in(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(jsonl_bytes(["one", "two", "three"]))
    second = len(json.dumps({"text": "one"})) + 1
    assert [r.text for r in records(Slice(str(path), "jsonl", start=0, end=second))] == ["one"]
    assert [r.text for r in records(Slice(str(path), "jsonl", start=second, end=second + 1))] == ["two"]


def test_bad_lines_become_bad_records_with_reasons_and_byte_offsets(tmp_path):
    good = json.dumps({"text": "fine"}).encode() + b"\n"
    lines = [good, b'{"text": "cut\n', b'{"text": "caf\xe9"}\n', b'{"body": "x"}\n',
             b'{"text": 7}\n', b'[1, 2]\n', good]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(lines))
    got = records(Slice(str(path), "jsonl"))
    kinds = [r.reason if isinstance(r, BadRecord) else "ok" for r in got]
    assert kinds == ["ok", "broken_json", "invalid_utf8", "missing_text", "text_not_string", "broken_json", "ok"]
    offsets = [sum(len(x) for x in lines[:i]) for i in range(len(lines))]
    assert [r.location for r in got] == offsets
    assert "caf" in got[2].excerpt


def test_an_escaped_lone_surrogate_is_invalid_utf8_but_a_pair_is_text(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "half \\ud800 a pair"}\n{"text": "whole \\ud83d\\ude00 pair"}\n')
    bad, good = records(Slice(str(path), "jsonl"))
    assert bad.reason == "invalid_utf8" and "surrogate" in bad.detail
    assert good.text == "whole \U0001f600 pair"


def test_gzip_lines_are_streamed_and_a_cut_stream_is_a_truncated_gzip_record(tmp_path):
    texts = real_texts(40)
    blob = gzip.compress(jsonl_bytes(texts))
    whole, cut = tmp_path / "whole.json.gz", tmp_path / "cut.json.gz"
    whole.write_bytes(blob)
    cut.write_bytes(blob[: len(blob) // 2])
    assert [r.text for r in records(Slice(str(whole), "json.gz"))] == texts
    got = records(Slice(str(cut), "json.gz"))
    assert all(isinstance(r, Record) for r in got[:-1])
    assert isinstance(got[-1], BadRecord) and got[-1].reason == "truncated_gzip"
    assert 0 < len(got) - 1 < len(texts)
    assert [r.text for r in got[:-1]] == texts[: len(got) - 1]


def test_the_truncation_is_reported_once_by_the_range_it_falls_in(tmp_path):
    blob = gzip.compress(jsonl_bytes(real_texts(40)))
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    ranges = [(0, 100_000), (100_000, 400_000), (400_000, None)]
    bad = [r for a, b in ranges for r in records(Slice(str(cut), "json.gz", start=a, end=b))
           if isinstance(r, BadRecord)]
    assert [r.reason for r in bad] == ["truncated_gzip"]


def test_zstd_reads_across_frames_and_reports_a_cut_frame(tmp_path):
    texts = real_texts(20)
    zc = zstandard.ZstdCompressor()
    blob = zc.compress(jsonl_bytes(texts[:10])) + zc.compress(jsonl_bytes(texts[10:]))
    path, cut = tmp_path / "a.jsonl.zst", tmp_path / "cut.jsonl.zst"
    path.write_bytes(blob)
    cut.write_bytes(blob[:-50])
    assert [r.text for r in records(Slice(str(path), "jsonl.zst"))] == texts
    assert records(Slice(str(cut), "jsonl.zst"))[-1].reason == "truncated_zstd"


def test_parquet_row_groups_are_read_with_file_row_numbers(tmp_path):
    texts = real_texts(25)
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"content": texts}), path, row_group_size=10)
    first = records(Slice(str(path), "parquet", row_groups=(0, 1), row0=0), "content")
    rest = records(Slice(str(path), "parquet", row_groups=(1, 3), row0=10), "content")
    assert [r.text for r in first + rest] == texts
    assert [r.location for r in rest] == list(range(10, 25))


def test_parquet_null_text_is_missing_text(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["a document", None]}), path)
    got = records(Slice(str(path), "parquet"))
    assert isinstance(got[0], Record) and got[1].reason == "missing_text" and got[1].location == 1


def test_parquet_without_the_text_column_fails_naming_it(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"body": ["x"]}), path)
    with pytest.raises(ValueError, match="no column 'content'"):
        records(Slice(str(path), "parquet"), "content")


def test_a_file_that_is_not_gzip_fails(tmp_path):
    path = tmp_path / "fake.json.gz"
    path.write_bytes(b'{"text": "plain, not compressed"}\n')
    with pytest.raises(OSError, match="Not a gzipped file"):
        records(Slice(str(path), "json.gz"))


def test_a_missing_file_fails(tmp_path):
    with pytest.raises(FileNotFoundError, match="gone.jsonl"):
        records(Slice(str(tmp_path / "gone.jsonl"), "jsonl"))


def test_glob_patterns_expand_sorted(tmp_path):
    for name in ("b.jsonl", "a.jsonl", "c.txt"):
        (tmp_path / name).write_text("{}\n")
    uris = list_files(Upstream(files=[str(tmp_path / "*.jsonl")]))
    assert [u.rsplit("/", 1)[1] for u in uris] == ["a.jsonl", "b.jsonl"]


def test_a_list_of_urls_is_filtered_by_match(tmp_path):
    listing = tmp_path / "urls.txt"
    listing.write_text("https://x/book/book.jsonl\nhttps://x/arxiv/a1.jsonl\n\nhttps://x/arxiv/a0.jsonl\n")
    assert list_files(Upstream(list=str(listing), match="/arxiv/")) == \
        ["https://x/arxiv/a0.jsonl", "https://x/arxiv/a1.jsonl"]


def test_a_pattern_matching_nothing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="matches no files"):
        list_files(Upstream(files=[str(tmp_path / "*.parquet")]))


class _RangeHandler(SimpleHTTPRequestHandler):
    """A static file server that answers byte-range requests, as upstream hosts do."""

    def send_head(self):
        wanted = self.headers.get("Range")
        if not wanted:
            return super().send_head()
        data = Path(self.translate_path(self.path)).read_bytes()
        first, last = wanted.removeprefix("bytes=").split("-")
        first, last = int(first), min(int(last) if last else len(data) - 1, len(data) - 1)
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {first}-{last}/{len(data)}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        return io.BytesIO(data[first:last + 1])

    def log_message(self, *args):
        pass


@pytest.fixture
def http_root(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_RangeHandler, directory=str(tmp_path)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield tmp_path, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_files_listed_and_read_over_http_in_byte_ranges(http_root):
    root, url = http_root
    texts = real_texts(20)
    (root / "part.jsonl").write_bytes(jsonl_bytes(texts))
    (root / "part.json.gz").write_bytes(gzip.compress(jsonl_bytes(texts)))
    (root / "urls.txt").write_text(f"{url}/part.jsonl\n{url}/part.json.gz\n{url}/other.txt\n")
    packed, plain = list_files(Upstream(list=f"{url}/urls.txt", match=r"\.json"))
    assert packed == f"{url}/part.json.gz" and plain == f"{url}/part.jsonl"
    size = len(jsonl_bytes(texts))
    halves = records(Slice(plain, "jsonl", start=0, end=size // 2)) + records(Slice(plain, "jsonl", start=size // 2))
    assert [r.text for r in halves] == texts
    assert [r.text for r in records(Slice(packed, "json.gz"))] == texts


# ---------------------------------------------------------------- hf:// through a local Hub endpoint

_HUB_COMMIT = "5" * 40


class _HubHandler(_RangeHandler):
    """The parts of the Hugging Face Hub's HTTP API that ``hf://`` reading uses, over a local folder:
    repository info, tree listing, paths-info and ``resolve`` downloads (byte ranges as in the parent)."""

    requests: list = []

    def _send_json(self, obj, code: int = 200) -> None:
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _entry(self, repo: Path, p: Path) -> dict:
        rel = p.relative_to(repo).as_posix()
        if p.is_dir():
            return {"type": "directory", "path": rel, "oid": "0" * 40}
        return {"type": "file", "path": rel, "size": p.stat().st_size, "oid": "1" * 40}

    def _route(self):
        import re
        from urllib.parse import parse_qs, unquote, urlparse
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        type(self).requests.append((self.command, path, self.headers.get("Range")))
        root = Path(self.directory)
        api = re.match(r"^/api/datasets/([^/]+/[^/]+)(?:/(revision|tree|paths-info)/([^/]+)/?(.*))?$", path)
        if api:
            repo_id, kind, _, rest = api.groups()
            repo = root / repo_id
            if not repo.is_dir():
                return self._send_json({"error": "Repository not found"}, 404)
            if kind in (None, "revision"):
                files = sorted(p for p in repo.rglob("*") if p.is_file())
                return self._send_json({"id": repo_id, "sha": _HUB_COMMIT, "private": False,
                                        "siblings": [{"rfilename": p.relative_to(repo).as_posix()} for p in files]})
            if kind == "tree":
                recursive = query.get("recursive", ["false"])[0].lower() == "true"
                found = (repo / rest).rglob("*") if recursive else (repo / rest).iterdir()
                return self._send_json([self._entry(repo, p) for p in sorted(found)])
            body = self.rfile.read(int(self.headers.get("Content-Length", 0))).decode()
            try:
                wanted = json.loads(body)["paths"]
            except ValueError:
                wanted = parse_qs(body).get("paths", [])
            return self._send_json([self._entry(repo, repo / p) for p in wanted if (repo / p).exists()])
        download = re.match(r"^/datasets/([^/]+/[^/]+)/resolve/[^/]+/(.+)$", path)
        if not download or not (root / download[1] / download[2]).is_file():
            return self._send_json({"error": f"Entry not found: {path}"}, 404)
        self.path = f"/{download[1]}/{download[2]}"  # the file under the served folder
        return super().do_HEAD() if self.command == "HEAD" else super().do_GET()

    do_GET = do_HEAD = do_POST = _route


_HF_READ = """
import json, sys
from corpus.manifest import Source
from corpus.text.readers import Record, read_slice
from pipelines.plan import plan_source, source_files
source = Source.model_validate({"name": "web", "group": "refinedweb", "format": "parquet", "text_field": "content",
                                "tokens": "1M", "upstream": {"files": [sys.argv[1]]}})
files = source_files(None, source, False)
units = plan_source(source, files, unit_bytes=int(sys.argv[2]))
texts = [r.text for u in units for r in read_slice(u.slice, "content") if isinstance(r, Record)]
print(json.dumps({"files": files, "units": [[u.slice.uri, list(u.slice.row_groups)] for u in units], "texts": texts}))
"""


def test_hf_glob_planned_and_read_by_row_group_through_a_hub_endpoint(tmp_path):
    import os
    import subprocess
    import sys
    repo = tmp_path / "hub" / "someorg" / "web-corpus"
    (repo / "data").mkdir(parents=True)
    texts = real_texts(60)
    for k in range(2):  # the shape of RefinedWeb's and the PILE's upstream: data/train-*.parquet
        part = texts[30 * k:30 * (k + 1)]
        pq.write_table(pa.table({"content": part, "url": [f"u{i}" for i in range(30)]}),
                       repo / "data" / f"train-{k:05d}-of-00002.parquet", row_group_size=10)
    (repo / "data" / "notes.txt").write_text("not a shard\n")
    (repo / "README.md").write_text("# a dataset card\n")
    _HubHandler.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_HubHandler, directory=str(tmp_path / "hub")))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {**os.environ, "HF_ENDPOINT": f"http://127.0.0.1:{server.server_address[1]}", "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_TOKEN": "", "HF_HOME": str(tmp_path / "hf-home")}
        run = subprocess.run([sys.executable, "-c", _HF_READ, "hf://datasets/someorg/web-corpus/data/train-*.parquet",
                              "1"], env=env, capture_output=True, text=True, timeout=120,
                             cwd=Path(__file__).resolve().parent.parent)
    finally:
        server.shutdown()
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    shard = "hf://datasets/someorg/web-corpus/data/train-{:05d}-of-00002.parquet"
    assert got["files"] == [shard.format(0), shard.format(1)]
    # unit_bytes=1: one unit per row group, three per file, in file order
    assert got["units"] == [[shard.format(k), [g, g + 1]] for k in range(2) for g in range(3)]
    assert got["texts"] == texts
    downloads = [(m, p, r) for m, p, r in _HubHandler.requests if "/resolve/" in p]
    assert downloads and all(r is not None for m, p, r in downloads if m == "GET")  # ranges, never whole files
